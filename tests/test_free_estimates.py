"""Nearly free estimates: training outcomes into the table (paced.train_outcomes, fresh_trials),
discounted counts (paced.merge=decay), adaptive K (paced.adaptive_rollouts) and its settled
rule, and the reuse split (paced.reuse_split)."""

import json
import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from paced_jax import frontier as F
from paced_jax import sampler as S
from paced_jax.config import ConfigError, PacedConfig, load_config
from paced_jax.data.schema import Problem
from paced_jax.estimate import Rollout, estimate_pass_rates
from paced_jax.rollout_data import observe_outcomes, split_for_reuse

TINY = "configs/demo.py:tiny"
G = 0.9


# ----------------------------------------------------------------------------- decay


def test_decay_merge_matches_a_hand_computation():
  t = F.PassRateTable(["a", "b"])
  t.update(["a", "b"], [2, 1], [4, 4], step=0, merge="decay", decay=G)
  assert t.fractional and t.successes.dtype == np.float64
  t.update(["a"], [3], [4], step=5, merge="decay", decay=G)
  t.update(["a", "b"], [0, 4], [2, 4], step=7, merge="decay", decay=G)
  # a: ((2 G^5 + 3) G^2 + 0), n ((4 G^5 + 4) G^2 + 2); b: last updated at 0, then at 7.
  want_s = [(2 * G ** 5 + 3) * G ** 2 + 0, 1 * G ** 7 + 4]
  want_n = [(4 * G ** 5 + 4) * G ** 2 + 2, 4 * G ** 7 + 4]
  np.testing.assert_allclose(t.successes, want_s, rtol=1e-12)
  np.testing.assert_allclose(t.trials, want_n, rtol=1e-12)
  np.testing.assert_allclose(t.pass_rates(), np.divide(want_s, want_n))
  assert t.step.tolist() == [7, 7]
  # g = 1 is accumulate; counts only decay forward.
  u = F.PassRateTable(["a"])
  u.update(["a"], [1], [2], step=0, merge="decay", decay=1.0)
  u.update(["a"], [2], [2], step=9, merge="decay", decay=1.0)
  assert u.counts(["a"]) == (3.0, 4.0) or np.allclose(u.counts(["a"]), [[3], [4]])
  with pytest.raises(ValueError, match="only decay forward"):
    t.update(["a"], [1], [1], step=3, merge="decay", decay=G)
  with pytest.raises(ConfigError, match="decay_per_step"):
    t.update(["a"], [1], [1], step=9, merge="decay", decay=0.0)
  # replace and accumulate keep integer tables and refuse fractional counts.
  v = F.PassRateTable(["a"])
  v.update(["a"], [1], [2], step=0, merge="accumulate")
  assert v.successes.dtype == np.int64
  with pytest.raises(ValueError, match="integer counts"):
    v.update(["a"], [0.5], [1], step=1, merge="accumulate")


def test_posterior_weights_use_the_discounted_counts():
  t = F.PassRateTable(["a"])
  t.update(["a"], [0], [8], step=0, merge="decay", decay=0.5)
  t.update(["a"], [1], [2], step=2, merge="decay", decay=0.5)  # s = 1, n = 8/4 + 2 = 4
  cfg = PacedConfig(weighting="paced_posterior")
  s, n = t.counts()
  np.testing.assert_allclose([s[0], n[0]], [1.0, 4.0])
  np.testing.assert_allclose(F.frontier_weights(s, n, cfg), F.posterior_weight(1, 4, 1, 1))
  # plug-in p of a decayed n below 1 is s / n (not s / max(n, 1))
  w = F.frontier_weights([0.3], [0.6], PacedConfig(weighting="paced"))
  np.testing.assert_allclose(w, [0.25])


