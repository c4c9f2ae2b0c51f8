"""Model numerics: cached decode == full forward, causality, packing, remat, RoPE scaling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax.config import RopeScaling
from paced_jax.models import Decoder, get_preset
from paced_jax.models.transformer import rope_inv_freq

ARCHS = ["tiny-qwen2", "tiny-qwen3", "tiny-llama"]


def _model(name, **kw):
  return Decoder(get_preset(name, **kw), rngs=nnx.Rngs(0))


def _randomize_biases_and_norms(model, seed=1):
  # Init sets biases to 0 and norm scales to 1; make them non-trivial so a bug in their use shows.
  rng = np.random.default_rng(seed)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param) and var.ndim <= 2 and path[-1] in ("bias", "scale"):
      var[...] = var[...] + 0.3 * jnp.asarray(rng.standard_normal(var.shape), var.dtype)


@pytest.mark.parametrize("name", ARCHS)
def test_cached_decode_matches_full_forward(name):
  model = _model(name)
  _randomize_biases_and_norms(model)
  V = model.cfg.vocab_size
  lengths = np.array([3, 8, 5, 1])
  B, P_len, new = len(lengths), 8, 5
  rng = np.random.default_rng(0)
  seqs = rng.integers(0, V, size=(B, P_len + new))
  prompts = np.zeros((B, P_len), np.int32)
  for b, n in enumerate(lengths):
    prompts[b, :n] = seqs[b, :n]

  extend = nnx.jit(lambda m, t, c, n=None: m.extend(t, c, n))
  cache = model.init_cache(B, P_len + new)
  logits_BTV, cache = extend(model, jnp.asarray(prompts), cache, jnp.asarray(lengths))
  got = [[logits_BTV[b, n - 1]] for b, n in enumerate(lengths)]
  for i in range(new - 1):
    # Teacher-forced continuation: row b's next token is seqs[b, len_b + i].
    nxt = jnp.asarray([seqs[b, n + i] for b, n in enumerate(lengths)], jnp.int32)[:, None]
    step_logits, cache = extend(model, nxt, cache)
    for b in range(B):
      got[b].append(step_logits[b, 0])
  np.testing.assert_array_equal(np.asarray(cache.end_B), lengths + new - 1)

  # One full forward: row b holds its own sequence, right-padded (causality keeps pads unseen).
  full_BT = np.zeros((B, P_len + new - 1), np.int32)
  for b, n in enumerate(lengths):
    full_BT[b, :n + new - 1] = seqs[b, :n + new - 1]
  full = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(full_BT))
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(np.stack(got[b]), full[b, n - 1:n + new - 1], atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_causality(name):
  model = _model(name)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, model.cfg.vocab_size)
  t = 6
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % model.cfg.vocab_size)
  fwd = nnx.jit(lambda m, t: m(t))
  a, b = fwd(model, tokens), fwd(model, changed)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert float(jnp.abs(a[:, t:] - b[:, t:]).max()) > 1e-4


def test_packed_segments_equal_separate_sequences():
  model = _model("tiny-qwen2")
  rng = np.random.default_rng(3)
  s1, s2 = rng.integers(0, 128, 5), rng.integers(0, 128, 7)
  packed = jnp.asarray(np.concatenate([s1, s2])[None])
  seg = jnp.asarray([[1] * 5 + [2] * 7])
  pos = jnp.asarray([list(range(5)) + list(range(7))])
  fwd = nnx.jit(lambda m, t, p=None, s=None: m(t, p, s))
  out = fwd(model, packed, pos, seg)[0]
  np.testing.assert_allclose(out[:5], fwd(model, jnp.asarray(s1[None]))[0], atol=1e-5)
  np.testing.assert_allclose(out[5:], fwd(model, jnp.asarray(s2[None]))[0], atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_same_loss_and_grads(policy):
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 128)

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(tokens)) ** 2)

  plain, remat = _model("tiny-qwen3"), _model("tiny-qwen3", remat=policy)
  l0, g0 = nnx.jit(nnx.value_and_grad(loss))(plain)
  l1, g1 = jax.jit(nnx.value_and_grad(loss))(remat)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bf16_compute_close_to_fp32():
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 128)
  f32 = _model("tiny-llama")
  bf16 = _model("tiny-llama", dtype="bfloat16")
  fwd = nnx.jit(lambda m, t: m(t))
  out = fwd(bf16, tokens)
  assert out.dtype == jnp.bfloat16
  ref = fwd(f32, tokens)
  assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_llama3_rope_scaling():
  base = get_preset("llama-3.1-8b", rope_scaling=None)
  scaled = get_preset("llama-3.1-8b")
  f0, f1 = rope_inv_freq(base), rope_inv_freq(scaled)
  wavelen = 2 * np.pi / f0
  sc = scaled.rope_scaling
  high = wavelen < sc.original_max_position_embeddings / sc.high_freq_factor
  low = wavelen > sc.original_max_position_embeddings / sc.low_freq_factor
  assert high.any() and low.any() and (~high & ~low).any()
  np.testing.assert_allclose(f1[high], f0[high], rtol=1e-6)  # short wavelengths untouched
  np.testing.assert_allclose(f1[low], f0[low] / sc.factor, rtol=1e-6)  # long ones divided
  mid = ~high & ~low
  assert np.all(f1[mid] < f0[mid]) and np.all(f1[mid] > f0[mid] / sc.factor)
  assert dataclasses.replace(sc) == RopeScaling(factor=8.0)
