"""Distillation step, CPU (shared/BENCH_SHAPES.md): student cpu-student, teacher cpu-teacher,
batch 8 x 128 tokens, AdamW, forward KL at temperature 1.0.

Compares, in one process and interleaved (blocks of steps in turn; median tokens/s over blocks):
  ours           paced_jax.step.compile_train_step: teacher forward, student forward/backward,
                 divergence and AdamW update in ONE jitted program, state donated
  ours-chunk32   the same with the divergence in chunks of 32 positions (jax.checkpoint per
                 chunk; [B, T, V] logits never exist)
  tunix          tunix.distillation.DistillationTrainer + LogitStrategy(alpha=1.0: pure KL,
                 temperature 1.0) over tunix.models.qwen2 models of the same shapes from
                 tunix.models.dummy_model_creator (google-tunix==0.1.7), driven by its own
                 `train()` loop
Every system gets the same optax transform (paced_jax.step.make_optimizer: clip 1.0 + AdamW).

Scored tokens: ALL 128 positions of every row (loss_mask = 1 everywhere), because LogitStrategy
has no mask: it takes the mean KL over every [B, T] position, padding included. Both systems
therefore score 8 * 128 = 1024 tokens per step; tokens/s counts them (= sequence tokens). A fourth
row, ours-resp64
(only the last 64 positions scored, as for a prompt + response batch), shows what our step saves
by unembedding only scored positions; Tunix cannot express it, so it is not in the ratio.

Tunix is not a dependency: run this file with a venv that has jax 0.10.2, this package and
google-tunix==0.1.7 (see benchmarks/results/step.md); without Tunix its column is skipped.

  JAX_PLATFORMS=cpu python benchmarks/bench_step.py [--rounds 4 --block 5]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import paced_jax
from common import random_decoder, step_runner, timed
from paced_jax import flops
from paced_jax.config import Config, DataConfig, LossConfig, MeshConfig, TrainConfig
from paced_jax.models import get_preset
from paced_jax.sharding import make_mesh
from paced_jax.step import batch_sharding, compile_train_step, init_train_state, make_optimizer

B, T, TEMPERATURE = 8, 128, 1.0
TRAIN = TrainConfig(steps=10_000, lr=1e-4, warmup_steps=1, weight_decay=0.01)


def make_ours(student_cfg, teacher_cfg, tokens, *, chunk: int, scored: int):
  """Returns (run(n_steps) -> None, memory_analysis). Scored positions: the last `scored`."""
  cfg = Config(model=student_cfg, teacher=teacher_cfg,
               data=DataConfig(batch_size=B, max_response_len=scored),
               loss=LossConfig(divergence="forward_kl", temperature=TEMPERATURE,
                               chunk_size=chunk), train=TRAIN)
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student, teacher = random_decoder(student_cfg, 0), random_decoder(teacher_cfg, 1)
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  tdef, tparams = nnx.split(teacher)
  step = compile_train_step(cfg, mesh, state, nnx.graphdef(student), tparams, tdef, tx)
  mask = np.zeros((B, T), np.float32)
  mask[:, T - scored:] = 1.0
  batch = jax.device_put({
      "tokens": tokens, "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
      "loss_mask": mask, "weights": np.ones((B,), np.float32)}, batch_sharding(mesh))
  compiled = step.lower(state, tparams, batch).compile()
  run = step_runner(compiled, state, tparams, batch)
  return run, compiled.memory_analysis()


def make_tunix(cfg_s, cfg_t, tokens):
  from tunix.distillation import distillation_trainer as dt
  from tunix.distillation.strategies import logit
  from tunix.models import dummy_model_creator
  from tunix.models.qwen2 import model as qwen2
  from tunix.sft import utils as sft_utils

  def tcfg(cfg):
    return qwen2.ModelConfig(num_layers=cfg.num_layers, vocab_size=cfg.vocab_size,
                             embed_dim=cfg.hidden, hidden_dim=cfg.mlp_dim,
                             num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                             num_kv_heads=cfg.num_kv_heads, rope_theta=int(cfg.rope_theta),
                             norm_eps=cfg.rms_eps, use_tied_embedding=True)

  student = dummy_model_creator.create_dummy_model(qwen2.Qwen2, tcfg(cfg_s), scale=0.02)
  teacher = dummy_model_creator.create_dummy_model(qwen2.Qwen2, tcfg(cfg_t), random_seed=1,
                                                   scale=0.02)

  def forward(model, input_tokens, input_mask, positions, attention_mask):
    logits, _ = model(input_tokens, positions, None, attention_mask)
    return logits

  def labels(input_tokens, input_mask, **_):  # LogitStrategy computes the task CE even at alpha=1
    return jax.nn.one_hot(jnp.roll(input_tokens, -1, axis=1), cfg_s.vocab_size)

  def model_inputs(x):
    return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
            "positions": sft_utils.build_positions_from_mask(x.input_mask),
            "attention_mask": sft_utils.make_causal_attn_mask(x.input_mask)}

  strategy = logit.LogitStrategy(forward, forward, labels, temperature=TEMPERATURE, alpha=1.0)
  trainer = dt.DistillationTrainer(student, teacher, strategy, make_optimizer(TRAIN),
                                   dt.TrainingConfig(eval_every_n_steps=10**9, pbar_description=None))
  trainer = trainer.with_gen_model_input_fn(model_inputs)
  # As Tunix's RL learners do: train() then consumes the whole iterator and keeps the trainer open
  # (no close(), no max_steps), so it can be called once per block.
  trainer.is_managed_externally = True
  example = dt.TrainingInput(input_tokens=jnp.asarray(tokens),
                             input_mask=jnp.ones((B, T), jnp.bool_))

  def run(n):
    trainer.train([example] * n)

  return run


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--block", type=int, default=5, help="steps per timed block")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--skip", nargs="*", default=[], choices=["tunix", "resp64", "chunk32"])
  args = ap.parse_args()
  cfg_s, cfg_t = get_preset("cpu-student"), get_preset("cpu-teacher")
  tokens = np.random.default_rng(0).integers(0, cfg_s.vocab_size, (B, T)).astype(np.int32)

  runners, memory, compile_s = {}, {}, {}
  variants = {"ours": (0, T), "ours-chunk32": (32, T), "ours-resp64": (0, 64)}
  for name, (chunk, scored) in variants.items():
    if name.split("-")[-1] in args.skip:
      continue
    t0 = time.perf_counter()
    runners[name], memory[name] = make_ours(cfg_s, cfg_t, tokens, chunk=chunk, scored=scored)
    compile_s[name] = time.perf_counter() - t0
  tunix_version = "skipped"
  if "tunix" not in args.skip:
    try:
      import importlib.metadata as md
      t0 = time.perf_counter()
      runners["tunix"] = make_tunix(cfg_s, cfg_t, tokens)
      compile_s["tunix"] = time.perf_counter() - t0
      tunix_version = md.version("google-tunix")
    except ImportError as e:
      tunix_version = f"not installed ({e})"
  for name, fn in runners.items():  # warm-up: compiles (Tunix compiles on its first step)
    compile_s[name] += timed(fn, args.warmup)

  tok_s = {name: [] for name in runners}
  for _ in range(args.rounds):  # interleaved: machine drift hits every runner alike
    for name, fn in runners.items():
      tok_s[name].append(args.block * B * T / timed(fn, args.block))

  scored = {"ours-resp64": 64}
  print(f"# Distillation step, CPU — {datetime.date.today()}")
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].platform}; python {platform.python_version()}"
        f", jax {jax.__version__}, flax {__import__('flax').__version__}, "
        f"paced_jax {paced_jax.__version__}, tunix {tunix_version}")
  print(f"shape: student cpu-student, teacher cpu-teacher, batch {B} x {T}, AdamW, forward KL, "
        f"temperature {TEMPERATURE}; {args.warmup} warm-up steps, then {args.rounds} interleaved "
        f"rounds of {args.block} steps per system; tokens/s = B * T / s\n")
  print("| system | scored tokens/row | setup + warm-up s | median tokens/s | min | max | "
        "model GFLOP/s | step temp MiB |")
  print("|---|---|---|---|---|---|---|---|")
  med = {name: statistics.median(v) for name, v in tok_s.items()}
  for name in runners:
    r = scored.get(name, T)
    gflops = med[name] * flops.train_flops_per_token(cfg_s, cfg_t, T, r) / 1e9
    mem = memory.get(name)
    mib = f"{mem.temp_size_in_bytes / 2**20:.1f}" if mem is not None else "-"
    print(f"| {name} | {r} | {compile_s[name]:.1f} | {med[name]:,.0f} | {min(tok_s[name]):,.0f} "
          f"| {max(tok_s[name]):,.0f} | {gflops:.1f} | {mib} |")
  if "tunix" in med:
    for name in ("ours", "ours-chunk32"):
      if name in med:
        paired = statistics.median(a / b for a, b in zip(tok_s[name], tok_s["tunix"]))
        print(f"\n{name} / tunix tokens/s: {med[name] / med['tunix']:.2f}x (ratio of medians); "
              f"{paired:.2f}x (median of per-round ratios)")
  for name, mem in memory.items():
    print(f"{name} memory_analysis: arguments {mem.argument_size_in_bytes / 2**20:.1f} MiB, "
          f"outputs {mem.output_size_in_bytes / 2**20:.1f} MiB, "
          f"aliased {mem.alias_size_in_bytes / 2**20:.1f} MiB, "
          f"temp {mem.temp_size_in_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
  main()
