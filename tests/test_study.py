"""The PACED-vs-baselines study script end to end on the tiny config (seconds, not the study)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from paced_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks/pace_vs_baselines.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_flops_to_reach_interpolates():
  curve = [(0.0, 0.2), (10.0, 0.3), (20.0, 0.5)]
  assert study.flops_to_reach(curve, 0.2) == 0.0
  assert study.flops_to_reach(curve, 0.4) == 15.0
  assert study.flops_to_reach(curve, 0.6) is None


def test_study_runs_end_to_end_at_equal_compute(tmp_path):
  out = tmp_path / "study"
  assert study.main(["--config", "configs/demo.py:tiny", "--arms", "uniform", "paced",
                     "--seeds", "0", "--budget-steps", "3", "--eval-every", "2",
                     "--eval-problems", "4", "--refresh-subset", "8", "--snr-problems", "12",
                     "--out", str(out)]) == 0
  res = json.loads((out / "results.json").read_text())
  budget = res["summary"]["budget_flops"]
  runs = {(r["arm"], r["seed"]): r for r in res["runs"]}
  assert sorted(runs) == [("paced", 0), ("uniform", 0)]
  # PACED stops at the first step past the budget uniform set; it pays for its rollouts out
  # of the same budget, uniform spends none.
  for (arm, seed), r in runs.items():
    if (arm, seed) != ("uniform", 0):
      flops = {m["step"]: m["compute/flops"] for m in read_metrics(out / arm / f"seed_{seed}")
               if "compute/flops" in m}
      last = r["steps"] - 1
      assert flops[last] == r["flops"] >= budget > flops.get(last - 1, 0.0)
  assert runs[("uniform", 0)]["rollout_flops"] == 0 < runs[("paced", 0)]["rollout_flops"]
  assert set(res["summary"]["arms"]) == {"uniform", "paced"}
  assert sum(b["n"] for b in res["snr"]["buckets"]) == 12
  table = (out / "results.md").read_text()
  assert "| uniform |" in table and "| paced |" in table
  assert (out / "pace_vs_baselines_accuracy_vs_compute.png").stat().st_size > 0


def test_snr_from_the_gram_matrix_matches_the_definition():
  """||mean g||^2 / mean ||g - mean g||^2, computed directly from the gradients."""
  rng = np.random.default_rng(0)
  G = rng.standard_normal((40, 7)) + np.array([0.5, -0.2, 0, 0, 1.0, 0, 0])
  mean = G.mean(0)
  dev = ((G - mean) ** 2).sum(1).mean()
  want = (mean ** 2).sum() / dev
  snr, snr_u = study._snr(G @ G.T)
  assert snr == pytest.approx(want, rel=1e-12)
  assert snr_u == pytest.approx(want - 1 / 39, rel=1e-12)  # (sq - dev/(n-1))/dev
  # The bootstrap SE shrinks like 1/sqrt(n): 4x the problems, about half the SE.
  big = rng.standard_normal((160, 7)) + np.array([0.5, -0.2, 0, 0, 1.0, 0, 0])
  se_small, se_big = study._snr_se(G @ G.T), study._snr_se(big @ big.T)
  assert 0.3 < se_big / se_small < 0.8
