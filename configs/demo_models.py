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

Self-distillation (loss.mode=self_distill) needs a privileged teacher: the starting student
shown the reference solution in its prompt (loss.privileged_template). The students above were
never shown one and cannot read it (self-distilling the strong student collapsed it to 0 on
every level in 200 steps: reverse KL of 3 nats per token at step 0). `student_privileged` is
the strong student trained further on a pool where half the problems (levels 1-8 of add and
sort) show their solution as that template does and the other half are plain (the strong
student's level weights at levels 1-5, so levels 6-8 stay beyond it without the solution):

  python configs/demo_models.py privileged-pool      # writes runs/privileged_pool/*.jsonl (seconds)
  paced sft configs/demo_models.py:student_privileged --workdir runs/demo_student_privileged
  paced convert --to-hf runs/demo_student_privileged/checkpoints/600 --out configs/assets/demo_student_privileged --dtype bfloat16

Measured when the shipped file was made (held-out test split, 40 problems per cell, avg@4):
plain prompts 0.96 / 0.94 / 0.87 / 0.79 / 0.71 / 0.11 / 0.08 / 0.00 on levels 1-8 (the strong
student: 0.96 / 0.84 / 0.86 / 0.57 / 0.62 / 0 / 0 / 0); shown the solution (test_privileged.jsonl)
0.95 / 0.78 / 0.88 / 0.81 / 0.50 / 0.41 / 0.66 / 0.32, where the strong student scores 0 on
every level. So as its own privileged teacher it knows the hard levels' answers it cannot
reach alone, as the paper's privileged teacher does, though it copies imperfectly.

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


PRIVILEGED_POOL = "runs/privileged_pool"  # relative to the repository root
PRIVILEGED_TEMPLATE = "{prompt}\nReference solution: {solution}\n"  # LossConfig's default


def write_privileged_pool(out: str = PRIVILEGED_POOL, size: int = 40_000, seed: int = 1) -> None:
  """student_privileged's pool as JSONL files under `out`: train.jsonl (`size` problems: half of
  them levels 1-8 of add and sort shown with their solution through PRIVILEGED_TEMPLATE, half
  plain at levels 1-5 weighted 4, 4, 1, 1, 1), and the suite's held-out test and probe splits,
  plain (test.jsonl, probe.jsonl) and privileged (test_privileged.jsonl)."""
  import json
  import os

  from paced_jax.data.synthetic import synthetic_source

  base = DataConfig(source="synthetic", synthetic_families=("add", "sort"), synthetic_size=size // 2)
  priv = synthetic_source(dataclasses.replace(base, synthetic_levels=8), "train", seed=seed)
  plain = synthetic_source(dataclasses.replace(base, synthetic_levels=5,
                                               synthetic_level_weights=(4, 4, 1, 1, 1)),
                           "train", seed=seed + 1)

  def record(p, privileged: bool) -> dict:
    prompt = (PRIVILEGED_TEMPLATE.format(prompt=p.prompt, solution=p.solution) if privileged
              else p.prompt)
    return {"id": p.id + ("-priv" if privileged else ""), "prompt": prompt, "answer": p.answer,
            "solution": p.solution, "difficulty": p.difficulty}

  os.makedirs(out, exist_ok=True)
  rows = [record(priv[i], True) for i in range(len(priv))]
  rows += [record(plain[i], False) for i in range(len(plain))]
  files = {"train.jsonl": rows}
  held = dataclasses.replace(base, synthetic_levels=8, synthetic_heldout_per_cell=40)
  test = synthetic_source(held, "test", seed=seed)
  files["test.jsonl"] = [record(test[i], False) for i in range(len(test))]
  files["test_privileged.jsonl"] = [record(test[i], True) for i in range(len(test))]
  probe = synthetic_source(held, "probe", seed=seed)
  files["probe.jsonl"] = [record(probe[i], False) for i in range(len(probe))]
  for name, recs in files.items():
    with open(os.path.join(out, name + ".tmp"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in recs)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
  print(f"wrote {', '.join(f'{n} ({len(r)})' for n, r in files.items())} to {out}")


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
  elif arg == "student_privileged":  # reads a reference solution shown in its prompt
    model, train = STUDENT, TrainConfig(steps=600, lr=1e-3, warmup_steps=20, log_every=25,
                                        ckpt_every=200, max_to_keep=4, eval_every=600,
                                        init_student="configs/assets/demo_student_strong")
    data = dataclasses.replace(
        data, source="jsonl", path=f"{PRIVILEGED_POOL}/train.jsonl",
        eval_path=f"{PRIVILEGED_POOL}/test.jsonl", probe_path=f"{PRIVILEGED_POOL}/probe.jsonl",
        synthetic_families=(), max_prompt_len=160, length_buckets=(96, 128, 192, 256))
  else:
    raise ValueError(f"unknown argument {arg!r} for configs/demo_models.py; use teacher, "
                     "student, student_strong or student_privileged")
  return Config(model=model, teacher=None, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
                data=data, paced=PacedConfig(weighting="uniform"), loss=LossConfig(mode="sft"),
                train=train, seed=1, name=f"demo_{arg or 'teacher'}")


if __name__ == "__main__":
  import sys

  if sys.argv[1:] != ["privileged-pool"]:
    sys.exit("usage: python configs/demo_models.py privileged-pool   (writes "
             f"{PRIVILEGED_POOL}/*.jsonl for student_privileged)")
  write_privileged_pool()
