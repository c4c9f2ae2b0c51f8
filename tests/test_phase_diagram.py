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
  # The mastered axis: NN% on mastered levels, the rest on the frontier (none on hopeless).
  assert pd.pool_weights("m50", levels, classes) == (0.5, 0.5, 0.0)
  assert pd.pool_weights("today", levels, classes) == pytest.approx((1 / 3,) * 3)
  hist = pd.pool_histogram(levels, (0.5, 0.25, 0.25))
  assert hist == pytest.approx([0.0625 + 0.25, 0, 0.125, 0.125, 0.375 + 0.0625])
  with pytest.raises(SystemExit, match="masters no level"):
    pd.pool_weights("m25", levels, {"mastered": [], "hopeless": [3], "frontier": [2]})


def test_hopeless_axis_pools_hit_their_p0_share_and_hold_the_mastered_share():
  """hNN: the pool's p = 0 share is NN% and its p = 1 share is m0's (checked on the mixed
  histogram, computed here from the definition: per-level shares weighted by the pool)."""
  levels = {"k": 4, "levels": {"1": {"n": 4, "p_mean": 0.95, "hist": [0, 0, 0, 1, 3]},
                               "2": {"n": 4, "p_mean": 0.5, "hist": [1, 0, 2, 0, 1]},
                               "3": {"n": 10, "p_mean": 0.4, "hist": [2, 2, 2, 2, 2]},
                               "4": {"n": 5, "p_mean": 0.01, "hist": [5, 0, 0, 0, 0]}}}
  args = pd.argparse.Namespace(mastered_levels=[], mastered_p=0.85, hopeless_p=0.05)
  classes = pd.classify(levels, args)
  assert classes == {"mastered": [1], "hopeless": [4], "frontier": [2, 3]}

  def shares(w):  # (p = 0 share, p = 1 share) of the pool, from the definition
    per = {1: (0, 3 / 4), 2: (1 / 4, 1 / 4), 3: (2 / 10, 2 / 10), 4: (1, 0)}
    return (sum(x * per[lv][0] for lv, x in zip((1, 2, 3, 4), w)),
            sum(x * per[lv][1] for lv, x in zip((1, 2, 3, 4), w)))

  m0 = pd.pool_weights("m0", levels, classes)
  assert m0 == (0.0, 0.5, 0.5, 0.0)
  p0_m0, p1_m0 = shares(m0)
  assert pd.pool_weights("h0", levels, classes) == m0  # below m0's own p = 0 share: m0
  for nn in (25, 50):
    w = pd.pool_weights(f"h{nn}", levels, classes)
    assert sum(w) == pytest.approx(1) and min(w) >= 0
    assert w[1] == pytest.approx(w[2])  # the frontier levels share equally
    p0, p1 = shares(w)
    assert p0 == pytest.approx(nn / 100) and p1 == pytest.approx(p1_m0)
  # Past what holding the p = 1 share allows, none is held: the p = 1 share falls.
  w = pd.pool_weights("h95", levels, classes)
  assert w[0] == 0 and shares(w)[0] == pytest.approx(0.95) and shares(w)[1] < p1_m0
  weak = dict(levels, levels=dict(levels["levels"], **{"4": {"n": 5, "p_mean": 0.01,
                                                             "hist": [4, 1, 0, 0, 0]}}))
  with pytest.raises(SystemExit, match="more than the hopeless levels have"):
    pd.pool_weights("h90", weak, classes)  # level 4 is at p = 0 for 80% of its problems
  with pytest.raises(SystemExit, match="no level is hopeless"):
    pd.pool_weights("h25", levels, {"mastered": [1], "hopeless": [], "frontier": [2, 3, 4]})


