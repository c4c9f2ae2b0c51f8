"""Recipe for the embedded default's teacher and student (`paced sft` on the synthetic suite).

Rebuild the shipped checkpoints in configs/assets/ (2-core CPU: ~30 min for the teacher,
~5 min for the student):

  paced sft configs/demo_models.py:teacher --workdir runs/demo_teacher
  paced sft configs/demo_models.py:student --workdir runs/demo_student
  paced convert --to-hf runs/demo_teacher/checkpoints/1000 --out configs/assets/demo_teacher --dtype bfloat16
  paced convert --to-hf runs/demo_student/checkpoints/400 --out configs/assets/demo_student --dtype bfloat16

Measured when the shipped files were made (held-out test split, avg@4 at temperature 1):
teacher 0.79 / 0.81 / 0.60 / 0.73 / 0.78 on levels 1-5 (0.74 overall); student 0.53 / 0.31 /
0.23 / 0.15 / 0.07 (0.26 overall).

The phase-diagram study (benchmarks/phase_diagram.py) needs a student that has mastered part of
the pool; `student_strong` is the shipped student trained further with levels 1-2 weighted 4:1
(1500-step cosine run from configs/assets/demo_student; its step-1000 checkpoint is shipped as
configs/assets/demo_student_strong; ~6 min to step 1000 on a 2-core CPU):

  paced sft configs/demo_models.py:student_strong --workdir runs/demo_student_strong
  paced convert --to-hf runs/demo_student_strong/checkpoints/1000 --out configs/assets/demo_student_strong --dtype bfloat16

Measured (train pool, K = 8 at temperature 1, 60 problems per cell): mean p by level 1-5 for add
0.96 / 0.88 / 0.85 / 0.71 / 0.37, sort 0.95 / 0.88 / 0.84 / 0.76 / 0.68, count 0.19 / 0.20 /
0.24 / 0.19 / 0.13 (count does not improve at this size). Trained on levels 1-2 only (weights
1, 1, 0, 0, 0, 800 steps) the student masters them and forgets levels 3-5 entirely (p = 0).

The teacher (about 1.6M parameters) trains on every difficulty level long enough to solve most
problems; the student (about 0.21M parameters) trains briefly, so it does well on the easy
levels and fails most hard ones: its pass rates spread over [0, 1], which is what PACED needs.
"""

import dataclasses

from paced_jax.config import (Config, DataConfig, LossConfig, MeshConfig, ModelConfig,
                              PacedConfig, TrainConfig)

TEACHER = ModelConfig(arch="qwen3", vocab_size=128, hidden=192, num_layers=4, num_heads=6,
                      num_kv_heads=2, head_dim=32, mlp_dim=512, qk_norm=True,
                      tie_embeddings=True, rope_theta=10_000.0, max_seq_len=256)
# The three most algorithmic families: learnable by models this small within a CPU budget.
FAMILIES = ("add", "count", "sort")
STUDENT = dataclasses.replace(TEACHER, hidden=96, num_layers=2, num_heads=3, num_kv_heads=1,
                              mlp_dim=256)


def get_config(arg: str = "teacher") -> Config:
  data = DataConfig(source="synthetic", tokenizer="char", synthetic_size=50_000,
                    synthetic_levels=5, synthetic_families=FAMILIES, max_prompt_len=64, max_response_len=128,
                    length_buckets=(96, 128, 192), batch_size=32)
  if arg in ("teacher", ""):
    model, train = TEACHER, TrainConfig(steps=1000, lr=2e-3, warmup_steps=50, log_every=25,
                                        ckpt_every=250, max_to_keep=2, eval_every=500)
  elif arg == "student":
    model, train = STUDENT, TrainConfig(steps=400, lr=2e-3, warmup_steps=50, log_every=25,
                                        ckpt_every=200, max_to_keep=2, eval_every=200)
  elif arg == "student_strong":  # masters levels 1-2 of add and sort; see the docstring
    model, train = STUDENT, TrainConfig(steps=1500, lr=1e-3, warmup_steps=20, log_every=25,
                                        ckpt_every=250, max_to_keep=10, eval_every=500,
                                        init_student="configs/assets/demo_student")
    data = dataclasses.replace(data, synthetic_level_weights=(4, 4, 1, 1, 1))
  else:
    raise ValueError(f"unknown argument {arg!r} for configs/demo_models.py; use teacher, "
                     "student or student_strong")
  return Config(model=model, teacher=None, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
                data=data, paced=PacedConfig(weighting="uniform"), loss=LossConfig(mode="sft"),
                train=train, seed=1, name=f"demo_{arg or 'teacher'}")
