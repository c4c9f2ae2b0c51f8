"""Distillation step at Qwen's vocabulary (V = 151,936) on CPU: the fused chunked loss against
the unchunked loss, the `jax.checkpoint`-chunked loss it replaced, and Tunix 0.1.7.

Shapes: student cpu-student, teacher cpu-teacher (shared/BENCH_SHAPES.md) with vocab 151,936,
batch B x T (default 2 x 512), the response = the last R positions (default 384), AdamW, forward
KL at temperature 1.

  ours-fused       paced_jax.step with loss.chunk_size=CHUNK: paced_jax/fused_loss.py
  ours-unchunked   loss.chunk_size=0: [B, R, V] logits, plain autodiff
  ours-remat       the previous chunked loss (`_remat_loss` below: `jax.checkpoint` per chunk,
                   logits recomputed in the backward), swapped into the same step
  tunix            DistillationTrainer + LogitStrategy (scores all T positions: it has no mask)
  ours-offline-K   loss.teacher=offline: no teacher in the step (or in memory); the batch carries
                   the teacher's top-K ids, log-probabilities (float16, as stored) and tail per
                   scored position (`paced teacher-logits` writes them), fused offline forward KL

Scored tok/s counts the positions each system scores (B * R for ours, B * T for Tunix, which must
score them all); response tok/s counts the response positions the batch asks for (B * R for
both), i.e. the steps/s of each system on the same batch.
Speed: one process, systems interleaved (rounds x blocks of steps, median over blocks). Peak RSS:
a fresh subprocess per system (`--only NAME`), run one after another, warm-up + 2 steps each.

  JAX_PLATFORMS=cpu python benchmarks/bench_fused_loss.py [--seq 512 --scored 384 --batch 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import paced_jax
from common import random_decoder, step_runner, timed
from paced_jax import losses
from paced_jax import step as step_lib
from paced_jax.config import Config, DataConfig, LossConfig, MeshConfig, TrainConfig
from paced_jax.models import get_preset
from paced_jax.sharding import make_mesh

V = 151_936
TRAIN = TrainConfig(steps=10_000, lr=1e-4, warmup_steps=1, weight_decay=0.01)
SYSTEMS = ("ours-fused", "ours-unchunked", "ours-remat", "tunix", "ours-offline-64",
           "ours-offline-256")


def _remat_loss(h_t, w_t, h_s, w_s, mask, coef, kind, *, chunk, row_sharding=None,
                targets_BR=None, **kw):
  """The chunked loss before fusion, kept here for the comparison: a scan over chunks of
  scored positions under jax.checkpoint (each chunk's logits recomputed in the backward)."""
  B, R, _ = h_s.shape
  n = -(-R // chunk)
  tgt = jnp.zeros((B, R), jnp.int32) if targets_BR is None else targets_BR
  pad = lambda x: jnp.pad(x, [(0, 0), (0, n * chunk - R)] + [(0, 0)] * (x.ndim - 2))
  xs = tuple(jnp.moveaxis(pad(x).reshape(B, n, chunk, *x.shape[2:]), 1, 0)
             for x in (h_t, h_s, mask, tgt))  # padded positions are masked: they add nothing

  @jax.checkpoint
  def body(sums, x):
    h_t_c, h_s_c, m, t = x
    s, _ = losses.linear_divergence(h_t_c, w_t, h_s_c, w_s, m, kind, targets_BR=t, **kw)
    return sums + s, None

  sums, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32), xs)
  return jnp.sum(coef * sums), sums


