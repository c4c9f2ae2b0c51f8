"""Distillation step, GPU (shared/BENCH_SHAPES.md): student qwen2.5-0.5b, teacher qwen2.5-1.5b,
sequence 2048, one GPU; prints tokens/s and MFU, one line per config.

Dtypes: compute in bfloat16 for both models (norms, softmax and the loss stay fp32 inside the
model and losses). The student keeps float32 parameters (AdamW master weights; the model casts
them to bf16 per matmul); the frozen teacher stores bfloat16 parameters (it is never updated, so
fp32 copies would only cost memory). Random weights (normal * 0.02) from `shard_init`.

Per config (student remat policy x loss chunk) the batch starts at --batch (8) and halves until
the step fits: the step is AOT-compiled first and its `memory_analysis()` checked against the
device's memory limit, and an out-of-memory error at run time also falls back. Then --warmup
steps, then --steps timed steps (one device sync at the end). Every row scores all T positions
(forward KL at temperature 1) unless --scored says otherwise; MFU uses `paced_jax.flops`
(model FLOPs: remat and the chunked loss's recomputation are not counted, so they lower MFU).

Only jax / flax / optax and this package's config, models, sharding, step and flops modules are
imported (no grain / tfds), so it runs on a bare GPU box with the package installed.

  python benchmarks/gpu_step.py                 # one GPU
  JAX_PLATFORMS=cpu python benchmarks/gpu_step.py --tiny    # the same code, tiny shapes on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from flax import nnx

from paced_jax import flops
from paced_jax.config import Config, DataConfig, LossConfig, MeshConfig, TrainConfig
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.step import batch_sharding, compile_train_step, init_train_state, make_optimizer


def model_configs(tiny: bool, remat: str):
  if tiny:
    student = get_preset("tiny-qwen2", max_seq_len=2048)
    teacher = dataclasses.replace(student, hidden=96, num_layers=3, num_heads=6, mlp_dim=192)
  else:
    student, teacher = get_preset("qwen2.5-0.5b"), get_preset("qwen2.5-1.5b")
  student = dataclasses.replace(student, dtype="bfloat16", param_dtype="float32", remat=remat)
  teacher = dataclasses.replace(teacher, dtype="bfloat16", param_dtype="bfloat16", remat="none")
  return student, teacher


def is_oom(e: Exception) -> bool:
  msg = str(e)
  return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg


def bytes_needed(mem) -> int:
  """Peak device bytes of one compiled step: inputs + outputs not aliased to inputs + temps."""
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)


def run_config(args, remat: str, chunk: int, batch: int):
  """Builds and times one config at one batch size; returns a dict, or raises on OOM."""
  student_cfg, teacher_cfg = model_configs(args.tiny, remat)
  T = args.seq
  scored = args.scored or T
  cfg = Config(model=student_cfg, teacher=teacher_cfg,
               data=DataConfig(batch_size=batch, max_response_len=scored),
               loss=LossConfig(divergence="forward_kl", chunk_size=chunk),
               train=TrainConfig(steps=10_000, lr=1e-5, warmup_steps=1))
  device = jax.devices()[0]
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device])
  student = shard_init(lambda r: Decoder(student_cfg, rngs=r), mesh, seed=0)
  teacher = shard_init(lambda r: Decoder(teacher_cfg, rngs=r), mesh, seed=1)
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  tdef, tparams = nnx.split(teacher)
  step = compile_train_step(cfg, mesh, state, nnx.graphdef(student), tparams, tdef, tx)
  del student, teacher

  rng = np.random.default_rng(0)
  mask = np.zeros((batch, T), np.float32)
  mask[:, T - scored:] = 1.0
  batch_arrays = jax.device_put({
      "tokens": rng.integers(0, student_cfg.vocab_size, (batch, T)).astype(np.int32),
      "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (batch, T)),
      "loss_mask": mask, "weights": np.ones((batch,), np.float32)}, batch_sharding(mesh))

  t0 = time.perf_counter()
  compiled = step.lower(state, tparams, batch_arrays).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  stats = device.memory_stats() or {}
  limit = args.limit_gib * 2**30 or stats.get("bytes_limit")
  if mem is not None and limit and bytes_needed(mem) > limit:
    raise MemoryError(f"RESOURCE_EXHAUSTED: step needs {bytes_needed(mem) / 2**30:.3f} GiB "
                      f"> {limit / 2**30:.3f} GiB")

  for _ in range(args.warmup):
    state, metrics = compiled(state, tparams, batch_arrays)
  loss0 = float(metrics["loss"])  # also syncs
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, tparams, batch_arrays)
  loss = float(metrics["loss"])
  elapsed = time.perf_counter() - t0
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss} (after warm-up: {loss0})")

  tok_s = args.steps * batch * T / elapsed
  fpt = flops.train_flops_per_token(student_cfg, teacher_cfg, T, scored)
  peak = flops.peak_flops(device)
  stats = device.memory_stats() or {}
  return dict(tok_s=tok_s, step_s=elapsed / args.steps, compile_s=compile_s, loss=loss,
              tflops=tok_s * fpt / 1e12, mfu=flops.mfu(tok_s, fpt, peak),
              planned_gib=bytes_needed(mem) / 2**30 if mem is not None else float("nan"),
              peak_gib=stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny presets, T=64, batch 4 (CPU check)")
  ap.add_argument("--batch", type=int, default=None, help="first batch to try (8; tiny: 4)")
  ap.add_argument("--seq", type=int, default=None, help="sequence length (2048; tiny: 64)")
  ap.add_argument("--scored", type=int, default=0, help="scored positions per row (0: all)")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--remat", nargs="+", default=["full", "dots"],
                  choices=["none", "full", "dots", "dots_no_batch"])
  ap.add_argument("--chunk", nargs="+", type=int, default=None,
                  help="loss chunk(s) in positions (256; tiny: 16); 0: unchunked")
  ap.add_argument("--limit-gib", type=float, default=0.0,
                  help="memory budget for the AOT check (default: the device's bytes_limit)")
  args = ap.parse_args()
  args.seq = args.seq or (64 if args.tiny else 2048)
  args.batch = args.batch or (4 if args.tiny else 8)
  args.chunk = args.chunk or ([16] if args.tiny else [256])
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; "
        f"peak bf16 {flops.peak_flops(device) or 'unknown'} FLOP/s; "
        f"{'tiny presets' if args.tiny else 'student qwen2.5-0.5b, teacher qwen2.5-1.5b'}, "
        f"T={args.seq}, scored {args.scored or args.seq}/row, {args.steps} timed steps after "
        f"{args.warmup} warm-up")
  for remat in args.remat:
    for chunk in args.chunk:
      batch = args.batch
      while batch >= 1:
        try:
          r = run_config(args, remat, chunk, batch)
          break
        except (MemoryError, jax.errors.JaxRuntimeError) as e:
          if not is_oom(e):
            raise
          print(f"remat={remat} chunk={chunk} batch={batch}: out of memory "
                f"({str(e).splitlines()[0][:120]}); halving the batch")
          jax.clear_caches()
          batch //= 2
      else:
        print(f"remat={remat} chunk={chunk}: does not fit even at batch 1")
        continue
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak for this device)"
      peak = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "n/a"
      print(f"remat={remat} chunk={chunk} batch={batch} T={args.seq}: "
            f"{r['tok_s']:,.0f} tokens/s, {r['step_s'] * 1e3:.1f} ms/step, "
            f"{r['tflops']:.2f} model TFLOP/s, MFU {mfu}, compile {r['compile_s']:.1f}s, "
            f"planned {r['planned_gib']:.2f} GiB, peak in use {peak}, "
            f"loss {r['loss']:.4f}", flush=True)


if __name__ == "__main__":
  main()
