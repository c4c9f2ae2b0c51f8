"""The embedded default: PACED distillation of a small teacher into a smaller student on the
built-in synthetic reasoning suite (character tokenizer, 128 ids).

Run:   paced train configs/demo.py --workdir runs/demo
Tiny:  paced train configs/demo.py:tiny --workdir /tmp/tiny   (seconds; the test suite runs it)

Without `train.init_student` / `train.init_teacher` both models start from random weights,
which exercises every part of the job but teaches nothing; the teacher/student recipe for the
embedded default sets them.
"""

import dataclasses

from paced_jax.config import (Config, DataConfig, EvalConfig, LossConfig, MeshConfig,
                              ModelConfig, PacedConfig, SampleConfig, TrainConfig)

_VOCAB = 128  # paced_jax.data.tokenizer.CharTokenizer


def get_config(arg: str = "") -> Config:
  student = ModelConfig(arch="qwen3", vocab_size=_VOCAB, hidden=128, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=32, mlp_dim=384, qk_norm=True,
                        rope_theta=10_000.0, max_seq_len=256)
  teacher = dataclasses.replace(student, hidden=256, num_layers=6, num_heads=8, mlp_dim=768)
  cfg = Config(
      model=student, teacher=teacher, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
      data=DataConfig(source="synthetic", tokenizer="char", synthetic_size=2000,
                      synthetic_levels=5, max_prompt_len=64, max_response_len=128,
                      length_buckets=(96, 128, 192), batch_size=16),
      sample=SampleConfig(temperature=1.0, max_new_tokens=128, prompt_buckets=(64,),
                          budget_buckets=(128,), batch_size=256),
      paced=PacedConfig(weighting="paced", rollouts=4, refresh_every=25, refresh_subset=512),
      loss=LossConfig(mode="distill", divergence="forward_kl", chunk_size=64),
      train=TrainConfig(steps=150, lr=3e-4, warmup_steps=10, log_every=5, ckpt_every=50,
                        eval_every=50),
      eval=EvalConfig(samples=4, temperature=1.0, max_problems=120),
      seed=0, name="demo")
  if arg == "tiny":
    small = dict(hidden=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(student, **small),
        teacher=dataclasses.replace(teacher, **small),
        data=dataclasses.replace(cfg.data, synthetic_size=48, batch_size=8),
        sample=dataclasses.replace(cfg.sample, max_new_tokens=8, budget_buckets=(8,),
                                   batch_size=64),
        paced=dataclasses.replace(cfg.paced, rollouts=2, refresh_every=3, refresh_subset=16,
                                  eps=0.05),
        train=dataclasses.replace(cfg.train, steps=6, warmup_steps=1, log_every=1,
                                  ckpt_every=3, eval_every=3),
        eval=dataclasses.replace(cfg.eval, max_problems=6, samples=1))
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for configs/demo.py; use '' or 'tiny'")
  return cfg