def make_offline(name, cfg_s, cfg_t, tokens, args):
  """The train step with stored teacher logits: compiled with no teacher parameters; the
  stored arrays are the real teacher's top-k on this batch (computed once here, as the
  command would, then the teacher is dropped before the step runs)."""
  from paced_jax.teacher_logits import topk_from_logits

  B, T = tokens.shape
  k = int(name.rsplit("-", 1)[1])
  cfg = Config(model=cfg_s, teacher=None,
               data=DataConfig(batch_size=B, max_response_len=args.scored),
               loss=LossConfig(divergence="forward_kl", chunk_size=args.chunk,
                               teacher="offline:stored", offline_k=k), train=TRAIN)
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student = random_decoder(cfg_s, 0)
  pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
  stored = Path(args.stored) / f"top{k}.npz" if args.stored else None
  if stored is not None and stored.exists():  # a memory probe: read, as training does
    with np.load(stored) as f:
      ids, logp, tail = f["ids"], f["logp"], f["tail"]
  else:
    teacher = random_decoder(cfg_t, 1)
    logits = teacher(jnp.asarray(tokens), jnp.asarray(pos))[:, T - args.scored - 1:T - 1]
    ids, logp, tail = (np.asarray(x) for x in jax.jit(
        lambda z: topk_from_logits(z, k, 1.0))(logits))
    del teacher, logits
    if stored is not None:
      np.savez(stored, ids=ids, logp=logp.astype(np.float16), tail=tail)
  tx = step_lib.make_optimizer(cfg.train)
  state = step_lib.init_train_state(student, tx, mesh)
  fn = step_lib.compile_train_step(cfg, mesh, state, nnx.graphdef(student), None, None, tx)
  mask = np.zeros((B, T), np.float32)
  mask[:, T - args.scored - 1:T - 1] = 1.0
  batch = jax.device_put({
      "tokens": tokens, "positions": pos, "loss_mask": mask, "weights": np.ones((B,), np.float32),
      "teacher_ids": np.asarray(ids, np.int32), "teacher_logp": np.asarray(logp, np.float16),
      "teacher_log_tail": np.asarray(tail, np.float32)}, step_lib.batch_sharding(mesh))
  compiled = fn.lower(state, None, batch).compile()
  return step_runner(compiled, state, None, batch), args.scored


def make_ours(name, cfg_s, cfg_t, tokens, args):
  B, T = tokens.shape
  chunk = 0 if name == "ours-unchunked" else args.chunk
  cfg = Config(model=cfg_s, teacher=cfg_t, data=DataConfig(batch_size=B, max_response_len=args.scored),
               loss=LossConfig(divergence="forward_kl", chunk_size=chunk), train=TRAIN)
  if name == "ours-remat":
    step_lib.fused_divergence_loss = _remat_loss  # traced below, then restored
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student, teacher = random_decoder(cfg_s, 0), random_decoder(cfg_t, 1)
  tx = step_lib.make_optimizer(cfg.train)
  state = step_lib.init_train_state(student, tx, mesh)
  tdef, tparams = nnx.split(teacher)
  fn = step_lib.compile_train_step(cfg, mesh, state, nnx.graphdef(student), tparams, tdef, tx)
  mask = np.zeros((B, T), np.float32)
  mask[:, T - args.scored - 1:T - 1] = 1.0  # logits at t predict token t + 1: the last R tokens
  batch = jax.device_put({
      "tokens": tokens, "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
      "loss_mask": mask, "weights": np.ones((B,), np.float32)}, step_lib.batch_sharding(mesh))
  compiled = fn.lower(state, tparams, batch).compile()
  from paced_jax.fused_loss import fused_divergence_loss
  step_lib.fused_divergence_loss = fused_divergence_loss
  run = step_runner(compiled, state, tparams, batch)
  return run, args.scored


def make_tunix(cfg_s, cfg_t, tokens, args):
  import bench_step

  bench_step.B, bench_step.T = tokens.shape
  return bench_step.make_tunix(cfg_s, cfg_t, tokens), tokens.shape[1]


def build(name, cfg_s, cfg_t, tokens, args):
  if name == "tunix":
    return make_tunix(cfg_s, cfg_t, tokens, args)
  if name.startswith("ours-offline-"):
    return make_offline(name, cfg_s, cfg_t, tokens, args)
  return make_ours(name, cfg_s, cfg_t, tokens, args)


def setup(args):
  cfg_s = get_preset("cpu-student", vocab_size=V)
  cfg_t = get_preset("cpu-teacher", vocab_size=V)
  tokens = np.random.default_rng(0).integers(0, V, (args.batch, args.seq)).astype(np.int32)
  return cfg_s, cfg_t, tokens


