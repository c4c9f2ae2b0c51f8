"""Distillation step, GPU (shared/BENCH_SHAPES.md): student qwen2.5-0.5b, teacher qwen2.5-1.5b,
sequence 2048, one GPU; the fused chunked loss against the unfused one. Prints tokens/s, MFU and
peak HBM, one line per config.

Configs: --remat (default full) x --chunk (default 256 and 0). loss.chunk_size > 0 is the fused
loss (paced_jax/fused_loss.py: logits, their gradients and the unembedding's gradient in one pass
per chunk of scored positions; nothing is recomputed, only a few [B, chunk, V] fp32 buffers live
at a time); chunk 0 is the unfused reference (the [B, R, V] logits of both models and their
gradients through plain autodiff). Scored positions: the last --scored of each row (default 1536
of 2048: a 512-token prompt, a 1536-token response; 0 scores all T), forward KL at temperature 1.

Dtypes: compute in bfloat16 for both models (norms, softmax and the loss stay fp32 inside the
model and losses). The student keeps float32 parameters (AdamW master weights; the model casts
them to bf16 per matmul); the frozen teacher stores bfloat16 parameters (it is never updated, so
fp32 copies would only cost memory). Random weights (normal * 0.02) from `shard_init`.

Per config the batch starts at --batch (8) and halves until the step fits: the step is
AOT-compiled first and its `memory_analysis()` checked against the device's memory limit, and an
out-of-memory error at run time also falls back. Then --warmup steps, then --steps timed steps
(one device sync at the end). Each config runs in its own process (the device's
`peak_bytes_in_use` only grows within a process), so "peak" is that config's own high-water mark
of device memory in use (parameters, optimizer state, batch, step temporaries; a batch that was
tried and did not fit may have raised it); "planned" is what XLA's memory analysis of the
compiled step says (arguments + non-aliased outputs + temporaries), "temp" its temporaries alone
(where the loss's logits live). --in-process runs every config in one process (then peak is
cumulative).

FLOPs (paced_jax.flops): MFU counts model FLOPs (`train_flops_per_token`: 3x the student forward
+ the teacher forward, the unembedding at scored positions; remat's recomputation not counted, so
it lowers MFU through time); "as computed" counts what the hardware executes (`step_flops`: remat
recomputation and the last chunk's padding included). Neither loss recomputes anything: fused and
unfused have the same FLOPs.

Only jax / flax / optax and this package's config, models, sharding, step and flops modules are
imported (no grain / tfds), so it runs on a bare GPU box with the package installed.

  python benchmarks/gpu_step.py                 # one GPU, ~2-3 min on an H200
  JAX_PLATFORMS=cpu python benchmarks/gpu_step.py --tiny    # the same code, tiny shapes on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
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
  hw_fpt = flops.step_flops(student_cfg, teacher_cfg, batch, T, scored, chunk) / (batch * T)
  peak = flops.peak_flops(device)
  stats = device.memory_stats() or {}
  nan = float("nan")
  return dict(tok_s=tok_s, step_s=elapsed / args.steps, compile_s=compile_s, loss=loss,
              tflops=tok_s * fpt / 1e12, mfu=flops.mfu(tok_s, fpt, peak),
              hw_mfu=flops.mfu(tok_s, hw_fpt, peak),
              planned_gib=bytes_needed(mem) / 2**30 if mem is not None else nan,
              temp_gib=mem.temp_size_in_bytes / 2**30 if mem is not None else nan,
              peak_gib=stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None)


def loss_name(chunk: int) -> str:
  return f"fused chunk={chunk}" if chunk > 0 else "unfused chunk=0"


def run_one(args, remat: str, chunk: int):
  """One config in this process: the batch halves until it fits; prints one result line."""
  batch = args.batch
  while batch >= 1:
    try:
      r = run_config(args, remat, chunk, batch)
      break
    except (MemoryError, jax.errors.JaxRuntimeError) as e:
      if not is_oom(e):
        raise
      print(f"remat={remat} {loss_name(chunk)} batch={batch}: out of memory "
            f"({str(e).splitlines()[0][:120]}); halving the batch", flush=True)
      jax.clear_caches()
      batch //= 2
  else:
    print(f"step remat={remat} {loss_name(chunk)}: does not fit even at batch 1", flush=True)
    return
  pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"
  peak = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "n/a"
  print(f"step remat={remat} {loss_name(chunk)} batch={batch} T={args.seq} "
        f"scored={args.scored or args.seq}: {r['tok_s']:,.0f} tokens/s, MFU {pct(r['mfu'])}, "
        f"peak {peak}; {r['step_s'] * 1e3:.1f} ms/step, {r['tflops']:.2f} model TFLOP/s, "
        f"as computed {pct(r['hw_mfu'])}, planned {r['planned_gib']:.2f} GiB (temp "
        f"{r['temp_gib']:.2f}), compile {r['compile_s']:.1f}s, loss {r['loss']:.4f}", flush=True)


def print_header(args):
  device = jax.devices()[0]
  peak = flops.peak_flops(device)
  print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; "
        f"peak bf16 {f'{peak:.3g} FLOP/s' if peak else 'FLOP/s unknown (MFU n/a)'}; "
        f"{'tiny presets' if args.tiny else 'student qwen2.5-0.5b, teacher qwen2.5-1.5b'}, "
        f"T={args.seq}, scored {args.scored or args.seq}/row, {args.steps} timed steps after "
        f"{args.warmup} warm-up; batch from {args.batch}, halved until it fits", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny presets, T=64, batch 4 (CPU check)")
  ap.add_argument("--batch", type=int, default=None, help="first batch to try (8; tiny: 4)")
  ap.add_argument("--seq", type=int, default=None, help="sequence length (2048; tiny: 64)")
  ap.add_argument("--scored", type=int, default=None,
                  help="scored positions per row, the last ones (1536; tiny: 48); 0: all")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--remat", nargs="+", default=["full"],
                  choices=["none", "full", "dots", "dots_no_batch"])
  ap.add_argument("--chunk", nargs="+", type=int, default=None,
                  help="loss chunk(s) in positions, > 0 fused, 0 unfused (256 0; tiny: 16 0)")
  ap.add_argument("--limit-gib", type=float, default=0.0,
                  help="memory budget for the AOT check (default: the device's bytes_limit)")
  ap.add_argument("--in-process", action="store_true",
                  help="every config in this process (peak bytes in use is then cumulative)")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--header", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  args.seq = args.seq or (64 if args.tiny else 2048)
  args.batch = args.batch or (4 if args.tiny else 8)
  if args.scored is None:
    args.scored = 48 if args.tiny else 1536
  args.scored = min(args.scored, args.seq)
  args.chunk = args.chunk if args.chunk is not None else ([16, 0] if args.tiny else [256, 0])
  configs = [(remat, chunk) for remat in args.remat for chunk in args.chunk]
  if args.worker or args.in_process:
    if args.header or args.in_process:
      print_header(args)
    for remat, chunk in configs:
      run_one(args, remat, chunk)
    return
  # One process per config, one at a time; this process never touches the device (it would
  # hold memory the workers need).
  rc = 0
  for n, (remat, chunk) in enumerate(configs):
    cmd = [sys.executable, __file__, "--worker", "--remat", remat, "--chunk", str(chunk),
           "--batch", str(args.batch), "--seq", str(args.seq), "--scored", str(args.scored),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--limit-gib", str(args.limit_gib)] + (["--tiny"] if args.tiny else []) + (
               ["--header"] if n == 0 else [])
    code = subprocess.call(cmd)
    if code:
      print(f"step remat={remat} {loss_name(chunk)}: FAILED (worker exit {code})", flush=True)
      rc = rc or code
  sys.exit(rc)


if __name__ == "__main__":
  main()