def test_fractional_tables_survive_checkpoints_exports_and_histograms(tmp_path):
  import orbax.checkpoint as ocp

  t = F.PassRateTable(["a", "b", "c"])
  t.update(["a", "b"], [1, 3], [4, 4], step=0, merge="decay", decay=G)
  t.update(["a"], [2], [4], step=3, merge="decay", decay=G)
  t.observe(["b", "c"], [True, False], step=4)  # pending rides too
  with ocp.StandardCheckpointer() as ck:
    ck.save(tmp_path / "table", t.state_dict())
  with ocp.StandardCheckpointer() as ck:
    back = F.PassRateTable.from_state_dict(ck.restore(tmp_path / "table"))
  assert back.fractional
  np.testing.assert_array_equal(back.successes, t.successes)
  np.testing.assert_array_equal(back.trials, t.trials)
  assert back.pending_trials(5, 10).tolist() == [0, 1, 1]
  t.to_jsonl(tmp_path / "p.jsonl")
  t.to_parquet(tmp_path / "p.parquet")
  for other in (F.PassRateTable.from_jsonl(tmp_path / "p.jsonl"),
                F.PassRateTable.from_parquet(tmp_path / "p.parquet")):
    np.testing.assert_allclose(other.successes, t.successes)
    np.testing.assert_allclose(other.trials, t.trials)
  rec = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
  # report.py reads integer successes / trials: the nearest integers; the exact ones beside.
  assert isinstance(rec["successes"], int) and isinstance(rec["trials"], int)
  assert rec["trials"] == round(4 * G ** 3 + 4) and rec["decayed_trials"] == t.trials[0]
  # Integer tables stay integer in their checkpoint (older checkpoints restore as before).
  assert F.PassRateTable(["x"]).state_dict()["successes"].dtype == np.int64
  # Histograms: the grid of the rounded n, exact s / n binned at the nearest level.
  s, n = np.array([0.0, 1.9, 3.1, 0.2]), np.array([3.9, 3.8, 4.1, 0.3])
  levels = F.pass_rate_levels(n)
  np.testing.assert_allclose(levels, [0, 0.25, 0.5, 0.75, 1.0])
  assert F.level_counts(s, n, levels).tolist() == [1, 0, 1, 2, 0]
  st = F.frontier_stats(s, n, np.full(4, 0.25))
  assert st.n_estimated == 4 and st.frac_p0 == 0.25
  np.testing.assert_allclose(st.mean_p, np.mean(s / n))
  assert F.pass_rate_levels([0.3]).tolist() == [0.0, 1.0]  # n below 1/2 counts as 1


# ----------------------------------------------------------------------------- pending outcomes


def test_pending_outcomes_merge_at_their_own_steps():
  t = F.PassRateTable(["a", "b"])
  t.update(["a", "b"], [1, 0], [2, 2], step=0, merge="decay", decay=G)
  t.observe(["a", "a", "b"], [True, False, True], step=1)
  t.observe(["a"], [True], step=2)
  np.testing.assert_allclose(t.counts()[1], [2, 2])  # nothing merged yet
  assert t.pending_trials(3, 3).tolist() == [3, 1]
  assert t.pending_trials(3, 2).tolist() == [1, 0]  # only step 2 is less than 2 steps old
  seq = F.PassRateTable(["a", "b"])  # the same outcomes merged one step at a time
  seq.update(["a", "b"], [1, 0], [2, 2], step=0, merge="decay", decay=G)
  seq.update(["a", "b"], [1, 1], [2, 1], step=1, merge="decay", decay=G, estimate=False)
  seq.update(["a"], [1], [1], step=2, merge="decay", decay=G, estimate=False)
  seq.update(["a", "b"], [0, 0], [0, 0], step=3, merge="decay", decay=G, estimate=False)
  assert t.merge_pending(3, "decay", G) == (4, 3)
  np.testing.assert_allclose(t.successes, seq.successes, rtol=1e-12)
  np.testing.assert_allclose(t.trials, seq.trials, rtol=1e-12)
  # by hand: a = 1 G^3 + (1 + 0) G^2 + 1 G, n = 2 G^3 + 2 G^2 + G
  np.testing.assert_allclose(t.counts(["a"]), [[G ** 3 + G ** 2 + G], [2 * G ** 3 + 2 * G ** 2 + G]])
  assert t.settled.tolist() == [0, 1]  # training outcomes leave settled alone
  assert t.pending_trials(3, 3).tolist() == [0, 0] and t.merge_pending(4, "decay", G) == (0, 0)
  with pytest.raises(ConfigError, match="paced.merge=decay or accumulate"):
    t.merge_pending(4, "replace")


def test_pending_outcomes_follow_a_reordered_pool():
  t = F.PassRateTable(["a", "b", "c"])
  t.observe(["c", "a"], [True, False], step=0)
  r = t.reindexed(["c", "b", "a"])
  assert r.pending_trials(1, 5).tolist() == [1, 0, 1]
  r.merge_pending(1, "accumulate")
  assert r.counts(["c", "a"])[0].tolist() == [1, 0]


