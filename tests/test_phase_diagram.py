"""The phase-diagram study script end to end on the tiny config (not the study: checks the
machinery: pools reach the runs, equal compute per pool, tables and figure, resume)."""

import importlib.util
import json
from pathlib import Path

import pytest

from paced_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("phase_diagram", ROOT / "benchmarks/phase_diagram.py")
pd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pd)


def test_pools_from_measured_levels():
  levels = {"k": 4, "levels": {"1": {"n": 4, "p_mean": 0.95, "hist": [0, 0, 0, 1, 3]},
                               "2": {"n": 4, "p_mean": 0.5, "hist": [1, 0, 2, 0, 1]},
                               "3": {"n": 4, "p_mean": 0.0, "hist": [4, 0, 0, 0, 0]}}}
  args = pd.argparse.Namespace(mastered_levels=[], mastered_p=0.85, hopeless_p=0.05)
  classes = pd.classify(levels, args)
  assert classes == {"mastered": [1], "hopeless": [3], "frontier": [2]}
  assert pd.pool_weights("m50", levels, classes) == (0.5, 0.25, 0.25)
  assert pd.pool_weights("today", levels, classes) == pytest.approx((1 / 3,) * 3)
  hist = pd.pool_histogram(levels, (0.5, 0.25, 0.25))
  assert hist == pytest.approx([0.0625 + 0.25, 0, 0.125, 0.125, 0.375 + 0.0625])
  with pytest.raises(SystemExit, match="masters no level"):
    pd.pool_weights("m25", levels, {"mastered": []})


@pytest.mark.slow  # ~40 s: compiles the tiny models' programs
def test_phase_diagram_runs_end_to_end_at_equal_compute(tmp_path):
  out = tmp_path / "pd"
  argv = ["--config", "configs/demo.py:tiny", "--pools", "m0", "m50", "--arms", "uniform",
          "paced", "--seeds", "0", "--budget-steps", "2", "--eval-problems", "30",
          "--heldout-per-cell", "2", "--measure-problems", "1", "--measure-k", "2",
          "--mastered-levels", "1", "--out", str(out)]
  assert pd.main(argv + ["--snr-problems", "6", "--snr-rollouts", "2"]) == 0
  res = json.loads((out / "phase_diagram.json").read_text())
  assert res["pools"]["pools"]["m50"]["weights"] == [0.5, 0.125, 0.125, 0.125, 0.125]
  runs = {(r["pool"], r["arm"]): r for r in res["runs"]}
  assert sorted(runs) == [("m0", "paced"), ("m0", "uniform"), ("m50", "paced"),
                          ("m50", "uniform")]
  for pool in ("m0", "m50"):
    cfg = json.loads((out / pool / "fkl" / "paced" / "seed_0" / "config.json").read_text())
    assert cfg["data"]["synthetic_level_weights"] == res["pools"]["pools"][pool]["weights"]
    # Equal compute within the pool: PACED stops at the first step past uniform's spend.
    budget = runs[(pool, "uniform")]["flops"]
    flops = {m["step"]: m["compute/flops"] for m in read_metrics(out / pool / "fkl" / "paced"
                                                                 / "seed_0")
             if "compute/flops" in m}
    last = runs[(pool, "paced")]["steps"] - 1
    assert flops[last] >= budget > flops.get(last - 1, 0.0)
  table = (out / "phase_diagram.md").read_text()
  assert "## fkl" in table and "| m50 | 0.00 | 4 | paced |" in table
  assert (out / "phase_diagram.png").stat().st_size > 0
  # Gradient SNR per p bucket for both training losses, on the first pool.
  snr = res["snr"]
  assert snr["pool"] == "m0" and set(snr) >= {"references", "on_policy"}
  for loss in ("references", "on_policy"):
    assert snr[loss]["loss"] == loss
    assert sum(b["n"] for b in snr[loss]["buckets"]) == 6
  assert "## Gradient SNR by pass rate" in table
  assert (out / "phase_diagram_snr.png").stat().st_size > 0
  done = out / "m0" / "fkl" / "paced" / "seed_0" / "eval_after.json"
  stamp = done.stat().st_mtime_ns
  assert pd.main(argv) == 0  # resumed: every run is read, none rerun
  assert done.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("regime,want", [("fkl", "akl"), ("on_policy", "akl")])
def test_an_arms_loss_settings_win_over_the_regime(monkeypatch, tmp_path, regime, want):
  """The akl arm trains with AKL in every regime (the regime's loss.divergence=auto once
  overrode it, so 'akl' ran uniform forward KL)."""
  from paced_jax.config import load_config

  seen = {}

  def fake_run_arm(ns, arm, seed, extra, log, check=None):
    over = pd.base.common_overrides(ns) + list(pd.base.ARMS[arm]) + extra
    seen["cfg"] = load_config("configs/demo.py:tiny", over)
    check(seen["cfg"])  # the script's own check of the arm's declaration passes
    return {"steps": 2}

  monkeypatch.setattr(pd.base, "run_arm", fake_run_arm)
  args = pd.argparse.Namespace(out=str(tmp_path), k=[4], heldout_per_cell=2, eval_samples=2,
                               set=[], budget_steps=2, config="configs/demo.py:tiny",
                               eval_every=1000, eval_problems=10, refresh_subset=0)
  pd.run_one(args, "m0", regime, 4, "akl", 0, (1, 1, 1, 1, 1), 1e12, print)
  cfg = seen["cfg"]
  assert cfg.loss.divergence == want and cfg.loss.mode == {"fkl": "distill"}.get(regime, regime)


def test_arms_undefined_in_a_regime_are_left_out_and_runs_are_checked():
  """A two_stage arm inside the fkl or on_policy regime would train forward KL only (its
  switch past the budget); akl in two_stage is refused by the config: the script leaves both
  out. And a run whose resolved config differs from its arm's declaration stops the sweep."""
  from paced_jax.config import load_config

  assert pd.undefined("fkl", "two_stage") and pd.undefined("on_policy", "two_stage")
  assert pd.undefined("two_stage", "akl")
  assert pd.undefined("two_stage", "two_stage") is None
  assert all(pd.undefined(r, a) is None for r in pd.REGIMES for a in pd.DEFAULT_ARMS
             if not (r == "two_stage" and a == "akl"))
  good = load_config("configs/demo.py:tiny", ["loss.mode=distill", "loss.divergence=akl",
                                              "paced.weighting=uniform"])
  pd.check_arm(good, "fkl", "akl")
  for wrong in (["loss.mode=distill", "paced.weighting=uniform"],  # akl lost: forward KL
                ["loss.mode=distill", "loss.divergence=akl", "paced.weighting=paced"]):
    with pytest.raises(SystemExit, match="arm akl in regime fkl"):
      pd.check_arm(load_config("configs/demo.py:tiny", wrong), "fkl", "akl")
