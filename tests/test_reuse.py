"""paced.reuse_rollouts: a refresh's estimation rollouts serve as on-policy training rows while
fresh, each once, counted once in FLOPs, and a resumed run hands out the same rows."""

import numpy as np
import pytest

from paced_jax.config import ConfigError, load_config
from paced_jax.estimate import Rollout
from paced_jax.metrics import read_metrics
from paced_jax.rollout_data import FreshRollouts

TINY = "configs/demo.py:tiny"


def _rollout(pid, k, n):
  return Rollout(pid, k, np.arange(n, dtype=np.int32) + 10 * k, np.zeros(n, np.float32), "", True)


def test_fresh_rollouts_hand_out_each_once_while_young_and_survive_a_restore(tmp_path):
  f = FreshRollouts(max_age=3)
  rolls = [_rollout("a", 0, 2), _rollout("a", 1, 3), _rollout("b", 0, 4)]
  f.set(1, 10, [7, 7, 9], rolls, tmp_path / "rollouts" / "round_00001.npz")
  assert f.take(7, 10).tolist() == [0, 1]
  state = f.state()
  assert f.take(7, 11).tolist() == [10, 11, 12]
  assert f.take(7, 11) is None  # both used
  assert f.take(9, 13) is None  # 3 steps old: too old
  assert f.take(5, 10) is None  # not estimated
  g = FreshRollouts(max_age=3)  # a resumed run, from the state saved after the first take
  g.restore(state, tmp_path / "rollouts")
  assert g.take(7, 11).tolist() == [10, 11, 12] and g.take(7, 11) is None
  assert g.take(9, 12).tolist() == [0, 1, 2, 3]
  with pytest.raises(ConfigError, match="round_00004.npz is missing"):
    g.restore({"round": 4, "used": {}}, tmp_path / "rollouts")


@pytest.mark.parametrize("over,match", [
    (["paced.reuse_rollouts=3"], "loss.mode=distill trains on no rollouts"),
    (["paced.reuse_rollouts=3", "loss.mode=on_policy", "paced.weighting=uniform"],
     "uniform weighting estimates nothing"),
    (["paced.reuse_rollouts=-1"], "paced.reuse_rollouts=-1 must be >= 0"),
])
def test_reuse_without_rollouts_to_reuse_is_one_line(over, match):
  with pytest.raises(ConfigError, match=match):
    load_config(TINY, over)


ON_POLICY = ["loss.mode=on_policy", "eval.max_problems=0", "paced.refresh_subset=0",
             "train.steps=4", "train.ckpt_every=1", "train.max_to_keep=10"]


def _params(wd, step):
  import jax
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(wd.absolute() / "checkpoints" / str(step) / "params")
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_reuse_replaces_sampling_and_resumes_bit_identically(tmp_path):
  from paced_jax.train import train

  plain, straight, resumed = tmp_path / "plain", tmp_path / "straight", tmp_path / "resumed"
  train(load_config(TINY, ON_POLICY), plain, progress=False)
  cfg = load_config(TINY, ON_POLICY + ["paced.reuse_rollouts=3"])
  train(cfg, straight, progress=False)
  train(cfg, resumed, progress=False, stop_after=2)  # stops inside round 0 (steps 0-2)
  train(cfg, resumed, progress=False)
  m_plain, m = read_metrics(plain), read_metrics(straight)
  reused = [r["rollouts/reused_rows"] for r in m if "rollouts/reused_rows" in r]
  assert len(reused) == 4 and sum(reused) > 0
  last = lambda ms: [r for r in ms if "compute/rollout_flops" in r][-1]["compute/rollout_flops"]
  assert last(m) < last(m_plain)  # reused rows cost no second sampling
  assert (straight / "rollouts" / "round_00001.npz").is_file()
  for a, b in zip(_params(straight, 4), _params(resumed, 4)):
    np.testing.assert_array_equal(a, b)
  assert [r.get("rollouts/reused_rows") for r in read_metrics(resumed) if "loss" in r] == \
      [r.get("rollouts/reused_rows") for r in m if "loss" in r]