def test_verification_is_off_the_step_and_waited_for_at_refresh_or_save():
  gate = threading.Event()

  def slow(text, problem):
    gate.wait(10)
    return text == problem.answer

  problems = [Problem("a", "x", "1 2"), Problem("b", "y", "3")]
  table = F.PassRateTable(["a", "b"])
  run = SimpleNamespace(problems=problems, verifier=slow, table=table,
                        tokenizer=SimpleNamespace(decode=lambda t: " ".join(map(str, t))),
                        cfg=SimpleNamespace(paced=SimpleNamespace(verify_workers=2)))
  t0 = time.perf_counter()
  observe_outcomes(run, 4, np.array([0, 1, 0]), [np.array([1, 2]), np.array([3]), np.array([9])])
  assert time.perf_counter() - t0 < 1.0  # the verifier is still blocked: nothing waited
  assert table.pending_trials(5, 3).tolist() == [2, 1]
  threading.Timer(0.2, gate.set).start()
  state = table.state_dict()  # a checkpoint waits for the verdicts and keeps them
  assert state["pending_correct"].tolist() == [1, 1, 0]
  assert table.merge_pending(5, "accumulate") == (3, 2)
  assert table.counts()[0].tolist() == [1, 1] and table.counts()[1].tolist() == [2, 1]


# ----------------------------------------------------------------------------- settled / adaptive


def test_early_stopped_unanimous_estimates_are_not_settled():
  t = F.PassRateTable(["a", "b", "c"])
  t.update(["a", "b", "c"], [0, 8, 3], [8, 8, 8], step=0, full_trials=8)
  assert t.settled.tolist() == [1, 1, 0]
  t.update(["a", "b", "c"], [0, 2, 2], [2, 2, 2], step=1, full_trials=8)  # stopped at k0 = 2
  assert t.settled.tolist() == [1, 1, 0]  # unanimous but cut short: neither counts nor resets
  t.update(["a", "b"], [1, 8], [2, 8], step=2, full_trials=8)  # a disagrees: reset
  assert t.settled.tolist() == [0, 2, 0]
  # p = 1/2 under screening with k0 = 2: flagged half the time before, never now.
  rng = np.random.default_rng(0)
  o = rng.random((20_000, 8)) < 0.5
  s0 = o[:, :2].sum(1)
  go = (s0 == 1)
  s, n = np.where(go, o.sum(1), s0), np.where(go, 8, 2)
  ids = [str(i) for i in range(len(s))]
  old, new = F.PassRateTable(ids), F.PassRateTable(ids)
  old.update(ids, s, n, step=0)
  new.update(ids, s, n, step=0, full_trials=8)
  assert 0.45 < (old.settled > 0).mean() < 0.55
  assert (new.settled > 0).mean() < 0.01  # only the rare 8-of-8 unanimous


@pytest.mark.parametrize("s,n,a,b,a0,b0", [(0, 2, 1, 1, 1, 1), (1, 2, 1, 1, 1, 1),
                                           (3, 8, 1, 2, 0.5, 0.5), (6, 6, 1, 1, 1, 1)])
def test_posterior_weight_sd_equals_monte_carlo(s, n, a, b, a0, b0):
  p = np.random.default_rng(1).beta(s + a0, n - s + b0, 2_000_000)
  w = p ** a * (1 - p) ** b
  assert F.posterior_weight_sd(s, n, a, b, a0, b0) == pytest.approx(w.std(), rel=5e-3)


def _adaptive(o, k0, sd, counted=None):
  N, K = o.shape
  c = np.ones(K, bool) if counted is None else counted
  s, n, m = np.zeros(N, np.int64), np.zeros(N, np.int64), np.zeros(N, np.int64)
  live = np.arange(N)
  for lo in range(0, K, k0):
    hi = min(lo + k0, K)
    s[live] += (o[live, lo:hi] & c[lo:hi]).sum(1)
    n[live] += c[lo:hi].sum()
    m[live] += hi - lo
    if hi < K:
      live = live[F.posterior_weight_sd(s[live], n[live], 1, 1) >= sd]
  return s, n, m


