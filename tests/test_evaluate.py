"""Evaluation against a stub verifier with known outcomes: avg@k per difficulty, the before/after
table and forgetting; `paced report` draws what a run directory holds."""

import json
import re
import threading

import jax
import jax.numpy as jnp
import matplotlib.axes
import numpy as np
import pytest
from flax import nnx

from paced_jax.cli import main
from paced_jax.config import load_config
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import load_tokenizer
from paced_jax.evaluate import EvalSet, accuracy, evaluate, summary_table
from paced_jax.models import Decoder
from paced_jax.sharding import make_mesh

TINY = "configs/demo.py:tiny"

K = 4


class Stub:
  """The first `wins[id]` of every K calls for a problem are correct (whatever the text)."""

  def __init__(self):
    self.wins, self.calls, self.lock = {}, {}, threading.Lock()

  def __call__(self, text, problem):
    with self.lock:
      c = self.calls.get(problem.id, 0)
      self.calls[problem.id] = c + 1
    return c % K < self.wins[problem.id]


@pytest.fixture(scope="module")
def env():
  cfg = load_config("configs/demo.py:tiny", [f"eval.samples={K}"])
  mesh = make_mesh(cfg.mesh)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg.model, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)  # numpy init: eager RNG init is slow on 8 fake devices
  state = jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), state)
  model = nnx.merge(graphdef, state)
  pool = load_pool(cfg.data, "test", seed=cfg.seed)
  by_level = {}
  for i in range(len(pool)):  # two problems of each of five levels
    by_level.setdefault(pool[i].difficulty, [])
    if len(by_level[pool[i].difficulty]) < 2:
      by_level[pool[i].difficulty].append(pool[i])
  problems = [p for level in sorted(by_level) for p in by_level[level]][:10]
  return cfg, mesh, model, load_tokenizer(cfg.data.tokenizer), problems


def test_accuracy_is_avg_at_k_per_difficulty(env):
  cfg, mesh, model, tok, problems = env
  stub = Stub()
  stub.wins = {p.id: i % (K + 1) for i, p in enumerate(problems)}
  acc = accuracy(model, problems, tok, stub, cfg, mesh)
  assert all(stub.calls[p.id] == K for p in problems)  # k samples per problem
  per = np.array([stub.wins[p.id] / K for p in problems])
  levels = np.array([p.difficulty for p in problems])
  assert len(set(levels)) > 1 and 0 < per.mean() < 1
  want = {"overall": per.mean(), **{f"level_{v}": per[levels == v].mean() for v in set(levels)}}
  assert acc.keys() == want.keys()
  for k in want:
    assert acc[k] == pytest.approx(want[k]), k


def test_evaluate_and_forgetting_summary(env):
  cfg, mesh, model, tok, problems = env
  test, probe = problems[:5], problems[5:]
  sets = [EvalSet("test", test), EvalSet("probe", probe)]
  stub = Stub()
  # Before: the probe is mastered (K of K), the test split half solved; after: the test split
  # improved to K - 1 of K, the probe dropped to 1 of K.
  stub.wins = {**{p.id: 2 for p in test}, **{p.id: K for p in probe}}
  before = evaluate(model, sets, tok, stub, cfg, mesh)
  stub.wins = {**{p.id: K - 1 for p in test}, **{p.id: 1 for p in probe}}
  after = evaluate(model, sets, tok, stub, cfg, mesh)
  assert before["eval/test/overall"] == pytest.approx(0.5)
  assert before["eval/probe/overall"] == pytest.approx(1.0)
  assert after["eval/test/overall"] == pytest.approx(0.75)
  assert after["eval/probe/overall"] == pytest.approx(0.25)
  table = summary_table(before, after).splitlines()
  row = next(line for line in table if line.startswith("test/overall"))
  assert [float(x) for x in row.split()[1:]] == [0.5, 0.75, 0.25]
  row = next(line for line in table if line.startswith("probe/overall"))
  assert [float(x) for x in row.split()[1:]] == [1.0, 0.25, -0.75]
  assert table[-1] == "forgetting on the mastered probe: +0.750"  # before - after: forgot


# ----------------------------------------------------------------------------- paced report


