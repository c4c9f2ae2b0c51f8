"""Screening (estimate_pass_rates(screen=k0)): k0 rollouts for all, K - k0 only where the first
k0 disagree. Same streams as full K; the posterior stays calibrated; the plug-in bias is the
documented formula; one-line errors."""

import math

import numpy as np
import pytest

from paced_jax import sampler as S
from paced_jax.config import ConfigError
from paced_jax.data.schema import Problem
from paced_jax.estimate import estimate_pass_rates
from test_rollouts import PR
from test_sampler import random_model

K, K0 = 8, 3


def _screen(outcomes_NK, k0):
  """(s, n) per problem under the rule, from full-K outcomes in stream order."""
  s0 = outcomes_NK[:, :k0].sum(1)
  go = (s0 > 0) & (s0 < k0)
  return np.where(go, outcomes_NK.sum(1), s0), np.where(go, outcomes_NK.shape[1], k0)


def test_posterior_stays_calibrated_under_screening():
  rng = np.random.default_rng(0)
  p = rng.beta(1.0, 1.0, 400_000)  # the prior the posterior uses (a0 = b0 = 1)
  s, n = _screen(rng.random((p.size, K)) < p[:, None], K0)
  a, b = s + 1.0, n - s + 1.0
  post_mean = a / (a + b)
  post_w = a * b / ((a + b) * (a + b + 1))  # E[p (1 - p)] under Beta(a, b)
  assert post_mean.mean() == pytest.approx(p.mean(), abs=2e-3)
  assert post_w.mean() == pytest.approx((p * (1 - p)).mean(), abs=1e-3)
  assert (n == K0).mean() > 0.3  # the screen really stops a good share of problems


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.5, 0.8, 1.0])
def test_plug_in_bias_is_the_documented_formula(p):
  s0 = np.arange(K0 + 1)[:, None]
  s1 = np.arange(K - K0 + 1)[None]
  pmf = np.vectorize(lambda k, n: math.comb(n, k) * p ** k * (1 - p) ** (n - k))
  prob = pmf(s0, K0) * pmf(s1, K - K0)
  go = (s0 > 0) & (s0 < K0)
  est = np.where(go, (s0 + s1) / K, s0 / K0)
  want = (K - K0) / K * (p ** K0 * (1 - p) - p * (1 - p) ** K0)
  assert (prob * est).sum() - p == pytest.approx(want, abs=1e-12)


@pytest.fixture(scope="module")
def model():
  return random_model("tiny-qwen3")


def test_screened_estimate_is_the_full_estimate_cut_at_k0(model):
  problems = [Problem(f"p{i}", str(i), "") for i in range(len(PR))]
  kw = dict(encode_prompt=lambda p: PR[int(p.prompt)],
            decode=lambda toks: " ".join(map(str, toks)),
            verifier=lambda text, p: int(text.split()[0]) % 4 == 0, rollouts=K, rng=5,
            eos_id=None, pad_id=0, batch_size=8, knobs=S.Knobs(temperature=1.0, max_new_tokens=6),
            budget_buckets=(32,), progress=False, verify_workers=1)
  full = estimate_pass_rates(model, problems, **kw)
  part = estimate_pass_rates(model, problems, screen=K0, **kw)
  outcomes = np.array([r.correct for r in full.rollouts]).reshape(len(PR), K)
  s, n = _screen(outcomes, K0)
  assert 0 < (n == K0).sum() < len(PR)  # some problems stopped, some went on
  np.testing.assert_array_equal(part.successes, s)
  np.testing.assert_array_equal(part.trials, n)
  keep = np.concatenate([np.arange(int(t)) + i * K for i, t in enumerate(n)])
  assert [(r.problem_id, r.index, r.tokens.tolist()) for r in part.rollouts] == [
      (full.rollouts[j].problem_id, full.rollouts[j].index, full.rollouts[j].tokens.tolist())
      for j in keep]
  assert part.generated_tokens < full.generated_tokens  # (FLOPs: a second prefill and drain)
  for bad, match in [(dict(screen=K), "screen_rollouts"), (dict(screen=-1), "screen_rollouts")]:
    with pytest.raises(ConfigError, match=match) as e:
      estimate_pass_rates(model, problems, **(kw | bad))
    assert "\n" not in str(e.value)