@pytest.fixture(scope="module")
def model():
  from test_sampler import random_model

  return random_model("tiny-qwen3")


def _kw():
  from test_rollouts import PR

  problems = [Problem(f"p{i}", str(i), "") for i in range(len(PR))]
  return problems, dict(encode_prompt=lambda p: PR[int(p.prompt)],
                        decode=lambda toks: " ".join(map(str, toks)),
                        verifier=lambda text, p: int(text.split()[0]) % 3 == 0, rollouts=8,
                        rng=5, eos_id=None, pad_id=0, batch_size=8,
                        knobs=S.Knobs(temperature=1.0, max_new_tokens=6), budget_buckets=(32,),
                        progress=False, verify_workers=1)


def test_adaptive_and_split_estimates_are_the_full_estimate_cut_by_the_rule(model):
  problems, kw = _kw()
  full = estimate_pass_rates(model, problems, **kw)
  o = np.array([r.correct for r in full.rollouts]).reshape(len(problems), 8)
  spent = []
  for sd in (0.07, 0.035):
    part = estimate_pass_rates(model, problems, adaptive=2, adaptive_sd=sd, **kw)
    s, n, _ = _adaptive(o, 2, sd)
    np.testing.assert_array_equal(part.successes, s)
    np.testing.assert_array_equal(part.trials, n)
    keep = [(r.problem_id, r.index) for r in part.rollouts]
    assert keep == [(f"p{i}", k) for i in range(len(problems)) for k in range(n[i])]
    spent.append(n)
  assert (spent[0] < 8).all() and (spent[1] == 8).any()  # stopped early; went on to K
  even = np.arange(8) % 2 == 0
  sp = estimate_pass_rates(model, problems, adaptive=2, split=True, **kw)
  s, n, m = _adaptive(o, 2, 0.07, even)
  np.testing.assert_array_equal(sp.successes, s)
  np.testing.assert_array_equal(sp.trials, n)
  assert len(sp.rollouts) == m.sum()
  s_r, n_r, reused = split_for_reuse([p.id for p in problems], sp.rollouts)
  np.testing.assert_array_equal(s_r, s)
  np.testing.assert_array_equal(n_r, n)
  assert reused and all(r.index % 2 == 1 for r in reused)
  with pytest.raises(ConfigError, match="adaptive_rollouts"):
    estimate_pass_rates(model, problems, adaptive=2, screen=3, **kw)
  with pytest.raises(ConfigError, match="k0 must be >= 3"):
    estimate_pass_rates(model, problems, screen=2, split=True, **kw)


def test_every_stage_fills_the_engine_calls_a_full_k_estimate_fills(model):
  """An engine call carries about 16 x batch_size rollouts whatever the stage's width: stages of
  k0 = 2 at K = 8 do not quarter the rows per call (each call pays its slots' tail once)."""
  from paced_jax.rollouts import Engine

  calls = []

  class Counting(Engine):
    def sample(self, prompts, *, rollouts, **kw):
      calls.append(len(prompts) * rollouts)
      return super().sample(prompts, rollouts=rollouts, **kw)

  _, kw = _kw()  # batch_size 8: 128 rows per call
  problems = [Problem(f"p{i}", str(i % 6), "") for i in range(40)]
  eng = Counting(model, slots=8, budget_buckets=(32,))
  estimate_pass_rates(eng, problems, **kw)
  assert calls == [128, 128, 64]
  calls.clear()
  part = estimate_pass_rates(eng, problems, adaptive=2, adaptive_sd=0.0, **kw)
  assert (part.trials == 8).all() and calls == [80] * 4  # 40 problems x 2 per stage, one call


def test_merged_prior_is_the_counts_the_merge_will_see_by_hand():
  t = F.PassRateTable(["a", "b"])
  t.update(["a"], [3], [4], step=2, merge="decay", decay=G)
  s0, n0 = t.merged_prior(["a", "b", "new"], step=7, merge="decay", decay=G)
  np.testing.assert_allclose(s0, [3 * G ** 5, 0, 0])
  np.testing.assert_allclose(n0, [4 * G ** 5, 0, 0])
  assert t.merged_prior(["a"], 7, "replace") is None
  u = F.PassRateTable(["a"])
  u.update(["a"], [1], [6], step=0, merge="accumulate")
  assert [x.tolist() for x in u.merged_prior(["a"], 9, "accumulate")] == [[1.0], [6.0]]


