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
  adaptive       paced.adaptive_rollouts=2 (2 rollouts first, more only where the posterior of w
                 is still wide; the table's merged counts are the prior)
  adaptive+decay the same with paced.merge=decay, decay_per_step=0.99 (a problem its recent
                 counts settle is kept, not estimated: paced.adaptive_settled)
  on_policy+outcomes  on_policy with paced.train_outcomes=true: the verified training rollouts
                 enter the table; decay merge, adaptive 2, fresh_trials=2 (a problem with 2
                 fresh training outcomes this round is not estimated)
  adaptive+decay+settled3  adaptive+decay where a problem its discounted counts pin is kept for
                 up to 3 rounds (paced.adaptive_settled=3)
  on_policy+outcomes+subset128  on_policy+outcomes re-estimating 128 random problems a round
                 (paced.refresh_subset=128) instead of 512: the training outcomes carry the rest
  on_policy+outcomes+thinnestN  the same re-estimating N = 96, 128, 192 problems a round, the
                 ones with the fewest discounted trials (paced.refresh_order=thinnest: never
                 estimated first, then the stalest; the training outcomes carry the problems
                 the run trains on) instead of random ones
  on_policy+outcomes+thinnestNx2  thinnest, N = 256, 384, one stage of 2 rollouts each
                 (paced.adaptive_sd=1.0: every problem stops there), spread over more problems
  on_policy+outcomes+thinnestNx2+decay0.995  the same, N = 192, 256, with old counts
                 discounted more slowly (paced.decay_per_step=0.995)
  adaptive+decay+min_slots8  adaptive+decay with the engine's drain shrinking to 8 slots
                 (sample.min_slots=8; the demo's default is 32): the same rollouts, fewer FLOPs
and reads each run's FLOP split (flops.py convention): estimation share = rollout FLOPs /
(rollout + train FLOPs). Held-out accuracy before/after is reported beside it (one seed: a
difference inside the eval's standard error is level).

The error skipping causes: at the last refresh (step 275) of the `skip` run, the problems it
skipped keep estimates from earlier rounds; the script re-estimates them with K = 8 from the
step-275 checkpoint and reports how many of their stale p in {0, 1} the fresh estimate leaves
(their PACED weight would have been > 0) and mean |p_stale - p_fresh|.

    JAX_PLATFORMS=cpu python benchmarks/estimation_runs.py [--out runs/skip_share] [--steps 300]
        [--variants engine skip skip+screen on_policy on_policy+reuse adaptive adaptive+decay
                    on_policy+outcomes adaptive+decay+settled3 on_policy+outcomes+subset128
                    adaptive+decay+min_slots8]
        [--weight-audit]

--weight-audit: each run's weights after its last refresh against two fresh K = 16 estimates of
the same checkpoint on 512 fixed pool problems (mean |w - w_ref| beside the reference's own
noise, and the share of weight mass on problems with 0 < p_ref < 1, with standard errors).

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
    "adaptive+decay+settled3": ("paced.adaptive_rollouts=2", "paced.merge=decay",
                                "paced.decay_per_step=0.99", "paced.adaptive_settled=3"),
    "on_policy+outcomes+subset128": (
        "loss.mode=on_policy", "paced.train_outcomes=true", "paced.merge=decay",
        "paced.decay_per_step=0.99", "paced.adaptive_rollouts=2", "paced.fresh_trials=2",
        "paced.refresh_subset=128", "train.log_every=1"),
    "adaptive+decay+min_slots8": ("paced.adaptive_rollouts=2", "paced.merge=decay",
                                  "paced.decay_per_step=0.99", "sample.min_slots=8"),
}
_OUTCOMES = VARIANTS["on_policy+outcomes"]


def _thinnest(n: int, *extra: str) -> tuple[str, ...]:
  """on_policy+outcomes re-estimating the n problems with the fewest discounted trials."""
  return (*_OUTCOMES, f"paced.refresh_subset={n}", "paced.refresh_order=thinnest", *extra)


for _n in (96, 128, 192):
  VARIANTS[f"on_policy+outcomes+thinnest{_n}"] = _thinnest(_n)
for _n in (256, 384):  # one stage of 2 rollouts each (adaptive_sd so wide that every problem
  # stops there), spread over more problems; the decayed counts add up over rounds
  VARIANTS[f"on_policy+outcomes+thinnest{_n}x2"] = _thinnest(_n, "paced.adaptive_sd=1.0")
for _n in (192, 256):  # the same, old counts discounted more slowly (half-life 138 steps)
  VARIANTS[f"on_policy+outcomes+thinnest{_n}x2+decay0.995"] = _thinnest(
      _n, "paced.adaptive_sd=1.0", "paced.decay_per_step=0.995")


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
          "settled_kept": sum(r.get("frontier/settled_kept", 0) for r in est),
          "acc_before": before.get("eval/test/overall"),
          "acc_after": after[-1]["eval/test/overall"] if after else None}


def _fresh(wd: Path, step: int, cfg):
  """What both audits read: the run's pass-rate table after its step-`step` refresh, its train
  pool, and `estimate(problems, rollouts, seed)`: a fresh estimate from the step-`step`
  checkpoint."""
  import jax

  from paced_jax.data.sources import load_pool
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.estimate import estimate_for_config
  from paced_jax.frontier import PassRateTable
  from paced_jax.models.io import load_model_checked
  from paced_jax.sharding import make_mesh
  from paced_jax.verify import verifier_from_config

  rnd = step // cfg.paced.refresh_every
  table = PassRateTable.from_jsonl(wd / "passrates" / f"round_{rnd:05d}.jsonl")
  source = load_pool(cfg.data, "train", seed=cfg.seed)
  model, _ = load_model_checked(wd / "checkpoints" / str(step), "--checkpoint")
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)

  def estimate(problems, rollouts: int, seed: int):
    return estimate_for_config(model, problems, tok, verifier_from_config(cfg.paced), cfg,
                               make_mesh(cfg.mesh), rollouts=rollouts,
                               rng=jax.random.key(seed), progress=False)

  return rnd, table, source, estimate


