"""The loop samples by the frontier: after a refresh with a stub verifier of known outcomes, the
problems drawn over the round follow pi; loss-weight mode, refresh_subset, merge=accumulate,
staleness and the loss_by_p buckets against values computed here."""

import hashlib
import threading

import numpy as np
import pytest
from scipy import stats

from paced_jax import train as train_lib
from paced_jax.config import load_config
from paced_jax.distributed import to_host
from paced_jax.metrics import read_metrics

TINY = "configs/demo.py:tiny"


class Stub:
  """Verifier with known outcomes: in its r-th estimate of problem i (K calls each), the first
  s_i(r) = (h_i + shift * r) % (K + 1) calls are correct, whatever the response."""

  def __init__(self, K, shift=0, levels=None):
    self.K, self.shift, self.levels = K, shift, levels
    self.calls, self.lock = {}, threading.Lock()

  def target(self, pid, r=0):
    h = int(hashlib.sha1(pid.encode()).hexdigest(), 16)
    if self.levels is not None:
      return self.levels[h % len(self.levels)]
    return (h + self.shift * r) % (self.K + 1)

  def __call__(self, text, problem):
    with self.lock:
      c = self.calls.get(problem.id, 0)
      self.calls[problem.id] = c + 1
    return c % self.K < self.target(problem.id, c // self.K)


def _run(tmp_path, stub, *over):
  cfg = load_config(TINY, ["eval.max_problems=0", "paced.refresh_subset=0", "paced.eps=0.1",
                           f"paced.rollouts={stub.K}", "data.batch_size=64", *over])
  run, state = train_lib.setup(cfg, tmp_path / "run", progress=False)
  run.verifier = stub
  return run, state


def _draw(run, batches):
  out = [next(run.pipeline) for _ in range(batches)]
  return (np.concatenate([to_host(b["index"]) for b in out]),
          np.concatenate([to_host(b["weights"]) for b in out]))


def _pi(s, K, eps):
  p = s / K
  w = p * (1 - p)
  return (1 - eps) * w / w.sum() + eps / len(w)


def _chi2_pvalue(idx, pi):
  counts = np.bincount(idx, minlength=len(pi))
  return stats.chisquare(counts, len(idx) * pi).pvalue


def test_draws_follow_pi_and_extremes_only_at_eps(tmp_path):
  K = 4
  stub = Stub(K)
  run, state = _run(tmp_path, stub)
  m = train_lib.refresh(run, state, 0, 0, progress=False)
  ids = [p.id for p in run.problems]
  s = np.array([stub.target(i) for i in ids])
  np.testing.assert_array_equal(run.table.counts()[0], s)
  np.testing.assert_array_equal(run.table.counts()[1], K)
  pi = _pi(s, K, 0.1)
  np.testing.assert_allclose(run.pipeline.probs, pi, rtol=1e-9)
  idx, weights = _draw(run, 60)
  assert _chi2_pvalue(idx, pi) > 1e-3
  assert _chi2_pvalue(idx, np.full(len(pi), 1 / len(pi))) < 1e-6  # pi is far from uniform
  np.testing.assert_array_equal(weights, 1.0)  # sampling mode: no loss weights
  # Problems with p in {0, 1} have weight 0: drawn only through the eps floor.
  extreme = (s == 0) | (s == K)
  assert 0 < extreme.sum() < len(s)
  rate = 0.1 * extreme.mean()
  assert m["frontier/mass_p0_p1"] == pytest.approx(rate)
  assert stats.binomtest(int(extreme[idx].sum()), len(idx), rate).pvalue > 1e-3
  assert m["frontier/n_estimated"] == len(s) and m["frontier/round"] == 0


def test_loss_weight_mode_draws_uniformly_with_weights_n_pi(tmp_path):
  K = 4
  stub = Stub(K)
  run, state = _run(tmp_path, stub, "paced.use=loss_weight")
  train_lib.refresh(run, state, 0, 0, progress=False)
  s = np.array([stub.target(p.id) for p in run.problems])
  pi = _pi(s, K, 0.1)
  idx, weights = _draw(run, 40)
  assert _chi2_pvalue(idx, np.full(len(pi), 1 / len(pi))) > 1e-3
  np.testing.assert_allclose(weights, len(pi) * pi[idx], rtol=1e-5)


def test_all_zero_weights_fall_back_to_uniform(tmp_path):
  stub = Stub(2, levels=(0, 2))  # every problem solved always or never: every weight is 0
  run, state = _run(tmp_path, stub, "paced.eps=0.0")
  m = train_lib.refresh(run, state, 0, 0, progress=False)
  np.testing.assert_allclose(run.pipeline.probs, 1 / len(run.problems))
  assert m["frontier/fallback_uniform"] == 1


def test_estimated_problems_all_outside_the_frontier_are_said(tmp_path, caplog):
  # A subset estimate whose every pass rate is in {0, 1}: the round is not uniform (the
  # unestimated problems keep their prior weight), but the run says so once, with a metric.
  stub = Stub(2, levels=(0, 2))
  run, state = _run(tmp_path, stub, "paced.refresh_subset=8")
  with caplog.at_level("WARNING", logger="paced_jax.train"):
    m = train_lib.refresh(run, state, 0, 0, progress=False)
  assert m["frontier/estimated_outside"] == 1 and m["frontier/fallback_uniform"] == 0
  assert sum("every estimated problem has frontier weight 0" in r.message
             for r in caplog.records) == 1
  estimated = run.table.counts()[1] > 0
  assert run.pipeline.probs[estimated].max() < run.pipeline.probs[~estimated].min()


def test_refresh_subset_accumulate_and_staleness(tmp_path):
  K, n = 2, 16
  stub = Stub(K)
  run, state = _run(tmp_path, stub, f"paced.refresh_subset={n}", "paced.merge=accumulate")
  ids = [p.id for p in run.problems]
  train_lib.refresh(run, state, 0, 0, progress=False)
  first = set(stub.calls)
  assert len(first) == n and all(stub.calls[i] == K for i in first)
  m = train_lib.refresh(run, state, 1, 3, progress=False)
  second = {i for i, c in stub.calls.items() if c > (K if i in first else 0)}
  assert len(second) == n and second != first
  times = np.array([(i in first) + (i in second) for i in ids])
  s_want = np.array([stub.target(i) for i in ids]) * times
  np.testing.assert_array_equal(run.table.counts()[0], s_want)  # accumulated, not replaced
  np.testing.assert_array_equal(run.table.counts()[1], K * times)
  want_step = np.where([i in second for i in ids], 3, np.where([i in first for i in ids], 0, -1))
  np.testing.assert_array_equal(run.table.step, want_step)
  seen = first | second
  assert m["frontier/n_estimated"] == len(seen)
  # Staleness: mean steps since the last estimate over estimated problems.
  assert m["frontier/staleness"] == pytest.approx(3 * len(first - second) / len(seen))


def _buckets(p, ex):
  out = {}
  for name, sel in (("0.0-0.0", p == 0), ("0.0-0.5", (p > 0) & (p < 0.5)),
                    ("0.5-1.0", (p >= 0.5) & (p < 1)), ("1.0-1.0", p == 1)):
    if sel.any():
      out[f"loss_by_p/{name}"] = float(ex[sel].mean())
  return out


def test_loss_by_p_uses_the_pass_rates_of_the_step(tmp_path, monkeypatch):
  # Outcomes change every round, so step 2 (read back after round 1's refresh, ckpt_every
  # large) would see other pass rates if the buckets were read at readback time.
  K = 4
  stub = Stub(K, shift=1)
  seen = []
  setup = train_lib.setup

  def recording_setup(cfg, wd, **kw):
    run, state = setup(cfg, wd, **kw)
    run.verifier, step_fn = stub, run.step_fn

    def step(state, tparams, batch):
      p = run.table.pass_rates()[to_host(batch["index"])]
      state, metrics = step_fn(state, tparams, batch)
      seen.append((p, metrics["example_loss"]))
      return state, metrics
    run.step_fn = step
    return run, state

  monkeypatch.setattr(train_lib, "setup", recording_setup)
  cfg = load_config(TINY, ["eval.max_problems=0", "paced.refresh_subset=0", "paced.eps=1.0",
                           f"paced.rollouts={K}", "train.ckpt_every=100", "train.log_every=1"])
  train_lib.train(cfg, tmp_path / "run", progress=False)
  rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "loss" in r}
  assert sorted(rows) == list(range(6)) and len(seen) == 6
  for step, (p, ex) in enumerate(seen):
    want = _buckets(p, to_host(ex))
    got = {k: v for k, v in rows[step].items() if k.startswith("loss_by_p/")}
    assert set(got) == set(want), step
    for k in want:
      assert got[k] == pytest.approx(want[k], rel=1e-6), (step, k)
  # The buckets were not trivially one: p spreads over several of them.
  assert len({k for r in rows.values() for k in r if k.startswith("loss_by_p/")}) == 4


