"""Recipe for the embedded default's teacher and student (`paced sft` on the synthetic suite).

Rebuild the shipped checkpoints in configs/assets/ (2-core CPU; minutes to an hour each):

  paced sft configs/demo_models.py:teacher --workdir runs/demo_teacher
  paced sft configs/demo_models.py:student --workdir runs/demo_student
  python -m paced_jax.models.io_export runs/demo_teacher configs/assets/demo_teacher
  python -m paced_jax.models.io_export runs/demo_student configs/assets/demo_student

The teacher (about 1.8M parameters) trains on every difficulty level for long enough to solve
most of them; the student (about 0.25M parameters) trains briefly, so it masters the easy levels
and fails the hard ones: its pass rates spread over [0, 1], which is what PACED needs.
"""

import dataclasses

from paced_jax.config import (Config, DataConfig, LossConfig, MeshConfig, ModelConfig,
                              PacedConfig, TrainConfig)

TEACHER = ModelConfig(arch="qwen3", vocab_size=128, hidden=192, num_layers=4, num_heads=6,
                      num_kv_heads=2, head_dim=32, mlp_dim=512, qk_norm=True,
                      tie_embeddings=True, rope_theta=10_000.0, max_seq_len=256)
STUDENT = dataclasses.replace(TEACHER, hidden=96, num_layers=2, num_heads=3, num_kv_heads=1,
                              mlp_dim=256)


def get_config(arg: str = "teacher") -> Config:
  data = DataConfig(source="synthetic", tokenizer="char", synthetic_size=50_000,
                    synthetic_levels=5, max_prompt_len=64, max_response_len=128,
                    length_buckets=(96, 128, 192), batch_size=32)
  if arg in ("teacher", ""):
    model, train = TEACHER, TrainConfig(steps=3000, lr=2e-3, warmup_steps=100, log_every=50,
                                        ckpt_every=500, max_to_keep=2)
  elif arg == "student":
    model, train = STUDENT, TrainConfig(steps=600, lr=2e-3, warmup_steps=50, log_every=50,
                                        ckpt_every=300, max_to_keep=2)
  else:
    raise ValueError(f"unknown argument {arg!r} for configs/demo_models.py; use teacher or "
                     "student")
  return Config(model=model, teacher=None, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
                data=data, paced=PacedConfig(weighting="uniform"), loss=LossConfig(mode="sft"),
                train=train, seed=1, name=f"demo_{arg or 'teacher'}")
