"""Estimation share of the demo's FLOPs at K = 8 with skipping, screening and reuse, in runs.

Trains configs/demo.py at paced.rollouts=8 (everything else the demo's: 300 steps, a refresh of
512 random problems every 25 steps, the continuous rollout engine) three ways:
  engine         no skipping, no screening
  skip           paced.skip_base=0.5, skip_floor=0.1 (GRESO-style: a problem settled at p in
                 {0, 1} for z estimates in a row is re-estimated with probability max(0.5^z, 0.1))
  skip+screen    the same plus paced.screen_rollouts=4
  on_policy      loss.mode=on_policy (reverse KL on the student's own rollouts, sampled each step)
  on_policy+reuse  the same with paced.reuse_rollouts=25: a refresh's estimation rollouts serve
                 as training rows for the rest of its round
and reads each run's FLOP split (flops.py convention): estimation share = rollout FLOPs /
(rollout + train FLOPs). Held-out accuracy before/after is reported beside it (one seed: a
difference inside the eval's standard error is level).

The error skipping causes: at the last refresh (step 275) of the `skip` run, the problems it
skipped keep estimates from earlier rounds; the script re-estimates them with K = 8 from the
step-275 checkpoint and reports how many of their stale p in {0, 1} the fresh estimate leaves
(their PACED weight would have been > 0) and mean |p_stale - p_fresh|.

    JAX_PLATFORMS=cpu python benchmarks/estimation_runs.py [--out runs/skip_share] [--steps 300]
        [--variants engine skip skip+screen on_policy on_policy+reuse]

Resumable: a finished run (its final checkpoint exists) is read, not rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "engine": (),
    "skip": ("paced.skip_base=0.5", "paced.skip_floor=0.1"),
    "skip+screen": ("paced.skip_base=0.5", "paced.skip_floor=0.1", "paced.screen_rollouts=4"),
    "on_policy": ("loss.mode=on_policy", "train.log_every=1"),
    "on_policy+reuse": ("loss.mode=on_policy", "paced.reuse_rollouts=25", "train.log_every=1"),
    "adaptive": ("paced.adaptive_rollouts=2",),
    "adaptive+decay": ("paced.adaptive_rollouts=2", "paced.merge=decay",
                       "paced.decay_per_step=0.99"),
    "on_policy+outcomes": ("loss.mode=on_policy", "paced.train_outcomes=true", "paced.merge=decay",
                           "paced.decay_per_step=0.99", "paced.adaptive_rollouts=2",
                           "paced.fresh_trials=2", "train.log_every=1"),
}


def config(name: str, args):
  from paced_jax.config import load_config

  return load_config(str(ROOT / "configs" / "demo.py"), [
      "generate.source=", "paced.rollouts=8", f"train.steps={args.steps}", "train.ckpt_every=25",
      f"train.max_to_keep={args.steps // 25 + 1}", f"train.eval_every={args.steps}",
      *VARIANTS[name]])


def run(name: str, args) -> Path:
  from paced_jax.train import train

  wd = Path(args.out) / name.replace("+", "_")
  if (wd / "checkpoints" / str(args.steps)).is_dir():
    print(f"{name}: done, reading {wd}", flush=True)
    return wd
  overrides = VARIANTS[name]
  print(f"{name}: training {wd} ({' '.join(overrides)})", flush=True)
  t0 = time.perf_counter()
  train(config(name, args), wd, progress=True)
  print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
  return wd


def summary(wd: Path) -> dict:
  from paced_jax.metrics import read_metrics

  rows = read_metrics(wd)
  last = [r for r in rows if "compute/flops" in r][-1]
  est = [r for r in rows if "frontier/estimated" in r]
  before = json.loads((wd / "eval_before.json").read_text()) if (wd / "eval_before.json").exists() else {}
  after = [r for r in rows if "eval/test/overall" in r]
  return {"train": last["compute/train_flops"], "rollout": last["compute/rollout_flops"],
          "share": last["compute/rollout_flops"] / last["compute/flops"],
          "estimated": sum(r["frontier/estimated"] for r in est),
          "skipped": sum(r.get("frontier/skipped", 0) for r in est),
          "reused": sum(r.get("rollouts/reused_rows", 0) for r in rows if "loss" in r),
          "estimate_flops": sum(r.get("frontier/estimate_flops", 0) for r in est),
          "per_problem": (sum(r.get("frontier/rollouts_per_problem", 0) * r["frontier/estimated"]
                              for r in est) / max(sum(r["frontier/estimated"] for r in est), 1)),
          "fresh_kept": sum(r.get("frontier/fresh_kept", 0) for r in est),
          "acc_before": before.get("eval/test/overall"),
          "acc_after": after[-1]["eval/test/overall"] if after else None}


def audit(wd: Path, step: int, cfg) -> dict:
  """Fresh K = 8 estimates, from the step-`step` student, of the problems skipped then
  (passrates/round_R.skipped.json), against the stale estimates they kept."""
  import jax
  import numpy as np

  from paced_jax.models.io import load_model_checked
  from paced_jax.data.sources import load_pool
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.estimate import estimate_for_config
  from paced_jax.frontier import PassRateTable
  from paced_jax.sharding import make_mesh
  from paced_jax.verify import verifier_from_config

  rnd = step // cfg.paced.refresh_every
  table = PassRateTable.from_jsonl(wd / "passrates" / f"round_{rnd:05d}.jsonl")
  skipped = json.loads((wd / "passrates" / f"round_{rnd:05d}.skipped.json").read_text())
  index = {pid: i for i, pid in enumerate(table.ids)}
  stale = [index[pid] for pid in skipped]
  source = load_pool(cfg.data, "train", seed=cfg.seed)
  by_id = {source[i].id: source[i] for i in range(len(source))}
  problems = [by_id[pid] for pid in skipped]
  model, _ = load_model_checked(wd / "checkpoints" / str(step), "--checkpoint")
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  est = estimate_for_config(model, problems, tok, verifier_from_config(cfg.paced), cfg,
                            make_mesh(cfg.mesh), rollouts=8, rng=jax.random.key(12345))
  p_stale = table.pass_rates()[stale]
  p_fresh = est.successes / est.trials
  left = int(np.sum((p_fresh > 0) & (p_fresh < 1)))
  return {"n": len(stale), "left_01": left, "mean_abs": float(np.abs(p_stale - p_fresh).mean())
          if stale else 0.0}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="runs/skip_share")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  args = ap.parse_args(argv)
  res = {}
  for name in args.variants:
    res[name] = summary(run(name, args))
  import jax

  print(f"\n# Estimation share at K = 8, demo runs — {datetime.date.today()}, jax "
        f"{jax.__version__}, load average {os.getloadavg()[0]:.1f}\n")
  print("| run | rollout FLOPs | estimation FLOPs | train FLOPs | rollout share | estimation "
        "share | problems estimated | rollouts / problem | skipped | kept on training outcomes | "
        "on-policy rows reused | held-out acc before -> after |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, r in res.items():
    acc = (f"{r['acc_before']:.3f} -> {r['acc_after']:.3f}" if r["acc_after"] is not None
           else "-")
    total = r["rollout"] + r["train"]
    print(f"| {name} | {r['rollout']:.4g} | {r['estimate_flops']:.4g} | {r['train']:.4g} | "
          f"{r['share']:.1%} | {r['estimate_flops'] / total:.1%} | {r['estimated']:.0f} | "
          f"{r['per_problem']:.2f} | {r['skipped']:.0f} | {r['fresh_kept']:.0f} | "
          f"{r['reused']:.0f} | {acc} |")
  if "skip" in res:
    last = (args.steps - 1) // 25 * 25
    a = audit(Path(args.out) / "skip", last, config("skip", args))
    print(f"\nskip audit at step {last}: {a['n']} settled problems kept stale estimates; a fresh "
          f"K = 8 estimate leaves {{0, 1}} for {a['left_01']} of them; mean |p_stale - p_fresh| "
          f"= {a['mean_abs']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
