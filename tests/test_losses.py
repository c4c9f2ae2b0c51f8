"""Divergences: zero iff equal, finite-difference gradients, padding invariance, chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from paced_jax import losses

KINDS = ["forward_kl", "reverse_kl", "jsd", "akl"]
V = 11


def _logits(seed, shape=(2, 5, V)):
  return jax.random.normal(jax.random.key(seed), shape) * 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_zero_iff_equal(kind):
  a, b = _logits(0), _logits(1)
  same = losses.token_divergence(a, a, kind)
  diff = losses.token_divergence(a, b, kind)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert float(diff.min()) > 1e-4


def test_forward_kl_matches_reference():
  a, b = _logits(0), _logits(1)
  p, q = jax.nn.softmax(a), jax.nn.softmax(b)
  want = jnp.sum(p * (jnp.log(p) - jnp.log(q)), -1)
  np.testing.assert_allclose(losses.token_divergence(a, b, "forward_kl"), want, rtol=1e-5)
  np.testing.assert_allclose(losses.token_divergence(b, a, "reverse_kl"), want, rtol=1e-5)


def test_jsd_symmetric_and_limits():
  a, b = _logits(0), _logits(1)
  np.testing.assert_allclose(losses.token_divergence(a, b, "jsd"),
                             losses.token_divergence(b, a, "jsd"), rtol=1e-5)
  j = losses.token_divergence(a, b, "jsd")
  assert float(j.max()) <= np.log(2) + 1e-6  # JSD(0.5) is bounded by log 2
  # GKD convention: beta = 0 is forward KL(teacher || student), beta = 1 reverse KL.
  np.testing.assert_allclose(losses.token_divergence(a, b, "jsd", jsd_beta=0.0),
                             losses.token_divergence(a, b, "forward_kl"), rtol=1e-6)
  np.testing.assert_allclose(losses.token_divergence(a, b, "jsd", jsd_beta=1.0),
                             losses.token_divergence(a, b, "reverse_kl"), rtol=1e-6)


def test_akl_is_a_mix_of_forward_and_reverse():
  a, b = _logits(2), _logits(3)
  f = losses.token_divergence(a, b, "forward_kl")
  r = losses.token_divergence(a, b, "reverse_kl")
  k = losses.token_divergence(a, b, "akl")
  assert bool(jnp.all(k >= jnp.minimum(f, r) - 1e-6)) and bool(jnp.all(k <= jnp.maximum(f, r) + 1e-6))
  # mu -> 1: the head holds every token with mass, so AKL -> forward KL when p has full support.
  np.testing.assert_allclose(losses.token_divergence(a, b, "akl", akl_mu=1.0 + 1e-3), f, rtol=1e-5)


def test_cross_entropy_matches_optax():
  b = _logits(1)
  t = jax.random.randint(jax.random.key(4), (2, 5), 0, V)
  want = optax.softmax_cross_entropy_with_integer_labels(b, t)
  np.testing.assert_allclose(losses.token_divergence(None, b, "ce", targets_BR=t), want, rtol=1e-5)


def test_temperature_scaling():
  a, b = _logits(0), _logits(1)
  t = 2.0
  want = t * t * losses.token_divergence(a / t, b / t, "forward_kl")
  np.testing.assert_allclose(losses.token_divergence(a, b, "forward_kl", temperature=t), want,
                             rtol=1e-5)


def test_traced_kind_equals_static():
  a, b = _logits(0), _logits(1)
  f = jax.jit(lambda k: losses.token_divergence(a, b, k))
  for i, kind in enumerate(KINDS):
    np.testing.assert_allclose(f(jnp.int32(losses.DIVERGENCES.index(kind))),
                               losses.token_divergence(a, b, kind), rtol=1e-6)


def test_top_k_full_support_equals_forward_kl():
  a, b = _logits(0), _logits(1)
  np.testing.assert_allclose(losses.token_divergence(a, b, "forward_kl", teacher_top_k=V),
                             losses.token_divergence(a, b, "forward_kl"), rtol=1e-5, atol=1e-6)
  small = losses.token_divergence(a, b, "forward_kl", teacher_top_k=3)
  assert small.shape == (2, 5) and bool(jnp.all(jnp.isfinite(small)))
  with pytest.raises(ValueError, match="supports only forward_kl"):
    losses.token_divergence(a, b, "reverse_kl", teacher_top_k=3)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences(kind):
  # float32 central differences at eps=1e-2 agree with autodiff to < 1e-4 here; a gradient off
  # by 1% (JSD's directional derivatives are ~0.1) must fail.
  a, b = _logits(0, (1, 2, 5)), _logits(1, (1, 2, 5))
  f = lambda s: jnp.sum(losses.token_divergence(a, s, kind))
  if kind == "akl":
    # AKL's head/tail shares are stop-gradient weights: finite differences must hold them at
    # b, i.e. differentiate w * KL(p||q) + (1 - w) * KL(q||p) with w fixed per token.
    fwd = lambda s: losses.token_divergence(a, s, "forward_kl")
    rev = lambda s: losses.token_divergence(a, s, "reverse_kl")
    assert float(jnp.abs(fwd(b) - rev(b)).min()) > 1e-2
    w = (losses.token_divergence(a, b, "akl") - rev(b)) / (fwd(b) - rev(b))
    assert float(w.min()) > 0.01 and float(w.max()) < 0.99  # both parts carry weight
    held = lambda s: jnp.sum(w * fwd(s) + (1 - w) * rev(s))
    np.testing.assert_allclose(jax.grad(f)(b), jax.grad(held)(b), rtol=1e-4, atol=1e-6)
    f = held
  check_grads(f, (b,), order=1, modes=["rev"], atol=2e-4, rtol=1e-3, eps=1e-2)


def _hidden(seed, B, R, D=8):
  return jax.random.normal(jax.random.key(seed), (B, R, D))


@pytest.mark.parametrize("kind", KINDS + ["ce"])
def test_linear_divergence_is_the_masked_divergence_of_h_at_w(kind):
  B, R, D = 3, 13, 8
  h_t, h_s = _hidden(0, B, R), _hidden(1, B, R)
  w_t, w_s = _hidden(2, 1, D, V)[0], _hidden(3, 1, D, V)[0]
  mask = (jax.random.uniform(jax.random.key(5), (B, R)) > 0.3).astype(jnp.float32)
  tgt = jax.random.randint(jax.random.key(6), (B, R), 0, V)

  def loss(h_s, w_s):
    return losses.normalise(*losses.linear_divergence(h_t, w_t, h_s, w_s, mask, kind,
                                                      targets_BR=tgt))

  def explicit(h_s, w_s):
    tok = losses.token_divergence(h_t @ w_t, h_s @ w_s, kind, targets_BR=tgt)
    return losses.normalise(*losses.masked_sums(tok, mask))

  v0, g0 = jax.value_and_grad(loss, argnums=(0, 1))(h_s, w_s)
  v1, g1 = jax.value_and_grad(explicit, argnums=(0, 1))(h_s, w_s)
  np.testing.assert_allclose(v0, v1, rtol=1e-5)
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_padding_changes_no_loss():
  B, R = 2, 6
  h_t, h_s = _hidden(0, B, R), _hidden(1, B, R)
  w_t, w_s = _hidden(2, 1, 8, V)[0], _hidden(3, 1, 8, V)[0]
  mask = jnp.ones((B, R))
  weights = jnp.array([0.3, 0.7])
  s, c = losses.linear_divergence(h_t, w_t, h_s, w_s, mask, "forward_kl")
  base = (losses.normalise(s, c), losses.normalise(s, c, weights))
  # Pad every row with 5 garbage positions (mask 0) and the batch with a garbage example.
  pad = lambda x, v: jnp.concatenate([x, v], axis=1)
  h_t2 = jnp.concatenate([pad(h_t, 100 * _hidden(7, B, 5)), _hidden(8, 1, R + 5)], 0)
  h_s2 = jnp.concatenate([pad(h_s, -100 * _hidden(9, B, 5)), _hidden(10, 1, R + 5)], 0)
  mask2 = jnp.concatenate([pad(mask, jnp.zeros((B, 5))), jnp.zeros((1, R + 5))], 0)
  s2, c2 = losses.linear_divergence(h_t2, w_t, h_s2, w_s, mask2, "forward_kl")
  np.testing.assert_allclose(s2[:B], s, rtol=1e-5)
  np.testing.assert_allclose(c2, [R, R, 0])
  np.testing.assert_allclose(losses.normalise(s2, c2), base[0], rtol=1e-5)
  np.testing.assert_allclose(losses.normalise(s2, c2, jnp.array([0.3, 0.7, 5.0])), base[1],
                             rtol=1e-5)


def test_scored_positions_align_offsets():
  mask_a = jnp.array([[0, 0, 1, 1, 1, 0, 0]])
  mask_b = jnp.array([[0, 0, 0, 0, 1, 1, 1]])  # same response, longer (privileged) prompt
  ia, va = losses.scored_positions(mask_a, 4)
  ib, vb = losses.scored_positions(mask_b, 4)
  np.testing.assert_array_equal(ia[0, :3], [2, 3, 4])
  np.testing.assert_array_equal(ib[0, :3], [4, 5, 6])
  np.testing.assert_array_equal(va, [[True, True, True, False]])
  np.testing.assert_array_equal(vb, va)
