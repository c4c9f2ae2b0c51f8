"""Cheaper estimates from the config: GRESO-style skipping of settled problems
(paced.skip_base / skip_floor) and screening (paced.screen_rollouts)."""

import json

import numpy as np
import pytest

from paced_jax import frontier as F
from paced_jax.config import ConfigError, load_config
from paced_jax.metrics import read_metrics

TINY = "configs/demo.py:tiny"


def test_settled_counts_zero_variance_estimates_in_a_row():
  t = F.PassRateTable(["a", "b", "c"])
  t.update(["a", "b", "c"], [0, 2, 1], [2, 2, 2], step=0)  # a: all wrong, b: all right
  t.update(["a", "b", "c"], [0, 1, 2], [2, 2, 2], step=1)
  assert t.settled.tolist() == [2, 0, 1]
  t.update(["a"], [1], [2], step=2, merge="accumulate")  # the new estimate alone decides
  assert t.settled.tolist() == [0, 0, 1]
  t.update(["b"], [3], [3], step=3, merge="accumulate")  # 4 of 5 in total, this one settled
  assert t.settled.tolist() == [0, 1, 1]
  back = F.PassRateTable.from_state_dict(t.state_dict())
  assert back.settled.tolist() == [0, 1, 1]
  old = {k: v for k, v in t.state_dict().items() if k != "settled"}  # an older checkpoint
  assert F.PassRateTable.from_state_dict(old).settled.tolist() == [0, 0, 0]


def test_skip_settled_reestimates_with_probability_max_base_pow_z_floor():
  n = 40_000
  for base, floor in ((0.5, 0.1), (0.8, 0.3), (1.0, 0.1)):
    for z in (0, 1, 2, 5):
      skip = F.skip_settled(np.full(n, z), base, floor, np.random.default_rng(z))
      want = max(base ** z, floor)
      got = 1 - skip.mean()
      assert abs(got - want) <= 4 * np.sqrt(want * (1 - want) / n) + 1e-12, (base, floor, z)


@pytest.mark.parametrize("field,value,match", [
    ("skip_base", 0.0, "paced.skip_base=0.0 must be in (0, 1]"),
    ("skip_floor", 1.5, "paced.skip_floor=1.5 must be in [0, 1]"),
    ("screen_rollouts", 2, "paced.screen_rollouts=2 must be in [0, paced.rollouts)"),
])
def test_bad_knobs_are_one_line(field, value, match):
  with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    load_config(TINY, [f"paced.{field}={value}"])


def _train(tmp_path, monkeypatch, *overrides):
  (tmp_path / "always.py").write_text("def right(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  from paced_jax.train import train

  wd = tmp_path / "run"
  train(load_config(TINY, ["eval.max_problems=0", "paced.verifier=always:right",
                           "paced.refresh_subset=0", "train.steps=9", *overrides]),
        wd, progress=False)
  return wd


def _table(wd, round_):
  return [json.loads(l) for l in (wd / "passrates" / f"round_{round_:05d}.jsonl").open()]


def test_a_round_that_skips_every_problem_estimates_none(tmp_path, monkeypatch):
  wd = _train(tmp_path, monkeypatch, "paced.skip_base=0.001", "paced.skip_floor=0",
              "train.steps=6")
  rounds = [m for m in read_metrics(wd) if "frontier/round" in m]
  N = rounds[0]["frontier/estimated"]
  assert rounds[1]["frontier/skipped"] == N and rounds[1]["frontier/estimated"] == 0