def test_refresh_order_thinnest_estimates_the_fewest_discounted_trials(tmp_path):
  # paced.refresh_order=thinnest: each refresh estimates the refresh_subset problems with the
  # fewest discounted trials (g^age n, computed here), never-estimated first; not a random
  # subset (run beside it on the same pool).
  K, n, g = 2, 16, 0.5
  stub = Stub(K)
  run, state = _run(tmp_path, stub, f"paced.refresh_subset={n}", "paced.merge=decay",
                    f"paced.decay_per_step={g}", "paced.refresh_order=thinnest")
  ids = [p.id for p in run.problems]
  train_lib.refresh(run, state, 0, 0, progress=False)
  assert len(stub.calls) == n
  for round_, step in ((1, 1), (2, 3), (3, 4)):
    if round_ == 2:
      never_thin = int((run.table.step < 0).sum())  # after two rounds
    _, trials = run.table.counts()
    rows = run.table.rows(ids)
    age = np.where(run.table.step >= 0, step - run.table.step, 0)[rows]
    thin = g ** age * trials[rows]
    before = dict(stub.calls)
    train_lib.refresh(run, state, round_, step, progress=False)
    chosen = np.array([stub.calls.get(i, 0) > before.get(i, 0) for i in ids])
    assert chosen.sum() == n
    assert thin[chosen].max() <= thin[~chosen].min() + 1e-9, (round_, thin[chosen].max(),
                                                             thin[~chosen].min())
    if round_ == 3:  # every problem estimated by now: the order is by age, not by never/ever
      assert thin[~chosen].max() > thin[chosen].max() + 1e-3
  run2, state2 = _run(tmp_path / "random", Stub(K), f"paced.refresh_subset={n}",
                      "paced.merge=decay", f"paced.decay_per_step={g}")
  for round_, step in ((0, 0), (1, 1)):
    train_lib.refresh(run2, state2, round_, step, progress=False)
  assert never_thin == len(ids) - 2 * n < int((run2.table.step < 0).sum())  # random repeats


def test_refresh_order_thinnest_needs_a_subset():
  from paced_jax.config import ConfigError
  with pytest.raises(ConfigError, match="paced.refresh_order"):
    load_config(TINY, ["paced.refresh_subset=0", "paced.refresh_order=thinnest"])
