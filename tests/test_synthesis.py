"""Frontier synthesis: generators, the cell table, the round allocation, and generated runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paced_jax.config import ConfigError, GenerateConfig, PacedConfig, load_config
from paced_jax.data.generators import Cell, SyntheticGenerator, prompt_digest
from paced_jax.data.synthetic import partition
from paced_jax.synthesis import CellTable, RoundMaker, allocate, diversity, make_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/demo.py:tiny"
GEN = ["generate.source=synthetic", "generate.tasks=add,sort", "generate.levels=1,2,3,6",
       "generate.per_round=24", "generate.probes_per_cell=2", "generate.heldout_per_cell=2"]


def test_synthetic_generator_is_deterministic_random_access_and_held_out():
  gen = SyntheticGenerator(("add", "mul"), (1, 7))
  assert gen.cells() == (Cell("add", 1), Cell("add", 7), Cell("mul", 1), Cell("mul", 7))
  c = Cell("mul", 7)
  a = gen.make(c, seed=3, start=0, n=6)
  assert a == gen.make(c, seed=3, start=0, n=6)
  assert gen.make(c, seed=3, start=2, n=3) == a[2:5]  # problem i depends on i alone
  assert gen.make(c, seed=4, start=0, n=6) != a
  assert all(partition(p.prompt) == "train" for p in a)
  test = gen.make(c, seed=3, start=0, n=6, split="test")
  assert all(partition(p.prompt) == "test" for p in test)
  assert not {p.prompt for p in test} & {p.prompt for p in a}
  assert {p.metadata["cell"] for p in a} == {"mul/L7"} and {p.difficulty for p in a} == {7}
  assert all(p.solution.endswith("#### " + p.answer) for p in a)
  assert len({p.id for p in a + test}) == 12
  # Levels beyond the default pools' 5 are harder: longer operands.
  assert np.mean([len(p.prompt) for p in a]) > np.mean(
      [len(p.prompt) for p in gen.make(Cell("mul", 1), 3, 0, 6)])


@pytest.mark.parametrize("over, says", [
    (["generate.tasks=add,nope"], "unknown synthetic task(s) 'nope'"),
    (["generate.levels=1,9"], "generate.levels has 9, outside the synthetic suite's levels 1..8"),
])
def test_bad_generator_settings_are_one_line(over, says):
  cfg = load_config(TINY, GEN[:1] + over)
  with pytest.raises(ConfigError, match=r"^[^\n]*$") as e:
    make_generator(cfg.generate)
  assert says in str(e.value)


def test_generate_config_checks():
  for bad, says in ((dict(source="pool"), "generate.source"), (dict(decay=1.0), "decay"),
                    (dict(per_round=0), "per_round"), (dict(tasks=("add", "add")), "twice"),
                    (dict(min_task_share=1.5), "min_task_share")):
    with pytest.raises(ConfigError, match=says):
      GenerateConfig(**bad)


def test_cell_table_decays_counts_by_hand():
  t = CellTable(["a/L1", "a/L2"])
  t.update([2, 0], [4, 4], decay=0.5)
  t.update([4, 1], [4, 4], decay=0.5)
  # s = 0.5 * 2 + 4 = 5, n = 0.5 * 4 + 4 = 6; s = 0.5 * 0 + 1 = 1, n = 6
  np.testing.assert_allclose(t.successes, [5.0, 1.0])
  np.testing.assert_allclose(t.trials, [6.0, 6.0])
  np.testing.assert_allclose(t.pass_rates(), [5 / 6, 1 / 6])
  t.update([0, 0], [0, 0], decay=0.0)  # decay 0: only the latest round counts
  assert t.trials.sum() == 0 and np.isnan(t.pass_rates()).all()
  back = CellTable.from_state(json.loads(json.dumps(t.state())))
  assert back.state() == t.state()


def test_allocation_floor_then_weights_by_hand():
  tasks = ["a", "a", "b", "b"]
  # 20 problems, floor 0.1 * 20 = 2 per task; task b's weights are all 0: its floor is even.
  counts, fallback = allocate([3.0, 1.0, 0.0, 0.0], tasks, 20, 0.1)
  # floor of a by weight: 1.5, 0.5 -> 1, 0 and the remainders tie: the earlier cell -> 2, 0;
  # b: 1, 1; the rest 16 by weight: 12, 4, 0, 0
  assert counts.tolist() == [14, 4, 1, 1] and not fallback
  assert counts.sum() == 20
  counts, fallback = allocate([0.0, 0.0, 0.0, 0.0], tasks, 10, 0.0)
  assert fallback and counts.tolist() == [3, 3, 2, 2]  # uniform over cells
  # A round smaller than the cell count: every task still gets its floor in whole problems,
  # and which cells get the odd problems depends on the tie seed, not on the cell order.
  tasks48 = [t for t in "abcdef" for _ in range(8)]
  per_seed = [allocate(np.zeros(48), tasks48, 32, 0.05, tie_seed=[0, r])[0] for r in range(3)]
  for c in per_seed:
    assert c.sum() == 32 and (c.reshape(6, 8).sum(1) >= 2).all()
  assert not np.array_equal(per_seed[0], per_seed[1])
  # the floor never exceeds an equal share per task
  counts, _ = allocate([1.0, 0.0, 0.0, 0.0], tasks, 10, 1.0)
  assert counts.tolist() == [5, 0, 3, 2]


def test_paced_weights_on_fractional_cell_counts_match_the_definition():
  from paced_jax.frontier import frontier_weights
  from scipy.special import betaln

  s, n = np.array([2.5, 0.0, 6.0]), np.array([5.0, 6.0, 6.0])
  w = frontier_weights(s, n, PacedConfig(weighting="paced"))
  np.testing.assert_allclose(w, [0.25, 0.0, 0.0])
  a, b = s + 1, n - s + 1  # E[p(1-p)] under Beta(a, b) = B(a+1, b+1) / B(a, b)
  post = frontier_weights(s, n, PacedConfig(weighting="paced_posterior"))
  np.testing.assert_allclose(post, np.exp(betaln(a + 1, b + 1) - betaln(a, b)))


def test_round_maker_never_repeats_nor_emits_held_out_and_restores():
  gen = SyntheticGenerator(("mul",), (1,))  # a small cell: ~1000 distinct prompts
  held = gen.make(Cell("mul", 1), 0, 0, 30)  # pretend these train prompts are held out
  maker = RoundMaker(gen, seed=0, heldout=held)
  made = [p for _ in range(5) for p in maker.fresh(Cell("mul", 1), 40)]
  digests = [prompt_digest(p.prompt) for p in made]
  assert len(set(digests)) == len(digests) == 200
  assert not set(digests) & {prompt_digest(p.prompt) for p in held}
  assert maker.repeats > 0  # the first 30 of the stream were skipped, and small-cell repeats
  # A restored maker continues exactly where the saved one stood.
  again = RoundMaker(gen, seed=0, heldout=held)
  again.restore(json.loads(json.dumps(maker.state())))
  assert again.fresh(Cell("mul", 1), 10) == maker.fresh(Cell("mul", 1), 10)


def test_diversity_shares_and_entropy():
  d = diversity(["a/L1", "a/L1", "b/L2", "b/L3"], ["a", "a", "b", "b"], [1, 1, 2, 3])
  assert d["generate/task_share/a"] == 0.5 and d["generate/level_share/L1"] == 0.5
  assert d["generate/entropy"] == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))


def _banded_verifier(tmp_path, monkeypatch):
  """A verifier whose pass rate is set by the cell: levels 1-2 always pass, level 3 half the
  time (by a hash of the response), level 6 never: the band is level 3."""
  (tmp_path / "banded.py").write_text(
      "import hashlib\n"
      "def verify(text, problem):\n"
      "  lv = problem.difficulty\n"
      "  if lv == 3:\n"
      "    return hashlib.md5((text + problem.id).encode()).digest()[0] % 2 == 0\n"
      "  return lv <= 2\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  return ["paced.verifier=banded:verify"]


def test_generated_rounds_put_the_mass_in_the_band(tmp_path, monkeypatch):
  from paced_jax.train import train

  over = GEN + _banded_verifier(tmp_path, monkeypatch) + [
      "paced.rollouts=4", "generate.probes_per_cell=4", "generate.min_task_share=0.1",
      "eval.max_problems=0", "train.steps=3"]
  train(load_config(TINY, over), tmp_path / "run", progress=False)
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  first = next(m for m in rows if "generate/made" in m)
  mass = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("generate_mass/")}
  # p = 1 at L1-L2 and 0 at L6: weight 0; each task's floor and the rest go to its L3 cell.
  assert mass["add/L3"] + mass["sort/L3"] == pytest.approx(1.0)
  assert mass["add/L3"] >= 0.1 and mass["sort/L3"] >= 0.1
  assert first["generate_p/add/L1"] == 1.0 and first["generate_p/sort/L6"] == 0.0
  cells = json.loads((tmp_path / "run" / "passrates" / "round_00000.cells.json").read_text())
  assert cells["names"][0] == "add/L1" and cells["trials"][0] == 16  # 4 probes x 4 rollouts


def test_generated_run_resumes_exactly(tmp_path, monkeypatch):
  from paced_jax.train import train

  over = GEN + _banded_verifier(tmp_path, monkeypatch) + [
      "eval.max_problems=0", "train.steps=6", "train.ckpt_every=2", "paced.refresh_every=2"]
  cfg = load_config(TINY, over)
  whole = train(cfg, tmp_path / "whole", progress=False)
  train(cfg, tmp_path / "cut", progress=False, stop_after=3)  # mid-round, as a preemption
  resumed = train(cfg, tmp_path / "cut", progress=False)
  assert resumed["step"] == whole["step"] == 6
  assert resumed["loss"] == whole["loss"]

  def rounds(wd):
    return [json.loads(p.read_text()) for p in sorted((wd / "passrates").glob("*.cells.json"))]

  assert rounds(tmp_path / "cut") == rounds(tmp_path / "whole")
  metas = [json.loads((tmp_path / d / "checkpoints" / "6" / "meta" / "metadata").read_text())
           for d in ("whole", "cut")]
  assert metas[0]["generate"] == metas[1]["generate"]  # the same problems, table and maker
  # The generator is fixed for a run: another one is refused in one line, nothing written.
  stamp = (tmp_path / "cut" / "config.json").read_text()
  with pytest.raises(ConfigError, match=r"different config \(generate.tasks"):
    train(load_config(TINY, over + ["generate.tasks=add", "train.steps=8"]), tmp_path / "cut",
          progress=False)
  assert (tmp_path / "cut" / "config.json").read_text() == stamp


def _paced(args, cwd, timeout=240):
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("over, says", [
    (["generate.tasks=add,nope"], "unknown synthetic task(s) 'nope'"),
    (["generate.levels=0,3"], "outside the synthetic suite's levels"),
    (["data.reference=teacher"], "data.reference=teacher with generate.source"),
])
def test_generated_bad_input_is_one_line_before_any_model(tmp_path, over, says):
  args = ["train", TINY, "--workdir", str(tmp_path / "wd")]
  for o in GEN + over:
    args += ["--set", o]
  out = _paced(args, ROOT)
  assert out.returncode == 2, out.stderr
  errors = [x for x in out.stderr.splitlines() if x.startswith("paced: error:")]
  assert len(errors) == 1 and says in errors[0], out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "wd" / "checkpoints").exists()


@pytest.mark.slow
def test_generated_run_killed_at_three_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
  import os
  import signal

  from test_fault_injection import VERIFIER, _committed, _params

  (tmp_path / "killer.py").write_text(VERIFIER)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  args = ["train", TINY, "--quiet"]
  for o in GEN + ["paced.verifier=killer:verify", "eval.max_problems=0"]:
    args += ["--set", o]

  def run(wd, **extra):
    out = subprocess.run([sys.executable, "-m", "paced_jax.cli", *args, "--workdir", str(wd)],
                         env={**env, **extra}, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    return out.returncode, out.stderr

  straight, wd = tmp_path / "straight", tmp_path / "killed"
  rc, err = run(straight)
  assert rc == 0, err[-2000:]
  # 8 cells x 2 probes x 2 rollouts = 32 verifier calls per refresh (rounds at steps 0 and 3)
  for kill in ({"PACED_TEST_KILL_CALL": "9"},  # inside the first cell estimate
               {"PACED_FAULT": "save:3"},  # during the save of step 3
               {"PACED_TEST_KILL_CALL": "5"}):  # inside the refresh at step 3
    rc, err = run(wd, **kill)
    assert rc == -signal.SIGKILL, (kill, rc, err[-2000:])
  rc, err = run(wd)
  assert rc == 0, err[-2000:]
  assert _committed(wd)[-1] == 6
  for a, b in zip(_params(straight, 6), _params(wd, 6)):
    np.testing.assert_array_equal(a, b)
  from paced_jax.metrics import read_metrics

  timing = ("steps_per_s", "frontier/estimate_seconds", "generate/make_seconds")
  clean = lambda d: [{k: v for k, v in m.items() if k not in timing} for m in read_metrics(d)]
  assert clean(straight) == clean(wd)
  made = lambda d: sorted(p.read_text() for p in (d / "passrates").glob("*.cells.json"))
  assert made(straight) == made(wd)


def test_a_reasoning_gym_run_trains_on_policy_and_scores_with_the_task(tmp_path, monkeypatch):
  pytest.importorskip("reasoning_gym")
  from paced_jax import synthesis
  from paced_jax.train import train

  scored = []
  real = synthesis.ScoredVerifier.__call__

  def spy(self, text, problem):
    scored.append((problem.metadata["task"], self.gen.score(problem, text)))
    return real(self, text, problem)

  monkeypatch.setattr(synthesis.ScoredVerifier, "__call__", spy)
  over = ["generate.source=gym", "generate.tasks=chain_sum,basic_arithmetic",
          "generate.levels=1,2", "loss.mode=on_policy", "generate.per_round=8",
          "generate.probes_per_cell=1", "generate.heldout_per_cell=1", "train.steps=2",
          "data.max_prompt_len=256", "sample.prompt_buckets=256"]
  out = train(load_config(TINY, over), tmp_path / "run", progress=False)
  assert out["step"] == 2 and "eval/test/chain_sum/L2" in out
  assert {t for t, _ in scored} == {"chain_sum", "basic_arithmetic"}
  assert all(s is not None and 0.0 <= s <= 1.0 for _, s in scored)  # the task's own scorer
  cells = json.loads((tmp_path / "run" / "passrates" / "round_00000.cells.json").read_text())
  assert cells["names"] == ["chain_sum/L1", "chain_sum/L2", "basic_arithmetic/L1",
                            "basic_arithmetic/L2"]


def test_generated_gym_bad_input_is_one_line(tmp_path):
  pytest.importorskip("reasoning_gym")
  for over, says in ((["generate.tasks=chain_sum,nope"], "'nope', not a reasoning-gym task"),
                     (["generate.tasks=chain_sum"], "have no worked solutions")):
    args = ["train", TINY, "--workdir", str(tmp_path / "wd"), "--set", "generate.source=gym"]
    for o in over:
      args += ["--set", o]
    out = _paced(args, ROOT)
    errors = [x for x in out.stderr.splitlines() if x.startswith("paced: error:")]
    assert out.returncode == 2 and len(errors) == 1 and says in errors[0], out.stderr
    assert "Traceback" not in out.stderr
