"""The fused linear divergence against the unchunked reference (plain autodiff of [B, R, V]
logits): value and gradients w.r.t. the student's hidden states and unembedding, for every
divergence, with masks, temperature != 1, per-example weights, teacher top-k, bf16 inputs, on one
device and on a 2x2x2 mesh; chunk size changes nothing beyond rounding; NaN at a masked position
never reaches dW."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from paced_jax import losses
from paced_jax.config import MeshConfig
from paced_jax.fused_loss import fused_divergence_loss
from paced_jax.sharding import make_mesh

B, R, D, V = 4, 11, 8, 24


def _inputs(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), dtype)
  mask = rng.random((B, R)) > 0.3
  mask[1] = False  # a row with nothing to score
  return dict(h_s=f(B, R, D), h_t=f(B, R, D), w_s=f(D, V), w_t=f(D, V),
              mask=jnp.asarray(mask, jnp.float32),
              targets=jnp.asarray(rng.integers(0, V, (B, R)), jnp.int32),
              weights=jnp.asarray(rng.uniform(0.2, 2.0, B), jnp.float32))


def _reference(x, kind, norm="token", **kw):
  coef = losses.normalise_coefs(x["mask"].sum(-1), x["weights"], norm)

  def f(h_s, w_s):
    s, _ = losses.linear_divergence(x["h_t"], x["w_t"], h_s, w_s, x["mask"], kind,
                                    targets_BR=x["targets"], **kw)
    return jnp.sum(coef * s), s

  (val, sums), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(x["h_s"], x["w_s"])
  return val, sums, grads


def _fused(x, kind, chunk, norm="token", **kw):
  coef = losses.normalise_coefs(x["mask"].sum(-1), x["weights"], norm)

  @jax.jit
  def f(h_s, w_s, h_t, w_t):
    return fused_divergence_loss(h_t, w_t, h_s, w_s, x["mask"], coef, kind,
                                 targets_BR=x["targets"], chunk=chunk, **kw)

  (val, sums), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(x["h_s"], x["w_s"],
                                                                   x["h_t"], x["w_t"])
  return val, sums, grads


def _close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_fused_equals_reference(kind):
  x = _inputs()
  kw = dict(temperature=0.6, jsd_beta=0.3, akl_mu=0.4)
  # A traced divergence index, as the step passes it.
  _close(_fused(x, jnp.int32(losses.DIVERGENCES.index(kind)), 4, **kw), _reference(x, kind, **kw))


def test_fused_by_name_at_temperature_one():
  x = _inputs(7)
  _close(_fused(x, "forward_kl", 3), _reference(x, "forward_kl"))


def test_sequence_normalisation_and_chunk_sizes():
  x = _inputs(1)
  want = _reference(x, "reverse_kl", "sequence")
  for chunk in (1, 2, 5, R, 64):  # chunk >= R is one chunk; 5 pads the last chunk
    _close(_fused(x, "reverse_kl", chunk, "sequence"), want)


def test_top_k_teacher():
  x = _inputs(2)
  for k in (V, 5):
    _close(_fused(x, "forward_kl", 4, teacher_top_k=k),
           _reference(x, "forward_kl", teacher_top_k=k))
  full = _reference(x, "forward_kl")[0]
  assert float(_fused(x, "forward_kl", 4, teacher_top_k=V)[0]) == pytest.approx(float(full),
                                                                                rel=1e-5)
  assert float(_fused(x, "forward_kl", 4, teacher_top_k=5)[0]) != pytest.approx(float(full),
                                                                                rel=1e-3)


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd", jnp.int32(0)])
def test_top_k_teacher_refuses_other_divergences(kind):
  # As losses.token_divergence: top-k is forward KL's, known by name (not silently forced).
  x = _inputs(2)
  with pytest.raises(ValueError, match="supports only forward_kl"):
    _fused(x, kind, 4, teacher_top_k=5)


def test_bf16_inputs():
  x = _inputs(3, jnp.bfloat16)
  val, sums, grads = _fused(x, "forward_kl", 4)
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
  # The reference in fp32 on the same (bf16-rounded) inputs: logits accumulate in fp32 in both.
  x32 = {k: (v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v) for k, v in x.items()}
  want = _reference(x32, "forward_kl")
  np.testing.assert_allclose(float(val), float(want[0]), rtol=1e-4)
  _close(grads, want[2], rtol=3e-2, atol=3e-3)  # the gradients are stored in bf16


def test_nan_at_masked_position_never_reaches_dw():
  x = _inputs(4)
  h_s = np.asarray(x["h_s"]).copy()
  b, r = np.argwhere(np.asarray(x["mask"]) == 0)[0]
  h_s[b, r] = np.nan
  x["h_s"] = jnp.asarray(h_s)
  h_t = np.asarray(x["h_t"]).copy()
  h_t[b, r] = np.inf
  x["h_t"] = jnp.asarray(h_t)
  val, sums, (g_h, g_w) = _fused(x, "akl", 4)
  assert np.isfinite(float(val)) and np.isfinite(np.asarray(sums)).all()
  assert np.isfinite(np.asarray(g_w)).all() and np.isfinite(np.asarray(g_h)).all()
  assert not np.asarray(g_h)[b, r].any()


def test_on_a_2x2x2_mesh_with_the_vocabulary_sharded():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  x = _inputs(5)
  want = _reference(x, "jsd", temperature=0.8)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  vocab = NamedSharding(mesh, P(None, "tensor"))
  xs = dict(x, h_s=jax.device_put(x["h_s"], rows), h_t=jax.device_put(x["h_t"], rows),
            w_s=jax.device_put(x["w_s"], vocab), w_t=jax.device_put(x["w_t"], vocab))
  with jax.set_mesh(mesh):
    got = _fused(xs, "jsd", 4, temperature=0.8)
  _close(got, want)


def test_sums_carry_no_gradient_and_coef_is_constant():
  x = _inputs(6)
  coef = losses.normalise_coefs(x["mask"].sum(-1), x["weights"])
  f = lambda h: jnp.sum(fused_divergence_loss(x["h_t"], x["w_t"], h, x["w_s"], x["mask"], coef,
                                              "forward_kl", chunk=4)[0])
  g_loss = jax.grad(f)(x["h_s"])
  assert np.abs(np.asarray(g_loss)).max() > 0
  with pytest.raises(ValueError, match="chunk"):
    fused_divergence_loss(x["h_t"], x["w_t"], x["h_s"], x["w_s"], x["mask"], coef, "forward_kl",
                          chunk=0)


def test_auto_chunk_is_what_fits_the_device():
  from paced_jax.config import Config, DataConfig, LossConfig
  from paced_jax.models import get_preset
  from paced_jax.memory import LOSS_BUFFERS_FUSED, auto_loss_chunk
  from paced_jax.step import resolve_loss_chunk

  cfg = Config(model=get_preset("tiny-qwen2", vocab_size=151_936),
               data=DataConfig(batch_size=8, max_response_len=512, length_buckets=(1024,)),
               loss=LossConfig(chunk_size=-1))
  one = {"data": 1, "fsdp": 1, "tensor": 1}
  per_position = LOSS_BUFFERS_FUSED * 8 * 151_936 * 4
  assert auto_loss_chunk(cfg, one, 10**13) == 512  # the whole response fits: one chunk
  for gib in (80, 16):
    budget = 0.1 * gib * 2**30
    c = auto_loss_chunk(cfg, one, gib * 2**30)
    assert c & (c - 1) == 0 and c * per_position <= budget < 2 * c * per_position, (gib, c)
  # Rows split over 4 fsdp devices and the vocabulary over 2 tensor devices: 8x the room.
  assert auto_loss_chunk(cfg, {"data": 1, "fsdp": 4, "tensor": 2}, 16 * 2**30) == 8 * 32
  assert auto_loss_chunk(cfg, one, 1) == 16  # never below 16 positions
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  assert resolve_loss_chunk(cfg, mesh).loss.chunk_size == auto_loss_chunk(cfg, one, None)
  fixed = Config(loss=LossConfig(chunk_size=64))
  assert resolve_loss_chunk(fixed, mesh) is fixed


def test_no_gather_of_rows_or_weights_inside_the_chunk_loop():
  # The fused loss keeps each chunk's rows split over (data, fsdp): the compiled step's loop
  # bodies hold no all-gather (W, rows, masks are laid out once, outside the loop).
  import re
  import sys

  sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
  from test_step import _batch, _cfg, _put, _setup

  mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  *_, state, tparams, step = _setup(_cfg(chunk_size=4), mesh)
  txt = step.lower(state, tparams, _put(_batch(0), mesh)).compile().as_text()
  comps, cur = {}, None
  for line in txt.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      cur = comps.setdefault(head.group(1), [])
    elif cur is not None:
      cur.append(line)
  bodies = set(re.findall(r"body=%?([\w.\-]+)", txt))
  assert bodies, "the fused loss compiles to a loop"
  in_loops = [l for b in bodies for l in comps.get(b, []) if "all-gather(" in l]
  assert not in_loops, in_loops[:3]


def test_no_involuntary_rematerialisation_on_a_2x2x2_mesh(capfd):
  # With data, fsdp and tensor all > 1, XLA once resharded the activations by replicating
  # them ("Involuntary full rematerialization"): the embedding table's layout (D over fsdp)
  # leaked into the residual stream. The step keeps rows over the batch axes and reads the table
  # with whole rows.
  import sys

  sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
  from test_step import _batch, _cfg, _put, _setup

  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  *_, state, tparams, step = _setup(_cfg(chunk_size=3), mesh)
  capfd.readouterr()
  step.lower(state, tparams, _put(_batch(0), mesh)).compile()
  err = capfd.readouterr().err
  assert "Involuntary full rematerialization" not in err, err[-1500:]
