"""A checkpoint knows its pool by content: the same problems in another order resume with the
pass rates restored by problem id (and one warning line); an edited answer, a renamed, added or
removed id is one line saying what changed, and nothing is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paced_jax.data.schema import Problem, pool_changes, problem_digests
from paced_jax.frontier import PassRateTable

TINY = "configs/demo.py:tiny"
ROOT = Path(__file__).resolve().parents[1]


def _records(n=24):
  return [{"id": f"q{i}", "prompt": f"{i % 7 + 1}+{i % 5 + 2}=",
           "answer": str(i % 7 + i % 5 + 3), "solution": f"#### {i % 7 + i % 5 + 3}"}
          for i in range(n)]


def _write(path, recs):
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _paced(wd, pool, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "tests"))
  args = ["train", TINY, "--workdir", str(wd), "--quiet", "--set", "data.source=jsonl",
          "--set", f"data.path={pool}", "--set", "eval.max_problems=0", "--set",
          "paced.refresh_subset=0", "--set", "paced.refresh_every=100", "--set",
          "paced.verifier=oracle_rollouts:half", *extra]
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_reindexed_table_follows_ids():
  t = PassRateTable(["a", "b", "c"])
  t.update(["a", "b", "c"], [1, 2, 0], [4, 4, 4], step=3)
  r = t.reindexed(["c", "a", "b"])
  assert r.ids == ["c", "a", "b"]
  np.testing.assert_array_equal(r.counts()[0], [0, 1, 2])
  with pytest.raises(KeyError):
    t.reindexed(["a", "z"])


def test_pool_changes_names_what_changed():
  a = problem_digests([Problem("x", "1+1=", "2"), Problem("y", "2+2=", "4")])
  assert pool_changes(a, dict(reversed(list(a.items())))) is None
  b = problem_digests([Problem("x", "1+1=", "3"), Problem("z", "2+2=", "4")])
  msg = pool_changes(a, b)
  assert "1 ids added (e.g. 'z')" in msg and "1 ids removed (e.g. 'y')" in msg
  assert "1 problems edited" in msg and "'x'" in msg


@pytest.mark.slow  # over 30 s: four subprocess runs
def test_resume_on_a_reordered_or_edited_pool(tmp_path):
  pool, recs = tmp_path / "pool.jsonl", _records()
  _write(pool, recs)
  wd = tmp_path / "run"
  r = _paced(wd, pool, "--set", "train.steps=3")
  assert r.returncode == 0, r.stderr[-2000:]
  saved = {x["id"]: (x["successes"], x["trials"])
           for x in map(json.loads, open(wd / "passrates" / "round_00000.jsonl"))}
  # Same problems, reversed lines: resumes, says so, and round 1 starts from the same table.
  _write(pool, recs[::-1])
  r = _paced(wd, pool, "--set", "train.steps=4")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "another order" in r.stderr and "restored by problem id" in r.stderr
  assert "restarts its round" in r.stderr
  # The restored table is applied by id: problem i of the reordered pool gets its own p.
  from paced_jax import checkpoint as ckpt
  from paced_jax import train as train_lib
  from paced_jax.config import load_config

  cfg = load_config(TINY, ["data.source=jsonl", f"data.path={pool}", "eval.max_problems=0",
                           "paced.refresh_subset=0", "paced.refresh_every=100", "train.steps=4",
                           "paced.verifier=oracle_rollouts:half"])
  run, state = train_lib.setup(cfg, wd, progress=False)
  mgr = ckpt.manager(wd / "checkpoints")
  try:
    train_lib._restore(run, mgr, state)
  finally:
    ckpt.close(mgr)
    run.pipeline.close()
    run.writer.close()
  want = [saved[p.id][0] / saved[p.id][1] if saved[p.id][1] else np.nan for p in run.problems]
  np.testing.assert_allclose(run.pass_rates, want)
  assert len({round(x, 3) for x in want if x == x}) > 1  # not trivially equal in any order
  # An edited answer: refused in one line naming the problem; nothing written.
  edited = [dict(x, answer="999") if x["id"] == "q5" else x for x in recs]
  _write(pool, edited)
  before = (wd / "config.json").read_bytes(), (wd / "metrics.jsonl").read_bytes()
  r = _paced(wd, pool, "--set", "train.steps=5")
  assert r.returncode == 2
  assert "the pool changed since checkpoint" in r.stderr and "1 problems edited" in r.stderr
  assert "'q5'" in r.stderr and "Traceback" not in r.stderr
  assert ((wd / "config.json").read_bytes(), (wd / "metrics.jsonl").read_bytes()) == before
  # A renamed id: the same.
  _write(pool, [dict(x, id="q5b") if x["id"] == "q5" else x for x in recs])
  r = _paced(wd, pool, "--set", "train.steps=5")
  assert r.returncode == 2 and "ids added (e.g. 'q5b')" in r.stderr
  assert saved  # the first round estimated something