def test_adaptive_stops_on_the_posterior_with_the_prior(model):
  """The rule reads Beta(s0 + s + 1, n0 + n - s + 1): 0 of 2 alone has weight sd 0.078 (go on),
  with a prior of 0 of 20 it is 0.034 (stop after the first stage)."""
  problems, kw = _kw()
  full = estimate_pass_rates(model, problems, **kw)
  o = np.array([r.correct for r in full.rollouts]).reshape(len(problems), 8)
  s0 = np.zeros(len(problems))
  n0 = np.where(np.arange(len(problems)) % 2 == 0, 20.0, 0.0)
  part = estimate_pass_rates(model, problems, adaptive=2, prior=(s0, n0), **kw)
  N, K = o.shape
  s, n = np.zeros(N), np.zeros(N)
  live = np.arange(N)
  for lo in range(0, K, 2):
    s[live] += o[live, lo:lo + 2].sum(1)
    n[live] += 2
    if lo + 2 < K:
      live = live[F.posterior_weight_sd(s[live] + s0[live], n[live] + n0[live], 1, 1) >= 0.07]
  np.testing.assert_array_equal(part.successes, s)  # the new rollouts' counts alone
  np.testing.assert_array_equal(part.trials, n)
  none = (o.sum(1) == 0) & (n0 > 0)
  if none.any():  # 0 of 2 on top of 0 of 20: one stage
    assert (part.trials[none] == 2).all()
  assert part.trials.sum() < estimate_pass_rates(model, problems, adaptive=2, **kw).trials.sum()
  with pytest.raises(ConfigError, match="adaptive rule only"):
    estimate_pass_rates(model, problems, prior=(s0, n0), **kw)
  with pytest.raises(ValueError, match="one \\(successes, trials\\) pair per problem"):
    estimate_pass_rates(model, problems, adaptive=2, prior=(s0[:2], n0[:2]), **kw)