def _vm_hwm_gib() -> float:
  """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries the parent's high-water
  mark across fork + exec, so a probe started by a large process would report the parent's."""
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_rss(args, name) -> float | None:
  """GiB of peak RSS of a fresh process that builds `name` and runs warm-up + 2 steps."""
  cmd = [sys.executable, __file__, "--only", name, "--seq", str(args.seq), "--scored",
         str(args.scored), "--batch", str(args.batch), "--chunk", str(args.chunk),
         "--stored", args.stored]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode != 0:
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_gib"]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seq", type=int, default=512)
  ap.add_argument("--scored", type=int, default=384)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--block", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
  ap.add_argument("--no-memory", action="store_true")
  ap.add_argument("--only", choices=SYSTEMS, help=argparse.SUPPRESS)
  ap.add_argument("--stored", default="", help=argparse.SUPPRESS)  # offline arrays, for probes
  args = ap.parse_args()
  if not args.stored:
    import tempfile

    args.stored = tempfile.mkdtemp(prefix="offline_logits_")
  cfg_s, cfg_t, tokens = setup(args)
  if args.only:  # a memory probe subprocess
    run, _ = build(args.only, cfg_s, cfg_t, tokens, args)
    run(args.warmup + 2)
    print(json.dumps({"peak_rss_gib": _vm_hwm_gib()}))
    return

  runners, scored, setup_s = {}, {}, {}
  for name in args.systems:
    t0 = time.perf_counter()
    try:
      runners[name], scored[name] = build(name, cfg_s, cfg_t, tokens, args)
    except ImportError as e:
      print(f"{name}: skipped ({e})", file=sys.stderr)
      continue
    setup_s[name] = time.perf_counter() - t0 + timed(runners[name], args.warmup)
  tok_s = {name: [] for name in runners}
  for _ in range(args.rounds):  # interleaved: machine drift hits every system alike
    for name, fn in runners.items():
      tok_s[name].append(args.block * args.batch * scored[name] / timed(fn, args.block))
  rss = {} if args.no_memory else {name: peak_rss(args, name) for name in runners}

  try:
    import importlib.metadata as md
    tunix_version = md.version("google-tunix")
  except Exception:
    tunix_version = "not installed"
  print(f"# Distillation step at V = {V:,}, CPU — {datetime.date.today()}")
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} x "
        f"{jax.devices()[0].platform}; python {platform.python_version()}, jax {jax.__version__}, "
        f"flax {__import__('flax').__version__}, paced_jax {paced_jax.__version__}, tunix "
        f"{tunix_version}; load average {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}")
  print(f"shape: cpu-student <- cpu-teacher at V = {V:,}, batch {args.batch} x {args.seq}, "
        f"response = last {args.scored} (ours), all {args.seq} (Tunix), chunk {args.chunk}; "
        f"{args.warmup} warm-up, {args.rounds} rounds x {args.block} steps interleaved\n")
  print("| system | scored/row | setup + warm-up s | median step s | median scored tok/s | min "
        "| max | response tok/s | peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  med = {name: statistics.median(v) for name, v in tok_s.items()}
  for name in runners:
    r = rss.get(name)
    step_s = args.batch * scored[name] / med[name]
    print(f"| {name} | {scored[name]} | {setup_s[name]:.0f} | {step_s:.2f} | {med[name]:,.0f} | "
          f"{min(tok_s[name]):,.0f} | {max(tok_s[name]):,.0f} | "
          f"{args.batch * args.scored / step_s:,.0f} | {'-' if r is None else f'{r:.2f}'} |")
  print()
  for name in runners:
    for other in ("tunix", "ours-remat", "ours-unchunked", "ours-fused"):
      if other in med and other != name and (name == "ours-fused" or (
          name.startswith("ours-offline") and other == "ours-fused")):
        paired = statistics.median(a / b for a, b in zip(tok_s[name], tok_s[other]))
        same = med[name] / scored[name] / (med[other] / scored[other])
        print(f"{name} / {other}: {med[name] / med[other]:.2f}x scored tok/s (ratio of "
              f"medians), {paired:.2f}x (median of per-round ratios); {same:.2f}x response "
              f"tok/s (steps/s on the same batch)")


if __name__ == "__main__":
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  main()