def audit(wd: Path, step: int, cfg) -> dict:
  """Fresh K = 8 estimates, from the step-`step` student, of the problems skipped then
  (passrates/round_R.skipped.json), against the stale estimates they kept."""
  import numpy as np

  rnd, table, source, estimate = _fresh(wd, step, cfg)
  skipped = json.loads((wd / "passrates" / f"round_{rnd:05d}.skipped.json").read_text())
  index = {pid: i for i, pid in enumerate(table.ids)}
  stale = [index[pid] for pid in skipped]
  by_id = {source[i].id: source[i] for i in range(len(source))}
  est = estimate([by_id[pid] for pid in skipped], 8, 12345)
  p_stale = table.pass_rates()[stale]
  p_fresh = est.successes / est.trials
  left = int(np.sum((p_fresh > 0) & (p_fresh < 1)))
  return {"n": len(stale), "left_01": left, "mean_abs": float(np.abs(p_stale - p_fresh).mean())
          if stale else 0.0}


def weight_audit(wd: Path, step: int, cfg, n_subset: int = 512, rollouts: int = 16) -> dict:
  """The weights a run sampled by after its step-`step` refresh against fresh estimates of the
  same student: on a fixed random subset of the pool (the same for every run), two independent
  K = `rollouts` estimates from the step-`step` checkpoint give w_ref1, w_ref2 (cfg.paced's
  weighting function of the fresh counts, as the run applies it to its own). Reported with
  standard errors over problems: mean |w_run - w_ref1|, the reference's own noise mean
  |w_ref2 - w_ref1|, and the share of the run's weight mass (and of w_ref2's) on problems with
  0 < p_ref1 < 1."""
  import numpy as np

  from paced_jax.frontier import frontier_weights

  _, table, source, estimate = _fresh(wd, step, cfg)
  pick = np.sort(np.random.default_rng(0).choice(len(source), n_subset, replace=False))
  problems = [source[int(i)] for i in pick]
  s, n = table.counts([p.id for p in problems])
  w_run = frontier_weights(s, n, cfg.paced)
  last = table.step[table.rows([p.id for p in problems])]  # -1: never estimated
  refs = [estimate(problems, rollouts, seed) for seed in (12345, 54321)]
  w1, w2 = (frontier_weights(e.successes, e.trials, cfg.paced) for e in refs)
  p1 = refs[0].successes / refs[0].trials
  mid = (p1 > 0) & (p1 < 1)
  rng = np.random.default_rng(1)
  boot = rng.integers(0, n_subset, (1000, n_subset))

  def mean_se(x):
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))

  def mass(w):
    share = lambda i: (w[i] * mid[i]).sum() / max(w[i].sum(), 1e-12)
    return float(share(np.arange(n_subset))), float(np.std([share(b) for b in boot]))

  return {"err": mean_se(np.abs(w_run - w1)), "floor": mean_se(np.abs(w2 - w1)),
          "mass": mass(w_run), "mass_ref": mass(w2), "stale": float(np.mean(step - last[
              last >= 0])) if (last >= 0).any() else float("nan"), "n": n_subset, "K": rollouts}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="runs/skip_share")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  ap.add_argument("--weight-audit", action="store_true",
                  help="also audit each run's last weights against fresh K = 16 estimates")
  args = ap.parse_args(argv)
  res = {}
  for name in args.variants:
    res[name] = summary(run(name, args))
  import jax

  print(f"\n# Estimation share at K = 8, demo runs — {datetime.date.today()}, jax "
        f"{jax.__version__}, load average {os.getloadavg()[0]:.1f}\n")
  print("| run | rollout FLOPs | estimation FLOPs | train FLOPs | rollout share | estimation "
        "share | problems estimated | rollouts / problem | skipped | kept on training outcomes | "
        "kept as settled | "
        "on-policy rows reused | held-out acc before -> after |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, r in res.items():
    acc = (f"{r['acc_before']:.3f} -> {r['acc_after']:.3f}" if r["acc_after"] is not None
           else "-")
    total = r["rollout"] + r["train"]
    print(f"| {name} | {r['rollout']:.4g} | {r['estimate_flops']:.4g} | {r['train']:.4g} | "
          f"{r['share']:.1%} | {r['estimate_flops'] / total:.1%} | {r['estimated']:.0f} | "
          f"{r['per_problem']:.2f} | {r['skipped']:.0f} | {r['fresh_kept']:.0f} | "
          f"{r['settled_kept']:.0f} | "
          f"{r['reused']:.0f} | {acc} |")
  last = (args.steps - 1) // 25 * 25
  if args.weight_audit:
    print(f"\n## Weight quality after the step-{last} refresh: each run's weights against two fresh "
          f"K = 16 estimates of its step-{last} student, 512 fixed pool problems "
          "(mean +- standard error over problems; bootstrap for the mass shares)\n")
    print("| run | mean abs(w - w_ref) | reference noise mean abs(w_ref2 - w_ref) | frontier mass on "
          "0 < p_ref < 1 | w_ref2's mass there | mean age of the counts (steps) |")
    print("|---|---|---|---|---|---|")
    for name in res:
      a = weight_audit(Path(args.out) / name.replace("+", "_"), last, config(name, args))
      f = lambda v: f"{v[0]:.4f} +- {v[1]:.4f}"
      print(f"| {name} | {f(a['err'])} | {f(a['floor'])} | {f(a['mass'])} | "
            f"{f(a['mass_ref'])} | {a['stale']:.1f} |", flush=True)
  if "skip" in res:
    a = audit(Path(args.out) / "skip", last, config("skip", args))
    print(f"\nskip audit at step {last}: {a['n']} settled problems kept stale estimates; a fresh "
          f"K = 8 estimate leaves {{0, 1}} for {a['left_01']} of them; mean |p_stale - p_fresh| "
          f"= {a['mean_abs']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