@pytest.mark.parametrize("merge, round1", [("replace", 6), ("accumulate", 2)])
def test_refresh_gives_the_adaptive_rule_the_tables_counts(tmp_path, monkeypatch, merge, round1):
  """Every response right, K = 8, k0 = 2: alone the rule stops at 6 of 6 (w's sd 0.068 < 0.07;
  4 of 4: 0.075). Round 1 under accumulate starts from 6 of 6 and stops after one stage (8 of
  8); under replace the old counts do not count and it takes 6 again."""
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  (tmp_path / "always.py").write_text("def right(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  wd = tmp_path / merge
  train(load_config(TINY, ["eval.max_problems=0", "paced.verifier=always:right",
                           "paced.refresh_subset=0", "train.steps=4", "paced.rollouts=8",
                           "paced.adaptive_rollouts=2", f"paced.merge={merge}"]),
        wd, progress=False)
  rounds = [m for m in read_metrics(wd) if "frontier/round" in m]
  assert [m["frontier/rollouts_per_problem"] for m in rounds] == [6.0, float(round1)]
  r1 = [json.loads(l) for l in (wd / "passrates" / "round_00001.jsonl").open()]
  assert {r["trials"] for r in r1} == {6 + round1 if merge == "accumulate" else 6}


@pytest.mark.parametrize("settled, estimated, per_problem", [(1, "a0a", [6, 2]),
                                                             (0, "aaa", [6, 2, 2])])
def test_decay_leaves_out_problems_their_recent_counts_settle(tmp_path, monkeypatch, settled,
                                                             estimated, per_problem):
  """merge=decay, refreshes at steps 0, 3, 6, every response right: round 0 takes 6 of 6. At
  step 3 the counts are 6 x 0.99^3 = 5.82 of 5.82 (w's sd 0.069 < 0.07), 3 steps old: with
  adaptive_settled = 1 (at most 1 x refresh_every old) no problem is estimated; at step 6 they
  are 6 steps old, so every problem is, and one stage settles it. adaptive_settled = 0: every
  round estimates every problem (one stage after round 0)."""
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  (tmp_path / "always.py").write_text("def right(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  wd = tmp_path / "run"
  train(load_config(TINY, ["eval.max_problems=0", "paced.verifier=always:right",
                           "paced.refresh_subset=0", "train.steps=7", "paced.rollouts=8",
                           "paced.adaptive_rollouts=2", "paced.merge=decay",
                           f"paced.adaptive_settled={settled}"]),
        wd, progress=False)
  rounds = [m for m in read_metrics(wd) if "frontier/round" in m]
  n = rounds[0]["frontier/estimated"]
  assert n > 0 and [m["frontier/estimated"] for m in rounds] == [
      n if c == "a" else 0 for c in estimated]
  assert [m["frontier/rollouts_per_problem"] for m in rounds
          if "frontier/rollouts_per_problem" in m] == per_problem
  if settled:
    assert rounds[1]["frontier/settled_kept"] == n


def test_adaptive_rule_bias_against_the_true_weight():
  """The benchmark's numbers: the rule keeps E[w(s/n)] near w(p) where screening halves it."""
  import importlib.util
  from pathlib import Path

  path = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptive_k.py"
  spec = importlib.util.spec_from_file_location("adaptive_k", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  rng = np.random.default_rng(0)
  o = rng.random((200_000, 8)) < 0.1
  s, n, _ = mod.adaptive(o, 2, 0.07)
  w = (s / n) * (1 - s / n)
  assert abs(w.mean() - 0.09) < 0.01 and n.mean() < 5.5
  s, n, _ = mod.screened(o, 3)
  assert (s / n * (1 - s / n)).mean() < 0.05
  share = mod.reuse_share(0.1, 40_000, 20_000, True, rng)
  assert abs(share - 0.1) < 0.01
  assert mod.reuse_share(0.1, 40_000, 20_000, False, rng, rule=lambda o, sp: mod.screened(
      o, 3, sp)) > 0.3


def test_split_for_reuse_counts_the_even_rollouts():
  rolls = [Rollout(pid, k, np.zeros(1, np.int32), np.zeros(1, np.float32), "", ok)
           for pid, k, ok in [("a", 0, True), ("a", 1, True), ("a", 2, False), ("b", 0, False),
                              ("b", 1, True)]]
  s, n, reused = split_for_reuse(["b", "a"], rolls)
  assert s.tolist() == [0, 1] and n.tolist() == [1, 2]
  assert [(r.problem_id, r.index) for r in reused] == [("a", 1), ("b", 1)]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("over,match", [
    (["paced.train_outcomes=true"], "paced.merge='replace' must be decay or accumulate"),
    (["paced.decay_per_step=0"], r"paced.decay_per_step=0.0 must be in \(0, 1\]"),
    (["paced.fresh_steps=4"], r"paced.fresh_steps=4 must be in \[0, paced.refresh_every\]"),
    (["paced.adaptive_rollouts=2"], r"paced.adaptive_rollouts=2 must be in \[0, paced.rollouts\)"),
    (["paced.rollouts=4", "paced.adaptive_rollouts=2", "paced.screen_rollouts=2"],
     "0 with paced.screen_rollouts"),
    (["paced.rollouts=4", "paced.screen_rollouts=2", "paced.reuse_rollouts=3",
      "loss.mode=on_policy"], "paced.screen_rollouts=2 must be >= 3 with paced.reuse_split"),
])
def test_bad_knobs_are_one_line(over, match):
  with pytest.raises(ConfigError, match=match) as e:
    load_config(TINY, over)
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- whole runs


def _params(wd, step):
  import jax
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(wd.absolute() / "checkpoints" / str(step) / "params")
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_training_outcomes_feed_the_table_and_resume_exactly(tmp_path, monkeypatch):
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  (tmp_path / "parity.py").write_text("def even(text, problem):\n  return len(text) % 2 == 0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  over = ["loss.mode=on_policy", "eval.max_problems=0", "paced.refresh_subset=0",
          "train.steps=7", "train.ckpt_every=1", "train.max_to_keep=10",
          "paced.verifier=parity:even", "paced.rollouts=4", "paced.train_outcomes=true",
          "paced.merge=decay", f"paced.decay_per_step={G}", "paced.fresh_trials=1",
          "paced.reuse_rollouts=1"]  # step 0 of a round reuses, steps 1-2 sample
  cfg = load_config(TINY, over)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train(cfg, straight, progress=False)
  train(cfg, resumed, progress=False, stop_after=2)  # inside round 0: steps 0-1 pending
  train(cfg, resumed, progress=False)
  rounds = [m for m in read_metrics(straight) if "frontier/round" in m]
  N = rounds[0]["frontier/estimated"]
  reused = sum(r.get("rollouts/reused_rows", 0) for r in read_metrics(straight)
               if 0 <= r.get("step", -1) < 3)
  assert rounds[1]["frontier/train_outcomes"] == 3 * 8 - reused > 0
  assert rounds[1]["frontier/fresh_kept"] > 0
  assert rounds[1]["frontier/fresh_kept"] + rounds[1]["frontier/estimated"] == N
  r0 = [json.loads(l) for l in (straight / "passrates" / "round_00000.jsonl").open()]
  assert {r["trials"] for r in r0} == {2}  # reuse_split: rollouts 0 and 2 of 4
  with np.load(straight / "rollouts" / "round_00000.npz") as f:  # 1 and 3 are reused
    assert len(f["index"]) == 2 * N
  r1 = [json.loads(l) for l in (straight / "passrates" / "round_00001.jsonl").open()]
  assert all("decayed_trials" in r for r in r1)
  # Estimated at step 3: 2 G^3 + 2. Kept fresh: 2 G^3 + (outcomes at steps 1, 2: G^2, G each).
  base = {r["id"]: 2 * G ** 3 if r["trials"] else 0.0 for r in r0}
  kept = [r for r in r1 if r["decayed_trials"] != pytest.approx(base[r["id"]] + 2)]
  assert len(kept) == rounds[1]["frontier/fresh_kept"]
  sums = {a * G ** 2 + b * G for a in range(9) for b in range(9) if a + b}
  for r in kept:
    assert any(abs(r["decayed_trials"] - base[r["id"]] - v) < 1e-9 for v in sums), r
    assert r["step"] == 3
  for name in ("round_00001.jsonl", "round_00002.jsonl"):
    assert (straight / "passrates" / name).read_text() == \
        (resumed / "passrates" / name).read_text()
  for a, b in zip(_params(straight, 7), _params(resumed, 7)):
    np.testing.assert_array_equal(a, b)


def test_skipping_counts_only_full_estimates_from_the_config(tmp_path, monkeypatch):
  """Every response right. Without screening each estimate is unanimous with all K: settled,
  and about half (then a quarter) re-estimated. With screening (k0 = 2) every problem stops
  unanimous at 2: cut short, never settled, never skipped (it was skipped before the fix)."""
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  (tmp_path / "always.py").write_text("def right(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))

  def run(name, *over):
    train(load_config(TINY, ["eval.max_problems=0", "paced.verifier=always:right",
                             "paced.refresh_subset=0", "train.steps=7", "paced.rollouts=4",
                             "paced.skip_base=0.5", "paced.skip_floor=0.1", *over]),
          tmp_path / name, progress=False)
    rounds = [m for m in read_metrics(tmp_path / name) if "frontier/round" in m]
    tables = [[json.loads(l) for l in (tmp_path / name / "passrates" /
                                       f"round_{r:05d}.jsonl").open()] for r in range(3)]
    return rounds, tables

  rounds, tables = run("skip")
  N = len(tables[0])
  assert {r["trials"] for r in tables[0]} == {4} and {r["settled"] for r in tables[0]} == {1}
  for m in rounds[1:]:
    assert 0 < m["frontier/skipped"] < N and m["frontier/skipped"] + m["frontier/estimated"] == N
  rounds, tables = run("screen", "paced.screen_rollouts=2")
  assert {r["trials"] for r in tables[0]} == {2}
  assert all(r["settled"] == 0 for t in tables for r in t)
  assert all(m.get("frontier/skipped", 0) == 0 and m["frontier/estimated"] == N
             for m in rounds)


@pytest.mark.parametrize("over, says", [
    (["paced.train_outcomes=true", "paced.merge=decay"], "has nothing to verify"),
    (["paced.train_outcomes=true", "paced.merge=decay", "loss.mode=on_policy",
      "generate.source=synthetic"], "paced.train_outcomes with generate.source"),
])
def test_train_outcomes_where_there_are_none_is_one_line(over, says):
  from paced_jax.config import ConfigError, load_config

  with pytest.raises(ConfigError, match=r"^[^\n]*$") as e:
    load_config("configs/demo.py:tiny", over)
  assert says in str(e.value)
