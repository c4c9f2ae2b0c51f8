"""Estimation share of the demo's FLOPs at K = 8: static sampler, engine, screening, adaptive K.

One refresh of configs/demo.py (its shipped student, 512 problems of the synthetic train pool,
temperature 1.0, budget 128) estimated with K = 8 by
  static     estimate_pass_rates(StaticRollouts(model, rows=256))  (sampler.generate batches)
  engine     estimate_pass_rates(model)  (rollouts.Engine, 256 slots)
  screen k0  the engine with screen=k0: k0 rollouts each, K - k0 more where the first k0 disagree
  adaptive k0  the engine with adaptive=k0: stages of k0 until sd[w] < 0.07 (paced.adaptive_*);
             each stage copies its prompts' KV from the engine's prompt cache (one prefill per
             problem); "no prompt cache" (sample.prompt_cache_mb=0) prefills them every stage
Per setting: rollout FLOPs (flops.py convention, as computed), wall time, and for screening the
error against the full-K estimate of the same rollouts (same RNG streams): mean |p - p_K| over
the 512 problems, mean |w - w_K| for w = p(1-p) (plug-in) and for the posterior E[w] under
Beta(s + 1, n - s + 1), and how many problems change sign of "w > 0".
The share assumes the demo's schedule: 12 refreshes (steps 0, 25, ..., 275) and 300 train steps
whose FLOPs per step are read from a study run (--train-metrics, compute/train_flops / step).

  JAX_PLATFORMS=cpu python benchmarks/estimation_share.py [--train-metrics runs/.../metrics.jsonl]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import numpy as np

from paced_jax.config import load_config
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import encode_prompt, load_tokenizer
from paced_jax.estimate import estimate_pass_rates
from paced_jax.frontier import posterior_weight
from paced_jax.models.io import load_model
from paced_jax.rollouts import Engine
from paced_jax.sampler import Knobs
from paced_jax.verify import verifier_from_config
from static_rollouts import StaticRollouts

K, SUBSET, REFRESHES, STEPS = 8, 512, 12, 300


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--train-metrics", default="runs/pace_vs_baselines/paced/seed_0/metrics.jsonl")
  ap.add_argument("--screens", type=int, nargs="*", default=[2, 4])
  ap.add_argument("--adaptive", type=int, nargs="*", default=[2, 4],
                  help="paced.adaptive_rollouts stages k0 to measure (adaptive_sd 0.07)")
  ap.add_argument("--uncached", type=int, nargs="*", default=[2],
                  help="adaptive stages k0 to measure also without the prompt cache")
  ap.add_argument("--train-flops-per-step", type=float, default=0.0,
                  help="train FLOPs per step instead of reading --train-metrics (e.g. 7.69e9: "
                       "estimation_runs.py's engine run, 2.306e12 over 300 steps)")
  ap.add_argument("--no-static", action="store_true", help="leave out the static sampler")
  args = ap.parse_args()
  cfg = load_config("configs/demo.py", ["generate.source="])  # the fixed pool it measures
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  model, _ = load_model(cfg.train.init_student)
  source = load_pool(cfg.data, "train", seed=cfg.seed)
  idx = np.sort(np.random.default_rng(0).choice(len(source), SUBSET, replace=False))
  problems = [source[int(i)] for i in idx]
  kw = dict(encode_prompt=lambda p: encode_prompt(tok, p.prompt, cfg.data.chat_template),
            decode=tok.decode, verifier=verifier_from_config(cfg.paced), rollouts=K,
            knobs=Knobs.from_config(cfg.sample), rng=jax.random.key(1), eos_id=tok.stop_ids,
            pad_id=tok.pad_id, batch_size=cfg.sample.batch_size,
            prompt_buckets=cfg.sample.prompt_buckets, budget_buckets=cfg.sample.budget_buckets,
            keep_rollouts=False, progress=False, verify_workers=cfg.paced.verify_workers)
  static = StaticRollouts(model, rows=cfg.sample.batch_size,
                          prompt_buckets=cfg.sample.prompt_buckets,
                          budget_buckets=cfg.sample.budget_buckets)
  settings = [("static", static, {})] * (not args.no_static) + [("engine", model, {})]
  settings += [(f"engine + screen k0={k0}", model, dict(screen=k0)) for k0 in args.screens]
  settings += [(f"engine + adaptive k0={k0}", model, dict(adaptive=k0, adaptive_sd=0.07))
               for k0 in args.adaptive]
  uncached = Engine(model, slots=cfg.sample.batch_size, prompt_buckets=cfg.sample.prompt_buckets,
                    budget_buckets=cfg.sample.budget_buckets, prompt_cache_mb=0)
  settings += [(f"engine + adaptive k0={k0}, no prompt cache", uncached,
                dict(adaptive=k0, adaptive_sd=0.07)) for k0 in args.uncached]
  for _, engine, extra in settings:  # warm-up at the same shapes: compile every program once
    estimate_pass_rates(engine, problems, **(kw | extra))
  res = {}
  for name, engine, extra in settings:
    t0 = time.perf_counter()
    est = estimate_pass_rates(engine, problems, **(kw | extra))
    res[name] = (est, time.perf_counter() - t0)

  if args.train_flops_per_step:
    per_step, last = args.train_flops_per_step, {"step": "given"}
  else:
    rows = [json.loads(line) for line in open(args.train_metrics)]
    last = max((r for r in rows if "compute/train_flops" in r), key=lambda r: r["step"])
    per_step = last["compute/train_flops"] / last["step"]
  train = STEPS * per_step
  full = res["engine"][0]
  p_full = full.successes / full.trials
  w_post_full = posterior_weight(full.successes, full.trials, 1.0, 1.0)
  print(f"# Estimation share of the demo's FLOPs at K = {K} — {datetime.date.today()}")
  print(f"load average (1 min) {os.getloadavg()[0]:.1f}; jax {jax.__version__}; {SUBSET} "
        f"problems per refresh, {REFRESHES} refreshes, {STEPS} train steps at "
        f"{per_step:.3g} FLOPs/step (from {args.train_metrics}, step {last['step']})\n")
  print("| setting | rollout FLOPs / refresh | wall s | rollouts | share of demo FLOPs | "
        "mean abs p err | mean abs w err (plug-in) | mean abs E[w] err (posterior) | "
        "w>0 flips |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, (est, dt) in res.items():
    est_total = REFRESHES * est.flops
    p = est.successes / est.trials
    w_post = posterior_weight(est.successes, est.trials, 1.0, 1.0)
    flips = int(np.sum((p * (1 - p) > 0) != (p_full * (1 - p_full) > 0)))
    print(f"| {name} | {est.flops:.3g} | {dt:.1f} | {int(est.trials.sum())} | "
          f"{est_total / (est_total + train):.1%} | {np.abs(p - p_full).mean():.4f} | "
          f"{np.abs(p * (1 - p) - p_full * (1 - p_full)).mean():.4f} | "
          f"{np.abs(w_post - w_post_full).mean():.4f} | {flips} |")
  stopped = {n: int(np.sum(e.trials < K)) for n, (e, _) in res.items() if "k0" in n}
  print(f"\nproblems stopped before K: {stopped} of {SUBSET}; static and engine draw the "
        f"same rollouts (equal successes: "
        f"{bool(np.array_equal(res['static'][0].successes, full.successes)) if 'static' in res else '-'})")


if __name__ == "__main__":
  main()