@pytest.mark.slow  # ~40 s: compiles the tiny models' programs
def test_phase_diagram_runs_end_to_end_at_equal_compute(tmp_path):
  out = tmp_path / "pd"
  argv = ["--config", "configs/demo.py:tiny", "--pools", "m0", "m50", "--arms", "uniform",
          "paced", "--seeds", "0", "--budget-steps", "2", "--eval-problems", "30",
          "--heldout-per-cell", "2", "--measure-problems", "1", "--measure-k", "2",
          "--mastered-levels", "1", "--hopeless-p", "-1", "--views", "flops", "--out", str(out)]
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
  assert "## fkl" in table and "| m50 | 1.00 | 0.00 | 4 | paced |" in table  # random student: p = 0
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

  def fake_run_arm(ns, arm, seed, extra, log, check=None, arms=None):
    over = pd.base.common_overrides(ns) + list((arms or pd.base.ARMS)[arm]) + extra
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
  # Teacher references and generated rounds: the resolved config must say what is declared.
  assert pd.undefined("fkl_teacher", "gen_paced") and pd.undefined("fkl_teacher_unverified",
                                                                   "gen_uniform")
  assert pd.undefined("fkl", "gen_paced") is None and pd.undefined("on_policy", "gen_paced") is None
  teacher = ["loss.mode=distill", "paced.weighting=paced", "data.reference=teacher"]
  pd.check_arm(load_config("configs/demo.py:tiny", teacher), "fkl_teacher", "paced")
  for regime, over, what in (
      ("fkl_teacher", teacher[:2], "data.reference=dataset"),
      ("fkl_teacher_unverified", teacher, "data.reference_verify=true"),
      ("fkl", teacher, "data.reference=teacher")):
    with pytest.raises(SystemExit, match=f"in regime {regime}: {what}"):
      pd.check_arm(load_config("configs/demo.py:tiny", over), regime, "paced")
  both = ["loss.mode=distill", "loss.divergence=akl", "paced.weighting=paced"]
  pd.check_arm(load_config("configs/demo.py:tiny", both), "fkl", "akl_paced")
  for over in (both[::2], both[:2] + ["paced.weighting=uniform"]):  # forward KL; uniform
    with pytest.raises(SystemExit, match="arm akl_paced in regime fkl"):
      pd.check_arm(load_config("configs/demo.py:tiny", over), "fkl", "akl_paced")
  gen = ["loss.mode=distill", "paced.weighting=paced", "generate.source=synthetic",
         "data.synthetic_families=add,sort", "generate.tasks=add,sort"]
  pd.check_arm(load_config("configs/demo.py:tiny", gen), "fkl", "gen_paced")
  with pytest.raises(SystemExit, match="generate.source=, declared synthetic"):
    pd.check_arm(load_config("configs/demo.py:tiny", gen[:2]), "fkl", "gen_paced")
  with pytest.raises(SystemExit, match="generates tasks"):
    pd.check_arm(load_config("configs/demo.py:tiny", gen[:4] + ["generate.tasks=add"]), "fkl",
                 "gen_paced")


def test_generated_and_teacher_arms_get_the_pools_problems(monkeypatch, tmp_path):
  """A generated arm makes problems of the pool's families and of the levels the pool weights
  (not others), and is scored on exactly the held-out problems the pool's arms are; teacher
  regimes share one reference cache per pool (every arm of a seed trains on the same teacher
  responses)."""
  from paced_jax.config import load_config
  from paced_jax.evaluate import load_eval_sets

  seen = {}

  def fake_run_arm(ns, arm, seed, extra, log, check=None, arms=None):
    over = pd.base.common_overrides(ns) + list(arms[arm]) + extra
    cfg = load_config("configs/demo.py:tiny", over)
    check(cfg)
    seen[(Path(ns.out).parent.name, Path(ns.out).name, arm)] = cfg
    return {"steps": 2}

  monkeypatch.setattr(pd.base, "run_arm", fake_run_arm)
  args = pd.argparse.Namespace(out=str(tmp_path), k=[4], heldout_per_cell=2, eval_samples=2,
                               set=["data.synthetic_families=add,sort"], budget_steps=2,
                               config="configs/demo.py:tiny", eval_every=1000, eval_problems=100,
                               refresh_subset=0)
  w = (0, 1, 1, 1, 1)
  for pool in ("h25", "h50"):
    for regime, arm in (("fkl", "uniform"), ("fkl", "gen_paced"), ("fkl_teacher", "uniform"),
                        ("fkl_teacher", "paced"), ("fkl_teacher_unverified", "dapo")):
      pd.run_one(args, pool, regime, 4, arm, 0, w, 1e12, print)
  gen, pool_cfg = seen[("h25", "fkl", "gen_paced")], seen[("h25", "fkl", "uniform")]
  assert gen.generate.levels == (2, 3, 4, 5) and gen.generate.tasks == ("add", "sort")
  ids = lambda cfg, split, levels: sorted(
      p.id for es in load_eval_sets(cfg, (split,)) for p in es.problems
      if p.difficulty in levels)
  assert ids(gen, "test", range(9)) == ids(pool_cfg, "test", (2, 3, 4, 5))
  assert len(ids(gen, "test", range(9))) == 2 * 2 * 4  # heldout_per_cell x families x levels
  assert ids(gen, "probe", (2,)) == ids(pool_cfg, "probe", (2,))
  caches = {key: cfg.data.reference_cache for key, cfg in seen.items()
            if cfg.data.reference == "teacher"}
  assert len(caches) == 6
  assert len({c for (pool, _, _), c in caches.items() if pool == "h25"}) == 1
  assert caches[("h25", "fkl_teacher", "paced")] != caches[("h50", "fkl_teacher", "paced")]
  assert not seen[("h25", "fkl_teacher_unverified", "dapo")].data.reference_verify


