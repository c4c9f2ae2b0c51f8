"""The embedded default: a small teacher and a smaller student on the synthetic suite.

Run:   paced smoke configs/demo.py          (sharded init + forward + cached-decode check)
Tiny:  paced smoke configs/demo.py:tiny     (the same, shrunk for tests; seconds on CPU)

Expected: both models report finite logits and cached-vs-full max |diff| below 1e-4 (fp32).
The distillation job on this config (`paced train`) arrives with the trainer.
"""

import dataclasses

from paced_jax.config import Config, MeshConfig, ModelConfig

_VOCAB = 128  # the synthetic suite's character vocabulary fits in 128 ids


def get_config(arg: str = "") -> Config:
  student = ModelConfig(arch="qwen3", vocab_size=_VOCAB, hidden=128, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=32, mlp_dim=384, qk_norm=True,
                        rope_theta=10_000.0, max_seq_len=256)
  teacher = dataclasses.replace(student, hidden=256, num_layers=6, num_heads=8, mlp_dim=768)
  cfg = Config(model=student, teacher=teacher, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
               seed=0, name="demo")
  if arg == "tiny":
    small = dict(hidden=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(student, **small),
                              teacher=dataclasses.replace(teacher, **small))
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for configs/demo.py; use '' or 'tiny'")
  return cfg
