"""Does generating problems inside the band pay? Generated frontier rounds against fixed pools.

At equal FLOPs (train steps and every rollout: the budget is what `pool_uniform`, seed
--budget-seed, spends in --budget-steps steps), on the synthetic suite with levels 1-8 and the
strong student (configs/assets/demo_student_strong: it masters levels 1-2; levels 6-8 go
beyond it), families --families:

  pool_uniform   a fixed pool of data.synthetic_size problems over levels 1-8, uniform
  pool_paced     the same pool, sampled by p(1-p) of each problem's estimate (today's default)
  gen_uniform    generated rounds, uniform over cells (nothing estimated)
  gen_paced      generated rounds, cells by p(1-p) of their pooled probes
  gen_posterior  generated rounds, cells by E[p(1-p)] under their Beta posterior

Every arm evaluates on the same held-out problems: the suite's test split, --heldout-per-cell
per (family, level) at levels 1-8 (a generated synthetic run evaluates on the suite's own
splits), before and after; forgetting on the probe split (levels 1-2). Differences to
pool_uniform are paired by seed: mean ± standard error over seeds. A finished run
(eval_after.json) is read back, not rerun.

    python benchmarks/synthesis_study.py --config configs/demo.py:tiny --seeds 0 \\
        --budget-steps 2 --heldout-per-cell 1 --out /tmp/syn      # checks the script (~1 min)
    python benchmarks/synthesis_study.py --seeds 0 1 2 3 4 5 --budget-steps 100 \\
        --out runs/synthesis_study --write-results                # the study in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = 8
ARMS = {
    "pool_uniform": ("generate.source=", "paced.weighting=uniform"),
    "pool_paced": ("generate.source=", "paced.weighting=paced"),
    "gen_uniform": ("generate.source=synthetic", "paced.weighting=uniform"),
    "gen_paced": ("generate.source=synthetic", "paced.weighting=paced"),
    "gen_posterior": ("generate.source=synthetic", "paced.weighting=paced_posterior"),
}


def common(args) -> list[str]:
  fam = ",".join(args.families)
  over = ["train.schedule=constant", f"train.steps={args.budget_steps * 3}",
          "train.eval_every=100000", "train.log_every=1", "train.ckpt_every=100000",
          f"data.synthetic_levels={LEVELS}", f"data.synthetic_families={fam}",
          f"data.synthetic_heldout_per_cell={args.heldout_per_cell}",
          f"generate.tasks={fam}", f"generate.levels={','.join(map(str, range(1, LEVELS + 1)))}",
          f"generate.heldout_per_cell={args.heldout_per_cell}",
          f"generate.per_round={args.per_round}",
          f"eval.max_problems={args.heldout_per_cell * len(args.families) * LEVELS}"]
  if args.student:
    over.append(f"train.init_student={args.student}")
  return over + list(args.set)


def run_one(args, arm: str, seed: int, budget: float | None, log) -> dict:
  from paced_jax.config import load_config
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  wd = Path(args.out) / arm / f"seed_{seed}"
  done = wd / "eval_after.json"
  if not done.exists():
    over = common(args) + list(ARMS[arm]) + [f"seed={seed}"]
    if budget is not None:
      over.append(f"train.max_flops={budget!r}")
    else:
      over.append(f"train.steps={args.budget_steps}")
    cfg = load_config(args.config, over)
    want = "synthetic" if arm.startswith("gen_") else ""
    if cfg.generate.source != want:  # every arm runs what its name says
      raise SystemExit(f"arm {arm}: generate.source={cfg.generate.source!r}, expected {want!r}")
    t0 = time.perf_counter()
    train(cfg, wd, progress=False)
    log(f"  {arm:<14} seed {seed}: {time.perf_counter() - t0:6.0f} s")
  rows = read_metrics(wd)
  flops = max((m["compute/flops"], m["step"]) for m in rows if "compute/flops" in m)
  return {"arm": arm, "seed": seed, "flops": flops[0], "steps": flops[1] + 1,
          "before": json.loads((wd / "eval_before.json").read_text()),
          "after": json.loads(done.read_text())}


def stat(vals) -> tuple[float, float]:
  v = np.asarray(vals, float)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarise(results: list[dict], arms, seeds) -> dict:
  by = {(r["arm"], r["seed"]): r for r in results}
  out = {}
  for arm in arms:
    rs = [by[(arm, s)] for s in seeds if (arm, s) in by]
    if not rs:
      continue
    acc = [r["after"]["eval/test/overall"] for r in rs]
    forget = [r["before"]["eval/probe/overall"] - r["after"]["eval/probe/overall"] for r in rs]
    paired = [by[(arm, s)]["after"]["eval/test/overall"]
              - by[("pool_uniform", s)]["after"]["eval/test/overall"]
              for s in seeds if (arm, s) in by and ("pool_uniform", s) in by]
    levels = {lv: stat([r["after"].get(f"eval/test/level_{lv}", np.nan) for r in rs])[0]
              for lv in range(1, LEVELS + 1)}
    out[arm] = {"n": len(rs), "acc": stat(acc), "vs_uniform": stat(paired),
                "forgetting": stat(forget), "levels_after": levels,
                "steps": stat([r["steps"] for r in rs])[0],
                "flops_ratio": stat([r["flops"] for r in rs])[0]}
  before = results[0]["before"]
  out["_before"] = {"acc": before["eval/test/overall"],
                    "levels": {lv: before.get(f"eval/test/level_{lv}", np.nan)
                               for lv in range(1, LEVELS + 1)}}
  return out


def markdown(summary: dict, budget: float, args) -> str:
  lines = [f"Budget {budget:.3g} FLOPs (pool_uniform, {args.budget_steps} steps); "
           f"{len(args.seeds)} seeds; test accuracy avg@4 on "
           f"{args.heldout_per_cell * len(args.families) * LEVELS} problems (levels 1-8), "
           "mean ± SE over seeds; the difference to pool_uniform is paired by seed.", "",
           "| arm | steps | test acc | vs pool_uniform | forgetting (probe) | "
           + " | ".join(f"L{lv}" for lv in range(1, LEVELS + 1)) + " |",
           "|---|---|---|---|---|" + "---|" * LEVELS]
  b = summary["_before"]
  lines.append(f"| start | 0 | {b['acc']:.3f} | | | "
               + " | ".join(f"{b['levels'][lv]:.2f}" for lv in range(1, LEVELS + 1)) + " |")
  for arm, s in summary.items():
    if arm.startswith("_"):
      continue
    (a, ase), (d, dse), (f, fse) = s["acc"], s["vs_uniform"], s["forgetting"]
    verdict = ("" if arm == "pool_uniform" else
               " (level)" if not abs(d) > 2 * dse else " (beyond 2 SE)")
    lines.append(f"| {arm} | {s['steps']:.0f} | {a:.3f} ± {ase:.3f} | "
                 f"{d:+.3f} ± {dse:.3f}{verdict} | {f:+.3f} ± {fse:.3f} | "
                 + " | ".join(f"{s['levels_after'][lv]:.2f}" for lv in range(1, LEVELS + 1))
                 + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--student", default=str(ROOT / "configs/assets/demo_student_strong"))
  p.add_argument("--families", nargs="+", default=["add", "sort"])
  p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--budget-seed", type=int, default=0)
  p.add_argument("--budget-steps", type=int, default=100)
  p.add_argument("--heldout-per-cell", type=int, default=20)
  p.add_argument("--per-round", type=int, default=256)
  p.add_argument("--set", nargs="*", default=[], help="more config overrides, every arm")
  p.add_argument("--out", default="runs/synthesis_study")
  p.add_argument("--write-results", action="store_true",
                 help="write benchmarks/results/synthesis_study.md")
  args = p.parse_args(argv)
  if args.config.startswith("configs/demo.py:tiny"):
    args.student = ""  # the tiny config's random student
  Path(args.out).mkdir(parents=True, exist_ok=True)

  def log(msg):
    print(msg, flush=True)

  ref = run_one(args, "pool_uniform", args.budget_seed, None, log)
  budget = ref["flops"]
  results = [ref] if args.budget_seed in args.seeds else []
  for seed in args.seeds:
    for arm in args.arms:
      if (arm, seed) == ("pool_uniform", args.budget_seed):
        continue
      results.append(run_one(args, arm, seed, budget, log))
  summary = summarise(results, args.arms, args.seeds)
  text = markdown(summary, budget, args)
  print(text)
  (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
  if args.write_results:
    out = ROOT / "benchmarks" / "results" / "synthesis_study.md"
    import platform

    import jax

    env = (f"{platform.machine()} CPU x{__import__('os').cpu_count()}, jax {jax.__version__}, "
           f"{time.strftime('%Y-%m-%d')}")
    shown = list(argv if argv else sys.argv[1:])
    if "--out" in shown:  # where the runs lie is this machine's business
      del shown[shown.index("--out"):shown.index("--out") + 2]
    cmd = "python benchmarks/synthesis_study.py " + " ".join(shown)
    out.write_text("# Generated frontier rounds against fixed pools\n\n"
                   f"`{cmd}` ({env}; runs read back from --out when finished)\n\n{text}\n")
    print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
