"""Pool composition: `data.synthetic_level_weights` sets the train pool's share of each level."""

import collections
import dataclasses

import numpy as np
import pytest

from paced_jax.config import ConfigError, DataConfig, apply_overrides
from paced_jax.data import synthetic
from paced_jax.data.synthetic import partition, synthetic_source

BASE = DataConfig(synthetic_size=600, synthetic_levels=5, synthetic_families=("add", "sort"))
SKEWED = dataclasses.replace(BASE, synthetic_level_weights=(5, 3, 2, 0, 0))


def _levels(src, n=None):
  return [src.cell(i)[1] for i in range(n or len(src))]


def test_level_weights_reach_the_pool():
  src = synthetic_source(SKEWED, "train", seed=0)
  problems = [src[i] for i in range(len(src))]
  hist = collections.Counter(p.difficulty for p in problems)
  assert set(hist) == {1, 2, 3}  # zero weight: never drawn
  assert [hist[lv] / len(problems) for lv in (1, 2, 3)] == pytest.approx([0.5, 0.3, 0.2],
                                                                         abs=0.01)
  for fam in ("add", "sort"):  # the families stay round robin, each with the same composition
    mine = [p.difficulty for p in problems if p.metadata["family"] == fam]
    assert len(mine) == 300 and abs(mine.count(1) - 150) <= 2
  prefix = collections.Counter(_levels(src, 60))  # any prefix is balanced, not only the whole
  assert abs(prefix[1] - 30) <= 2 and abs(prefix[3] - 12) <= 2
  assert len({p.id for p in problems}) == len(problems)
  assert problems[0].id == "add1/train/s0/0"  # the id names the cell, as in every pool


def test_default_and_equal_weights_are_todays_round_robin():
  for w in ((), (1, 1, 1, 1, 1), (2.5,) * 5):
    src = synthetic_source(dataclasses.replace(BASE, synthetic_level_weights=w), "train", seed=3)
    assert _levels(src, 10) == [1, 2, 3, 4, 5] * 2
    assert src.level_weights == ()
  # Pinned problems of the default pool (ids and prompts as they were before the knob).
  default = synthetic_source(DataConfig(), "train", seed=0)
  assert [(default[i].id, default[i].prompt) for i in (0, 7, 1999)] == [
      ("add1/train/s0/0", "86+67=?\n"), ("mul3/train/s0/7", "99*21=?\n"),
      ("mod5/train/s0/1999", "7197404%15=?\n")]
  assert synthetic.builder_config_name(DataConfig()) == "n2000_l5_s0"
  same = synthetic_source(dataclasses.replace(DataConfig(), synthetic_level_weights=(1,) * 5))
  assert [same[i] for i in (0, 7, 1999)] == [default[i] for i in (0, 7, 1999)]


def test_a_problem_is_the_same_in_every_pool_that_holds_its_id():
  a = synthetic_source(SKEWED, "train", seed=0)
  b = synthetic_source(BASE, "train", seed=0)
  shared = [i for i in range(100) if a[i].id == b[i].id]
  assert shared and all(a[i] == b[i] for i in shared)


def test_pool_name_includes_composition_and_heldout_size():
  names = {synthetic.builder_config_name(c) for c in (
      BASE, SKEWED, dataclasses.replace(SKEWED, synthetic_level_weights=(5, 3, 2, 0, 1)),
      dataclasses.replace(BASE, synthetic_heldout_per_cell=50))}
  assert len(names) == 4
  assert synthetic.builder_config_name(SKEWED) == "n600_l5_s0_add-sort_w0.5-0.3-0.2-0-0"
  assert synthetic.builder_config_name(  # weights name the shares: (10, 6, 4) is SKEWED's pool
      dataclasses.replace(SKEWED, synthetic_level_weights=(10, 6, 4, 0, 0))) == \
      synthetic.builder_config_name(SKEWED)


def test_heldout_splits_ignore_weights_and_stay_disjoint():
  cfg = dataclasses.replace(SKEWED, synthetic_heldout_per_cell=50)
  train = synthetic_source(cfg, "train", seed=0)
  train_prompts = {train[i].prompt for i in range(len(train))}
  test, probe = synthetic_source(cfg, "test", seed=0), synthetic_source(cfg, "probe", seed=0)
  assert len(test) == 50 * 2 * 5 and len(probe) == 50 * 2 * 2
  counts = collections.Counter(test.cell(i) for i in range(len(test)))
  assert set(counts.values()) == {50} and len(counts) == 10  # every level, weight 0 included
  old = synthetic_source(SKEWED, "test", seed=0)  # the first 40 per cell are today's problems
  assert [test[i] for i in range(0, len(old), 37)] == [old[i] for i in range(0, len(old), 37)]
  for src in (test, probe):
    prompts = {src[i].prompt for i in range(len(src))}
    assert all(partition(p) == src.split for p in prompts) and not prompts & train_prompts


@pytest.mark.parametrize("weights, levels", [((1, 2), 5), ((1, -1, 1, 1, 1), 5),
                                             ((0, 0, 0), 3), ((1, float("nan"), 1), 3),
                                             ((1, float("inf"), 1), 3)])
def test_bad_weights_are_one_line_errors(weights, levels):
  with pytest.raises(ConfigError, match="data.synthetic_level_weights") as e:
    DataConfig(synthetic_levels=levels, synthetic_level_weights=weights)
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="synthetic_heldout_per_cell=-1"):
    DataConfig(synthetic_heldout_per_cell=-1)


def test_weights_from_the_command_line():
  cfg = apply_overrides(DataConfig(), ["synthetic_level_weights=0.5,0.3,0.2,0,0"])
  assert cfg.synthetic_level_weights == (0.5, 0.3, 0.2, 0.0, 0.0)
  assert np.isclose(sum(synthetic.level_weights(cfg)), 1.0)