def _run_dir(wd):
  rows = [{"step": 0, "eval/test/overall": 0.2, "eval/test/level_1": 0.3,
           "eval/probe/overall": 0.9}]
  mass = {1: [0.5, 0.2, 0.1], 2: [0.3, 0.5, 0.2], 10: [0.2, 0.3, 0.7]}
  for r, step in enumerate((0, 3, 6)):
    rows.append({"step": step, **{f"frontier_mass/level_{v}": m[r] for v, m in mass.items()}})
  rows += [{"step": s, "loss": 5.0 - s} for s in range(6)]
  rows.append({"step": 6, "eval/test/overall": 0.4, "eval/test/level_1": 0.6,
               "eval/probe/overall": 0.8})
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "passrates").mkdir()
  tables = [[(0, 4), (1, 4), (4, 4), (0, 0)], [(3, 4), (3, 4), (2, 4), (0, 4)]]
  for r, recs in enumerate(tables):
    (wd / "passrates" / f"round_{r:05d}.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "successes": s, "trials": n}) + "\n"
        for i, (s, n) in enumerate(recs)))
  return mass, tables


def test_paced_report_draws_the_run_directory(tmp_path, monkeypatch, capsys):
  mass, tables = _run_dir(tmp_path)
  images, lines = [], []
  imshow, plot = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.plot
  monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                      lambda self, x, *a, **k: images.append(np.asarray(x)) or imshow(
                          self, x, *a, **k))
  monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                      lambda self, *a, **k: lines.append((list(a[0]), list(a[1]), k.get(
                          "label"))) or plot(self, *a, **k))
  assert main(["report", str(tmp_path)]) == 0
  out = capsys.readouterr().out.split()
  names = ["accuracy_by_difficulty.png", "frontier_heatmap.png", "passrate_histograms.png",
           "loss.png"]
  assert out == [str(tmp_path / "report" / n) for n in names]
  for n in names:
    assert (tmp_path / "report" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The heat map: levels (in numeric order) x rounds of sampling mass.
  np.testing.assert_allclose(images[0], [mass[1], mass[2], mass[10]])
  # The pass-rate histograms: one column per round, one bin per s/4 (K = 4), as fractions of
  # the round's estimated problems (rows without a step: every estimate counts).
  want = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 2, 0]]).T / [3, 4]
  np.testing.assert_allclose(images[1], want)
  # Accuracy per split/bucket over the steps, and the loss curve.
  acc = {label: (xs, ys) for xs, ys, label in lines if label}
  assert acc == {"test/overall": ([0, 6], [0.2, 0.4]), "test/level_1": ([0, 6], [0.3, 0.6]),
                 "probe/overall": ([0, 6], [0.9, 0.8])}
  assert ([0, 1, 2, 3, 4, 5], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], None) in lines


def test_paced_report_without_metrics_is_one_line(tmp_path, capsys):
  assert main(["report", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert re.fullmatch(r"paced: error: .*has no metrics\.jsonl.*", err)


def test_paced_eval_of_a_checkpoint_equals_the_runs_own_final_eval(tmp_path, capsys):
  # The same weights, the same eval draws: `paced eval --checkpoint RUN/checkpoints/N` scores
  # exactly what `paced train` recorded at step N (they once differed: 0.243 against 0.250).
  from paced_jax.train import train

  train(load_config(TINY), tmp_path / "run", progress=False)
  after = json.loads((tmp_path / "run" / "eval_after.json").read_text())
  capsys.readouterr()
  assert main(["eval", TINY, "--checkpoint", str(tmp_path / "run" / "checkpoints" / "6"),
               "--quiet"]) == 0
  got = json.loads(capsys.readouterr().out)
  assert {k: v for k, v in got.items() if k.startswith("eval/")} == {
      k: v for k, v in after.items() if k.startswith("eval/")}


def test_heat_maps_leave_a_level_or_cell_missing_from_a_round_blank(tmp_path, capsys):
  rows = [{"step": 0, "frontier_mass/level_1": 0.5, "frontier_mass/level_2": 0.5,
           "generate_mass/add/L1": 1.0, "loss": 1.0},
          {"step": 3, "frontier_mass/level_1": 1.0, "generate_mass/add/L1": 0.25,
           "generate_mass/add/L2": 0.75, "loss": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert main(["report", str(tmp_path)]) == 0
  out = capsys.readouterr().out.split()
  assert str(tmp_path / "report" / "frontier_heatmap.png") in out
  assert str(tmp_path / "report" / "generate_heatmap.png") in out
