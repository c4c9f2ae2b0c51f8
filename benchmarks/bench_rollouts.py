"""Rollouts for estimation, CPU: the engine vs today's static sampler vs Tunix, side by side.

Workloads (cpu-student, random normal*0.02 weights, prompt 32 tokens, temperature 1.0):
  realistic  16 prompts x K = 8, budget 256; response lengths drawn once (seed 0) from a
             lognormal with median 40 and sigma 1.0, clipped to [8, 256]. The length is enforced
             the same way for every system: EOS is disabled and rollout r stops after L_r tokens
             (per-rollout max_new_tokens for ours; for Tunix, whose budget is one number per
             call, each batch runs to its longest rollout: exactly what a per-row EOS would cost
             a static batch, which stops when its last row stops).
  full       2 prompts x K = 8 = 16 rows, 64 new tokens each (the BENCH_SHAPES sampler shape):
             every rollout runs to the budget, nothing to gain from refilling slots.
Every system keeps the same number of rows in flight (--rows; engine slots = static batch rows =
Tunix batch). Useful tokens/s = sum of real lengths / wall time of the whole workload (one call
per system per round, interleaved, median of --rounds after one warm-up). Wasted slot-steps:
decode row-steps that produced no token of a live rollout / all decode row-steps.

  ours     paced_jax.rollouts.Engine (continuous batching, shared prefill, bounded attention)
  static   static_rollouts.StaticRollouts (sampler.generate, `rows` rows per call)
  tunix    tunix.generate.sampler.Sampler over tunix.models.qwen2 (google-tunix==0.1.7)

Tunix is not a dependency (see benchmarks/results/sampler.md for its venv); without it that
column is skipped.

  JAX_PLATFORMS=cpu python benchmarks/bench_rollouts.py [--rounds 3] [--rows 32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import jax
import numpy as np

import paced_jax
from common import random_decoder, timed, tunix_sampler
from paced_jax.models import get_preset
from paced_jax.rollouts import Engine
from static_rollouts import StaticRollouts
from paced_jax.sampler import Knobs

PROMPT, K = 32, 8


def workloads(cfg):
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, cfg.vocab_size, (16, PROMPT)).tolist()
  lengths = np.exp(np.log(40.0) + 1.0 * rng.standard_normal(16 * K))
  lengths = np.clip(np.round(lengths), 8, 256).astype(np.int32)
  return {"realistic": (prompts, lengths, 256),
          "full": (prompts[:2], np.full((2 * K,), 64, np.int32), 64)}


def make_ours(engine):
  def call(prompts, lengths, budget, seed):
    out = engine.sample(prompts, rollouts=K, rng=seed, stop_ids=None,
                        knobs=Knobs(temperature=1.0, max_new_tokens=lengths))
    assert np.array_equal(out.lengths_B, lengths)
    return out.wasted_fraction
  return call


def make_tunix(cfg, rows: int):
  s = tunix_sampler(cfg, PROMPT + 256)

  def call(prompts, lengths, budget, seed):
    per = max(1, rows // K)
    busy = total = 0
    for b in range(0, len(prompts), per):
      texts = [" ".join(map(str, p)) for p in prompts[b:b + per] for _ in range(K)]
      L = lengths[b * K:(b + per) * K]
      s(texts, max_generation_steps=int(L.max()), max_prompt_length=PROMPT, temperature=1.0,
        top_p=1.0, seed=seed + b, eos_tokens=[cfg.vocab_size], pad_output=True)
      busy, total = busy + int(np.sum(L - 1)), total + len(L) * (int(L.max()) - 1)
    return 1.0 - busy / total
  return call


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--rows", type=int, default=32)
  ap.add_argument("--skip", nargs="*", default=[],
                  choices=["static", "tunix", "full", "realistic"])
  args = ap.parse_args()
  cfg = get_preset("cpu-student")
  model = random_decoder(cfg)
  work = workloads(cfg)
  for w in ("full", "realistic"):
    if w in args.skip:
      del work[w]
  runners = {"ours": {w: make_ours(Engine(model, slots=args.rows if w == "realistic" else 16))
                      for w in work}}
  if "static" not in args.skip:
    runners["static"] = {w: make_ours(StaticRollouts(model, rows=args.rows if w == "realistic"
                                                     else 16)) for w in work}
  tunix_version = "skipped"
  if "tunix" not in args.skip:
    try:
      runners["tunix"] = {w: make_tunix(cfg, args.rows if w == "realistic" else 16)
                          for w in work}
      import importlib.metadata as md
      tunix_version = md.version("google-tunix")
    except ImportError as e:
      tunix_version = f"not installed ({e})"
  loads = [os.getloadavg()[0]]
  waste = {(n, w): fns[w](*work[w], 0) for n, fns in runners.items() for w in work}  # warm-up
  times = {(n, w): [] for n in runners for w in work}
  for r in range(args.rounds):  # interleaved: machine drift hits every system alike
    for w in work:
      for n, fns in runners.items():
        times[(n, w)].append(timed(fns[w], *work[w], r + 1))
    loads.append(os.getloadavg()[0])

  print(f"# Rollouts for estimation, CPU — {datetime.date.today()}")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform}; load average (1 min) {min(loads):.1f}-{max(loads):.1f} "
        f"during the run; python {platform.python_version()}, jax {jax.__version__}, flax "
        f"{__import__('flax').__version__}, paced_jax {paced_jax.__version__}, tunix "
        f"{tunix_version}")
  print(f"rows in flight: {args.rows} (realistic), 16 (full); median of {args.rounds} rounds "
        "after one warm-up\n")
  print("| workload | system | median s | useful tokens/s | wasted slot-steps |")
  print("|---|---|---|---|---|")
  for w, (_, lengths, _) in work.items():
    for n in runners:
      med = statistics.median(times[(n, w)])
      print(f"| {w} (sum of lengths {int(lengths.sum())}) | {n} | {med:.2f} | "
            f"{lengths.sum() / med:,.0f} | {waste[(n, w)]:.0%} |")
  for w in work:
    for other in ("static", "tunix"):
      if other in runners:
        ratio = statistics.median(times[(other, w)]) / statistics.median(times[("ours", w)])
        per = sorted(a / b for a, b in zip(times[(other, w)], times[("ours", w)]))
        q = len(per) // 4
        print(f"\n{w}: ours / {other} useful tokens/s = {ratio:.2f}x (per round: median "
              f"{statistics.median(per):.2f}x, quartiles {per[q]:.2f}-{per[-1 - q]:.2f}x)", end="")
  print()


if __name__ == "__main__":
  main()