@pytest.mark.slow  # ~1 min: three tiny runs
def test_hopeless_axis_self_distillation_in_both_views(tmp_path):
  """A hopeless-axis pool reaches the runs, the self_distill regime trains what it declares,
  and the equal-steps view continues the run the budget stopped early (a copy of its workdir,
  resumed without the budget to uniform's step count) while the equal-FLOPs run stays as it
  was; the table and figure carry both views."""
  out = tmp_path / "ha"
  out.mkdir()
  levels = {"k": 2, "levels": {"1": {"n": 2, "p_mean": 1.0, "hist": [0, 0, 2]},
                               "2": {"n": 2, "p_mean": 0.5, "hist": [0, 2, 0]},
                               "3": {"n": 2, "p_mean": 0.25, "hist": [1, 1, 0]},
                               "4": {"n": 2, "p_mean": 0.0, "hist": [2, 0, 0]},
                               "5": {"n": 2, "p_mean": 0.0, "hist": [2, 0, 0]}}}
  (out / "levels.json").write_text(json.dumps(levels))  # measured levels are read back
  argv = ["--config", "configs/demo.py:tiny", "--pools", "h50", "--regimes", "self_distill",
          "--arms", "uniform", "paced", "--seeds", "0", "--budget-steps", "4", "--k", "16",
          "--eval-problems", "20", "--heldout-per-cell", "2", "--out", str(out)]
  assert pd.main(argv) == 0
  res = json.loads((out / "phase_diagram.json").read_text())
  pool = res["pools"]["pools"]["h50"]
  assert pool["p0_share"] == pytest.approx(0.5)
  run = out / "h50" / "self_distill" / "paced" / "seed_0"
  cfg = json.loads((run / "config.json").read_text())
  assert cfg["loss"]["mode"] == "self_distill"
  assert cfg["data"]["synthetic_level_weights"] == pytest.approx(pool["weights"], rel=1e-5)
  flop_steps = {r["arm"]: r["steps"] for r in res["runs"]}
  assert flop_steps["uniform"] == 4 and flop_steps["paced"] < 4  # its estimates cost steps
  cont = out / "h50" / "steps" / "self_distill" / "paced" / "seed_0"
  ccfg = json.loads((cont / "config.json").read_text())
  assert ccfg["train"]["max_flops"] == 0 and ccfg["train"]["steps"] == 4
  steps = {r["arm"]: r["steps"] for r in res["steps_runs"]}
  assert steps == {"uniform": 4, "paced": 4}
  # The continuation resumed the budget run's checkpoint, not a fresh start.
  assert sorted(f.name for f in (cont / "configs").iterdir()) == [
      "0.json", f"{flop_steps['paced']}.json"]
  first = [m for m in read_metrics(cont) if "loss" in m]
  assert min(m["step"] for m in first) == 0 and max(m["step"] for m in first) == 3
  assert (run / "eval_after.json").exists() and not (run / "checkpoints" / "4").exists()
  cell = [c for c in res["summary"]["cells"] if c["arm"] == "paced"][0]
  assert cell["steps_view"]["steps"] == 4 and cell["steps"] == flop_steps["paced"]
  table = (out / "phase_diagram.md").read_text()
  assert "## self_distill" in table and "equal steps: score" in table
  assert "| h50 | 0.50 |" in table
  assert (out / "phase_diagram.png").stat().st_size > 0


def test_equal_steps_view_of_a_run_that_went_past_the_budget_steps(monkeypatch, tmp_path):
  """A run the FLOP budget let go well past uniform's step count (a generated run's shorter
  problems) is run again to that count for the equal-steps view, not read at its own; one a
  few steps past is its own; one short of it is continued from a copy."""
  calls = []

  def fake_run_arm(ns, arm, seed, extra, log, check=None, arms=None):
    calls.append((Path(ns.out), extra))
    return {"steps": 200}

  monkeypatch.setattr(pd.base, "run_arm", fake_run_arm)
  args = pd.argparse.Namespace(out=str(tmp_path), k=[4], heldout_per_cell=2, eval_samples=2,
                               set=[], budget_steps=200, config="configs/demo.py:tiny")
  w = (1, 1, 1, 1, 1)
  own = {"steps": 204}
  assert pd.run_steps(args, "h50", "fkl", 4, "gen_paced", 0, w, own, print) is own
  assert calls == []
  pd.run_steps(args, "h50", "fkl", 4, "gen_paced", 0, w, {"steps": 261}, print)
  out, extra = calls[-1]
  assert "train.max_flops=0" in extra and "train.steps=200" in extra
  assert out == tmp_path / "h50" / "steps" / "fkl" and not (out / "gen_paced").exists()
  src = tmp_path / "h50" / "fkl" / "paced" / "seed_0"
  src.mkdir(parents=True)
  (src / "metrics.jsonl").write_text("")
  pd.run_steps(args, "h50", "fkl", 4, "paced", 0, w, {"steps": 177}, print)
  assert (tmp_path / "h50" / "steps" / "fkl" / "paced" / "seed_0" / "metrics.jsonl").exists()
