"""Qwen3-8B teacher -> Qwen3-0.6B student, PACED on GSM8K/MATH-style problems (math verifier).

The paper's strongest recipe: forward KL on verified teacher references for the first half of
training, reverse KL on the student's own rollouts for the second; problems are sampled by
w(p) = p(1 - p) of the student's pass rate, re-estimated every 50 steps from 8 rollouts.

Inputs (all local; nothing is downloaded at run time):
  - the two Hugging Face directories (config.json + *.safetensors + tokenizer.json), e.g. from
    `huggingface-cli download Qwen/Qwen3-8B --local-dir models/Qwen3-8B` done beforehand;
  - a JSONL pool, one problem per line: {"question": ..., "final_answer": "72",
    "solution": "... #### 72"}. GSM8K's train split becomes this with
    `final_answer = answer.split("####")[-1].strip()` and `solution = answer`;
  - held-out files in the same format (optional; without them evaluation is off): the 4th and
    5th argument, or --set data.eval_path=data/gsm8k_test.jsonl --set
    data.probe_path=data/probe.jsonl (problems the student solves before distillation).

The directories decide both architectures: the presets below only say what to expect (and size
`paced plan`); a directory with other shapes trains as what it holds, and a --set model.* /
teacher.* shape that contradicts it is an error.

Run (paths via the argument, or keep the defaults models/Qwen3-8B, models/Qwen3-0.6B,
data/gsm8k_train.jsonl and override any of them with --set):
  paced smoke configs/qwen3_8b_to_0p6b.py:models/Qwen3-8B,models/Qwen3-0.6B
  paced train configs/qwen3_8b_to_0p6b.py:models/Qwen3-8B,models/Qwen3-0.6B,data/gsm8k.jsonl,\\
data/gsm8k_test.jsonl,data/probe.jsonl --workdir runs/qwen3-paced
  paced convert --to-hf runs/qwen3-paced/checkpoints/1000 --out out/qwen3-0.6b-paced \\
      --tokenizer models/Qwen3-0.6B

TPU (v5e-8 / v4-8, one host): the defaults shard both models over `fsdp` on all chips (teacher
16 GB bf16, student fp32 master weights + AdamW ~7 GB). Multi-host: the same command on every
host (tpu_scripts/). GPU: one 80 GB H100 fits it as is; on 8 GPUs keep fsdp=-1 or add
--set mesh.tensor=2 for longer sequences. `JAX_PLATFORMS=cpu paced smoke ...:tiny` checks the
wiring in seconds with random tiny models and the synthetic suite.

Expected: GSM8K test avg@4 of the student rises over its starting point while accuracy on
problems it had mastered (the forgetting probe) stays within about a point.
"""

import dataclasses

from paced_jax.config import (Config, DataConfig, EvalConfig, LossConfig, MeshConfig,
                              PacedConfig, SampleConfig, TrainConfig)
from paced_jax.models.presets import get_preset

# Qwen3 non-thinking mode (an empty think block), answer in \boxed{} for the math verifier.
_TEMPLATE = ("<|im_start|>user\n{prompt}\nPlease reason step by step, and put your final answer "
             "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
_DEFAULTS = ("models/Qwen3-8B", "models/Qwen3-0.6B", "data/gsm8k_train.jsonl")


def get_config(arg: str = "") -> Config:
  if arg == "tiny":
    return _tiny()
  parts = [p.strip() for p in arg.split(",")] if arg else []
  if len(parts) > 5 or any(not p for p in parts):
    raise ValueError(f"argument {arg!r}: expected TEACHER_DIR,STUDENT_DIR[,POOL.jsonl"
                     "[,EVAL.jsonl[,PROBE.jsonl]]] or 'tiny'")
  teacher_dir, student_dir, pool, eval_path, probe_path = (
      parts + list(_DEFAULTS[len(parts):]) + ["", ""])[:5]
  teacher = get_preset("qwen3-8b", dtype="bfloat16", param_dtype="bfloat16")
  student = get_preset("qwen3-0.6b", dtype="bfloat16", param_dtype="float32", remat="dots")
  return Config(
      model=student, teacher=teacher, mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
      data=DataConfig(source="jsonl", path=pool, eval_path=eval_path, probe_path=probe_path,
                      field_map=("prompt=question", "answer=final_answer"),
                      tokenizer=student_dir, chat_template=_TEMPLATE, max_prompt_len=384,
                      max_response_len=1024, length_buckets=(512, 1024, 1536),
                      batch_size=64, reference="teacher"),
      sample=SampleConfig(temperature=1.0, max_new_tokens=1024, prompt_buckets=(128, 256, 384),
                          batch_size=256),
      paced=PacedConfig(weighting="paced", use="sample", rollouts=8, refresh_every=50,
                        eps=0.02, verifier="math"),
      loss=LossConfig(mode="two_stage", divergence="forward_kl", chunk_size=256,
                      two_stage_switch=0.5),
      train=TrainConfig(steps=1000, lr=1e-5, warmup_steps=50, weight_decay=0.01,
                        grad_clip=1.0, log_every=10, eval_every=200, ckpt_every=200,
                        init_teacher=teacher_dir, init_student=student_dir),
      eval=EvalConfig(samples=4, temperature=0.6, max_problems=500),
      seed=0, name="qwen3-8b-to-0.6b")


def _tiny() -> Config:
  """The same recipe with random tiny Qwen3 models on the synthetic suite (CPU, seconds)."""
  student = get_preset("tiny-qwen3")
  teacher = dataclasses.replace(student, hidden=96, num_heads=6, num_kv_heads=2)
  return Config(
      model=student, teacher=teacher,
      data=DataConfig(source="synthetic", tokenizer="char", max_prompt_len=32,
                      max_response_len=32, length_buckets=(64,), batch_size=8),
      sample=SampleConfig(max_new_tokens=32, prompt_buckets=(32,), batch_size=32),
      paced=PacedConfig(rollouts=4, refresh_every=5),
      loss=LossConfig(mode="two_stage", chunk_size=32),
      train=TrainConfig(steps=10, warmup_steps=2, log_every=2, eval_every=10, ckpt_every=10),
      eval=EvalConfig(samples=2, max_problems=16), name="qwen3-8b-to-0.6b-tiny")
