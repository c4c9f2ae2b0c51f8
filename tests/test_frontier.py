"""PassRateTable, frontier weights and sampling probabilities, and pass-rate estimation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import beta as beta_fn

from paced_jax import frontier as F
from paced_jax.config import ConfigError, PacedConfig
from paced_jax.data.schema import Problem
from paced_jax.estimate import estimate_pass_rates, plot_frontier
from paced_jax.models import Decoder, get_preset
from paced_jax.sampler import Knobs


def _filled_table():
  t = F.PassRateTable(["a", "b", "c", "d", "é"])
  t.update(["a", "b", "c"], [0, 3, 8], [8, 8, 8], step=10)
  return t


def test_table_update_merge_and_pass_rates():
  t = _filled_table()
  np.testing.assert_allclose(t.pass_rates(["b", "a"]), [3 / 8, 0.0])
  assert np.isnan(t.pass_rates(["d"])[0])
  t.update(["b", "x"], [1, 2], [4, 4], step=20)  # replace; "x" is new
  np.testing.assert_array_equal(t.counts(["b", "x"]), [[1, 2], [4, 4]])
  t.update(["b"], [3], [4], step=30, merge="accumulate")
  np.testing.assert_array_equal(t.counts(["b"]), [[4], [8]])
  t.update(["c", "c"], [1, 2], [4, 4], step=40)  # duplicates in one update are summed
  np.testing.assert_array_equal(t.counts(["c"]), [[3], [8]])
  np.testing.assert_array_equal(t.step[t.rows(["a", "b", "c", "d", "x"])], [10, 30, 40, -1, 20])
  with pytest.raises(ValueError, match="0 <= successes <= trials"):
    t.update(["a"], [5], [4], step=0)
  with pytest.raises(KeyError, match="not in the pass-rate table"):
    t.counts(["zzz"])


def test_table_save_load_export_round_trip(tmp_path):
  t = _filled_table()
  state = t.state_dict()
  assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iu" for v in state.values())
  t.to_jsonl(tmp_path / "p.jsonl")
  t.to_parquet(tmp_path / "p.parquet")
  for back in [F.PassRateTable.from_state_dict(state),
               F.PassRateTable.from_jsonl(tmp_path / "p.jsonl"),
               F.PassRateTable.from_parquet(tmp_path / "p.parquet")]:
    assert back.ids == t.ids
    for name in ("successes", "trials", "step"):
      np.testing.assert_array_equal(getattr(back, name), getattr(t, name))
  first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[1])
  assert first == {"id": "b", "successes": 3, "trials": 8, "pass_rate": 0.375, "step": 10,
                   "settled": 0}
  import pyarrow.parquet as pq
  assert pq.read_table(tmp_path / "p.parquet").column("pass_rate").null_count == 2


def test_state_dict_rides_in_orbax(tmp_path):
  import orbax.checkpoint as ocp

  t = _filled_table()
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "table", t.state_dict())
  with ocp.StandardCheckpointer() as ckpt:
    back = F.PassRateTable.from_state_dict(ckpt.restore(tmp_path / "table"))
  assert back.ids == t.ids
  np.testing.assert_array_equal(back.successes, t.successes)


def test_kernel_and_scheme_weights_at_known_p():
  s, n = np.array([0, 2, 4, 6, 8, 0]), np.array([8, 8, 8, 8, 8, 0])
  p = np.array([0, 0.25, 0.5, 0.75, 1.0])
  w = F.frontier_weights(s, n, PacedConfig(weighting="paced"))
  np.testing.assert_allclose(w[:5], p * (1 - p))
  assert w[5] == pytest.approx(1 / 6)  # unestimated: prior mean of p(1-p) under Beta(1, 1)
  w = F.frontier_weights(s, n, PacedConfig(weighting="paced", alpha=2.0, beta=0.5))
  np.testing.assert_allclose(w[:5], p ** 2 * (1 - p) ** 0.5)
  np.testing.assert_array_equal(F.frontier_weights(s, n, PacedConfig(weighting="uniform")), 1)
  np.testing.assert_array_equal(F.frontier_weights(s, n, PacedConfig(weighting="dapo")),
                                [0, 1, 1, 1, 0, 1])
  np.testing.assert_array_equal(
      F.frontier_weights(s, n, PacedConfig(weighting="band", band_lo=0.3, band_hi=0.75)),
      [0, 0, 1, 1, 0, 1])
  post = F.frontier_weights(s, n, PacedConfig(weighting="paced_posterior"))
  # Beta(s+1, n-s+1): E[p(1-p)] = (s+1)(n-s+1) / ((n+2)(n+3)); never 0 at p in {0, 1}.
  np.testing.assert_allclose(post, (s + 1) * (n - s + 1) / ((n + 2) * (n + 3)))
  assert post[0] > 0 and post[4] > 0
  # Large exponents and counts stay finite (log space) and match the direct ratio.
  big = F.posterior_weight(np.array([4000, 9990]), np.array([10000, 10000]), 50.0, 80.0, 1.0,
                           1.0)
  mpmath = pytest.importorskip("mpmath")
  mpmath.mp.dps = 50  # B(a + alpha, b + beta) / B(a, b) exactly enough: no cancellation
  exact = [float(mpmath.beta(s + 51, 10000 - s + 81) / mpmath.beta(s + 1, 10000 - s + 1))
           for s in (4000, 9990)]
  assert 0 < exact[1] < 1e-150  # deep in the tail, still a normal float64
  np.testing.assert_allclose(big, exact, rtol=1e-9)
  np.testing.assert_allclose(F.kernel_weight(np.array([0.0, 1.0]), 0.0, 0.0), [1.0, 1.0])
  small = F.posterior_weight(np.array([3]), np.array([7]), 2.0, 3.0, 0.5, 1.5)
  np.testing.assert_allclose(small, beta_fn(5.5, 8.5) / beta_fn(3.5, 5.5), rtol=1e-10)


@pytest.mark.parametrize("s,n,a,b,a0,b0", [(0, 4, 1.0, 1.0, 1.0, 1.0), (7, 8, 2.0, 0.5, 0.5, 0.5),
                                           (3, 16, 3.0, 5.0, 2.0, 1.0)])
def test_posterior_weight_equals_monte_carlo(s, n, a, b, a0, b0):
  rng = np.random.default_rng(0)
  draws = rng.beta(s + a0, n - s + b0, size=400_000)
  mc = draws ** a * (1 - draws) ** b
  se = mc.std() / np.sqrt(mc.size)
  closed = F.posterior_weight(s, n, a, b, a0, b0)
  assert abs(closed - mc.mean()) < 4 * se + 1e-12


def test_sampling_probs_eps_and_all_zero_fallback():
  w = np.array([0.0, 1.0, 3.0, 0.0])
  np.testing.assert_allclose(F.sampling_probs(w), [0, 0.25, 0.75, 0])
  pi = F.sampling_probs(w, eps=0.2)
  np.testing.assert_allclose(pi, 0.8 * np.array([0, 0.25, 0.75, 0]) + 0.05)
  assert pi.sum() == pytest.approx(1.0)
  # All weights zero never kills a run: uniform (frontier_round reports the fallback).
  np.testing.assert_allclose(F.sampling_probs(np.zeros(3)), 1 / 3)
  np.testing.assert_allclose(F.sampling_probs(np.zeros(4), eps=0.1), 0.25)
  with pytest.raises(ConfigError, match="empty"):
    F.sampling_probs(np.zeros(0))


def test_frontier_stats():
  s, n = np.array([0, 8, 4, 2, 0]), np.array([8, 8, 8, 8, 0])
  pi = F.sampling_probs(F.frontier_weights(s, n, PacedConfig(weighting="paced")), eps=0.1)
  st = F.frontier_stats(s, n, pi, bins=4)
  assert (st.n_problems, st.n_estimated) == (5, 4)
  assert st.frac_p0 == 0.25 and st.frac_p1 == 0.25
  assert st.mass_p0_p1 == pytest.approx(2 * 0.1 / 5)  # only the eps floor reaches p in {0, 1}
  assert st.ess == pytest.approx(1 / np.sum(pi ** 2))
  assert st.hist_counts == (1, 1, 1, 1) and st.hist_edges == (0.0, 0.25, 0.5, 0.75, 1.0)
  assert F.frontier_stats(s, n, np.full(5, 0.2)).ess_frac == pytest.approx(1.0)
  assert set(st.as_metrics()) >= {"frontier/ess", "frontier/mass_p0_p1"}


def test_config_validation_is_one_line():
  with pytest.raises(ConfigError, match="paced.band_lo"):
    PacedConfig(band_lo=0.9, band_hi=0.1)
  with pytest.raises(ConfigError, match="paced.rollouts"):
    PacedConfig(rollouts=0)


# ----------------------------------------------------------------------------- estimation


def _model():
  # Random weights from numpy: eager RNG init is slow on 8 fake devices (see test_sampler).
  cfg = get_preset("tiny-qwen2")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


def _even_first_token(text, problem):  # "correct" iff the first sampled token id is even
  return int(text.split()[0]) % 2 == 0


def test_estimate_pass_rates_counts_and_overlap(tmp_path):
  model = _model()
  problems = [Problem(id=f"q{i}", prompt="x" * (1 + i % 7), answer="") for i in range(7)]
  encode = lambda p: [3 + (ord(c) % 50) for c in p.prompt] + [1]
  decode = lambda ids: " ".join(str(i) for i in ids) or "0"
  kw = dict(encode_prompt=encode, decode=decode, verifier=_even_first_token, rollouts=2,
            knobs=Knobs(temperature=1.0, max_new_tokens=6), rng=4, eos_id=5, pad_id=0,
            progress=False)
  est = estimate_pass_rates(model, problems, batch_size=8, **kw)
  np.testing.assert_array_equal(est.trials, 2)
  assert len(est.rollouts) == 14
  assert [(r.problem_id, r.index) for r in est.rollouts[:3]] == [("q0", 0), ("q0", 1), ("q1", 0)]
  by_problem = {}
  for r in est.rollouts:
    assert r.correct == (int(r.tokens[0]) % 2 == 0)
    assert 1 <= len(r.tokens) <= 6 and (len(r.tokens) == 6 or r.tokens[-1] == 5)
    by_problem[r.problem_id] = by_problem.get(r.problem_id, 0) + r.correct
  np.testing.assert_array_equal(est.successes, [by_problem[p.id] for p in problems])
  assert 0 < est.successes.sum() < 14
  # Each row's RNG stream is keyed by (problem index, k): a different batch size, same draws.
  again = estimate_pass_rates(model, problems, batch_size=6, **kw)
  assert [r.tokens.tolist() for r in again.rollouts] == [r.tokens.tolist() for r in est.rollouts]

  table = F.PassRateTable(p.id for p in problems)
  table.update([p.id for p in problems], est.successes, est.trials, step=0)
  w = F.frontier_weights(*table.counts(), PacedConfig(weighting="paced_posterior"))
  png = plot_frontier(tmp_path / "report" / "frontier.png", table.pass_rates(), w)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  with pytest.raises(ConfigError, match="empty"):
    estimate_pass_rates(model, [], batch_size=8, **kw)
  with pytest.raises(ConfigError, match="cannot hold"):
    estimate_pass_rates(model, problems, batch_size=1, **kw)
  long = [Problem(id="long", prompt="x" * 400, answer="")]
  with pytest.raises(ConfigError, match="'long' has a prompt of 401 tokens"):
    estimate_pass_rates(model, long, batch_size=8, **kw)
