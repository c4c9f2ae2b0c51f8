"""One rollout engine per run: replacing it (an external server) is one class and one config
field, `sample.engine`, and then every rollout of the run goes through it."""

import jax
import numpy as np
import pytest
from flax import nnx

import oracle_rollouts
from paced_jax import train as train_lib
from paced_jax.config import ConfigError, load_config

TINY = "configs/demo.py:tiny"


def test_every_rollout_of_a_run_goes_through_the_configured_engine(tmp_path, monkeypatch):
  """Teacher references, pass-rate estimates, evaluation and on-policy rows (two_stage's
  second half) all sample through `sample.engine`; the student engine is handed the current
  weights before each use, and nothing else in the run samples (sampler.generate is the
  double's own oracle, counted below)."""
  from paced_jax import sampler

  oracle_rollouts.CALLS.clear()
  real, calls = sampler.generate, []

  def counted(*a, **kw):
    calls.append(1)
    return real(*a, **kw)

  monkeypatch.setattr(oracle_rollouts, "generate", counted)
  cfg = load_config(TINY, ["sample.engine=oracle_rollouts:make", "loss.mode=two_stage",
                           "data.reference=teacher", "paced.verifier=oracle_rollouts:half",
                           "train.steps=4", "train.ckpt_every=4",
                           "train.eval_every=4", "paced.refresh_every=2", "eval.samples=3"])
  last = train_lib.train(cfg, tmp_path / "run", progress=False)
  assert last["step"] == 4
  samples = [c for c in oracle_rollouts.CALLS if c["call"] == "sample"]
  # One generate call per prompt of every sample call: nothing sampled around the engine.
  assert len(calls) == sum(len(c["prompts"]) for c in samples)
  by_k = {}
  for c in samples:
    by_k.setdefault(c["rollouts"], []).append(c)
  assert cfg.paced.rollouts == 2 and 2 in by_k  # pass-rate estimates
  assert 3 in by_k  # evaluation (eval.samples=3)
  assert any(len(c["prompts"]) > 8 for c in by_k[1])  # teacher references, the whole pool
  assert any(len(c["prompts"]) <= 8 for c in by_k[1]), "no on-policy rows through the engine"
  assert any(c["call"] == "set_params" for c in oracle_rollouts.CALLS)
  # Every student sample call ran on the weights set just before it.
  last_params = None
  for c in oracle_rollouts.CALLS:
    if c["call"] == "set_params":
      last_params = c["params"]
    elif last_params is not None and c["model"].cfg == cfg.model:
      got = jax.tree.leaves(nnx.state(c["model"]))
      assert all(a is b for a, b in zip(got, jax.tree.leaves(last_params)))
  assert np.isfinite(last["loss"])


def test_a_bad_engine_spec_is_one_line():
  from paced_jax.rollouts import make_engine

  for spec, match in (("nope_module:make", "cannot be loaded"),
                      ("oracle_rollouts:CALLS", "is not callable"),
                      ("oracle_rollouts:OracleRollouts.missing", "cannot be loaded")):
    cfg = load_config(TINY, [f"sample.engine={spec}"])
    with pytest.raises(ConfigError, match=match) as e:
      make_engine(cfg, None, None)
    assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="sample.engine"):
    load_config(TINY, ["sample.engine=static"])
