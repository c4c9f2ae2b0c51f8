"""What frontier synthesis costs on the host: problems made per second, and a round's making
time against the steps it feeds.

1. Problems per second of `Generator.make` for the synthetic suite (every family, levels 1, 5
   and 8) and, when the `gym` extra is installed, three reasoning-gym tasks at their lowest
   and highest levels; and of `RoundMaker.fresh` (the same plus the never-repeat check).
2. A generated run of the embedded default (strong student, levels 1-8, --steps steps,
   refresh every --refresh steps): per round, `generate/make_seconds` (probes and the round's
   problems, made synchronously at the refresh) against the wall time of the round's train
   steps. Making runs between steps, at the refresh, so it delays the round by that share; it
   never runs inside a step.

    python benchmarks/generation_speed.py                 # ~3 min on a 2-core CPU
    python benchmarks/generation_speed.py --steps 0       # part 1 only (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GYM_TASKS = ("chain_sum", "leg_counting", "basic_arithmetic")


def rate(fn, n: int) -> float:
  t0 = time.perf_counter()
  fn(n)
  return n / (time.perf_counter() - t0)


def make_rates(n: int) -> list[tuple[str, str, float]]:
  from paced_jax.data.generators import Cell, SyntheticGenerator
  from paced_jax.synthesis import RoundMaker

  rows = []
  gen = SyntheticGenerator()
  for task in gen.tasks:
    for lv in (1, 5, 8):
      rows.append(("synthetic", f"{task}/L{lv}",
                   rate(lambda k: gen.make(Cell(task, lv), 0, 0, k), n)))
  maker = RoundMaker(gen, 0)
  rows.append(("synthetic", "RoundMaker.fresh, add/L5",
               rate(lambda k: maker.fresh(Cell("add", 5), k), n)))
  try:
    from paced_jax.data.gym import GymGenerator

    gym = GymGenerator(GYM_TASKS)
  except Exception as e:  # noqa: BLE001 -- the extra is optional
    print(f"reasoning-gym rows skipped: {str(e).splitlines()[0]}")
    return rows
  for task in GYM_TASKS:
    levels = sorted(c.level for c in gym.cells() if c.task == task)
    for lv in (levels[0], levels[-1]):
      rows.append(("reasoning-gym", f"{task}/L{lv}",
                   rate(lambda k: gym.make(Cell(task, lv), 0, 0, k), max(n // 10, 20))))
  return rows


def run_rounds(steps: int, refresh: int) -> list[dict]:
  from paced_jax.config import load_config
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  over = ["generate.source=synthetic", f"train.steps={steps}", f"paced.refresh_every={refresh}",
          "train.init_student=" + str(ROOT / "configs/assets/demo_student_strong"),
          "eval.max_problems=0", "train.ckpt_every=100000", "train.log_every=1"]
  with tempfile.TemporaryDirectory() as wd:
    train(load_config(str(ROOT / "configs/demo.py"), over), wd, progress=False)
    rows = read_metrics(wd)
  out = []
  rounds = [m for m in rows if "generate/make_seconds" in m]
  for a, b in zip(rounds, rounds[1:] + [None]):
    end = b["step"] if b else steps
    sps = [m["steps_per_s"] for m in rows if "steps_per_s" in m and a["step"] <= m["step"] < end]
    # steps_per_s is cumulative since the start: the round's steps took about
    # (end - start) / rate at its last step
    step_s = (end - a["step"]) / sps[-1] if sps else float("nan")
    out.append({"step": a["step"], "made": a["generate/made"],
                "make_s": a["generate/make_seconds"], "train_s": step_s,
                "estimate_s": a.get("frontier/estimate_seconds", 0.0)})
  return out


def main(argv=None) -> int:
  import jax

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--problems", type=int, default=2000)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--refresh", type=int, default=20)
  args = p.parse_args(argv)
  print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}")
  print("\n| generator | cell | problems/s |\n|---|---|---|")
  for src, cell, r in make_rates(args.problems):
    print(f"| {src} | {cell} | {r:,.0f} |")
  if args.steps:
    rows = run_rounds(args.steps, args.refresh)
    print("\n| round at step | problems made | making (s) | round's train steps (s) | "
          "making / train |\n|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['step']} | {r['made']:.0f} | {r['make_s']:.3f} | {r['train_s']:.1f} | "
            f"{r['make_s'] / r['train_s']:.2%} |")
    print(json.dumps(rows))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
