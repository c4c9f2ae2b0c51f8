"""bf16 numerics on whatever backend runs them (CPU in the suite; GPU/TPU in the device check).

- the Decoder with bf16 compute (fp32 or bf16 parameters) stays close to an fp32 reference,
  also at long-context RoPE positions;
- cached decoding equals the full forward pass in bf16;
- the divergences upcast bf16 logits first: fp32 results that match a float64 reference even with
  a logit of 100; the fused chunked divergence on bf16 hidden states gives fp32-accurate
  gradients;
- a bf16 train step (fp32 master weights, bf16 teacher) lowers the loss on a fixed batch.

Weights are drawn at trained-model scale (unit-variance embeddings, 1/sqrt(fan_in) kernels,
non-trivial norm scales and biases), so logits have a std of ~4 and the distributions are peaked:
the regime where a precision bug shows, unlike the near-uniform logits of a 0.02-std init.

Runs without pytest too (`python tests/test_bf16_numerics.py`), for images that lack it; it
imports nothing from conftest and uses whatever devices jax finds.
"""

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# `python tests/test_bf16_numerics.py` from a checkout where paced_jax is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paced_jax import losses  # noqa: E402
from paced_jax.config import (Config, DataConfig, LossConfig, MeshConfig,  # noqa: E402
                              TrainConfig)
from paced_jax.models import Decoder, get_preset  # noqa: E402
from paced_jax.sharding import make_mesh  # noqa: E402
from paced_jax.step import compile_train_step, init_train_state, make_optimizer  # noqa: E402

BF16 = jnp.bfloat16


def _cfg(name, **kw):
  # Untied heads: with a tied unit-variance embedding every position would predict its own
  # input token with probability ~1, and every comparison would be trivially close.
  return dataclasses.replace(get_preset(name), max_seq_len=4096, tie_embeddings=False, **kw)


def _weights(cfg, seed=0):
  """{tree path: fp32 numpy array} at the scale of a trained model (module docstring). Built
  from numpy and `nnx.eval_shape`: no random-init program is compiled."""
  _, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(abstract):
    names = [k.key for k in path if isinstance(getattr(k, "key", None), str)]
    z = rng.standard_normal(x.shape).astype(np.float32)
    if names[-1] == "scale":
      w = 1.0 + 0.2 * z
    elif names[-1] == "bias":
      w = 0.5 * z
    elif names[-1] == "embed":
      w = z
    elif names[-1] == "lm_head":  # [D, V]: logits of std ~4, like a trained LM's
      w = 4 * z / np.sqrt(x.shape[0])
    else:  # kernels [fan_in..., fan_out...]; o_proj contracts two leading dimensions (N, H)
      w = z / np.sqrt(x.shape[0] * (x.shape[1] if names[-2] == "o_proj" else 1))
    out[jax.tree_util.keystr(path)] = w
  return out


def _model(cfg, weights):
  """A Decoder of `cfg` (its dtypes) holding `weights` cast to its parameter dtype."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  state = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray(weights[jax.tree_util.keystr(path)], x.dtype), abstract)
  return nnx.merge(graphdef, state)


def _round_bf16(weights):
  return {k: w.astype(BF16).astype(np.float32) for k, w in weights.items()}


def _rel_err(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _mean_kl(ref_logits, out_logits):
  """Mean over tokens of KL(softmax(ref) || softmax(out)), in float64 on the host."""
  lp, lq = _log_softmax64(ref_logits), _log_softmax64(out_logits)
  return float(np.mean(np.sum(np.exp(lp) * (lp - lq), -1)))


def _close(out, ref, where, rel=0.03, kl=3e-3, top1=0.9):
  """bf16 logits `out` vs reference logits `ref` (both [..., V])."""
  out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
  assert np.isfinite(out).all(), where
  e, k = _rel_err(out, ref), _mean_kl(ref, out)
  agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
  assert e < rel, f"{where}: relative logit error {e:.4f}"
  assert k < kl, f"{where}: mean KL(reference || bf16) {k:.5f}"
  assert agree >= top1, f"{where}: top-1 agreement {agree:.3f}"


_forward = nnx.jit(lambda m, t, p: m(t, p))
_forward_ref = nnx.jit(lambda m, t, p: m(t, p))  # traced under full fp32 matmul precision
_extend = nnx.jit(lambda m, t, c: m.extend(t, c))
_RNG = lambda seed: np.random.default_rng(seed)  # inputs from numpy: no RNG programs to compile


def test_bf16_decoder_close_to_fp32_reference():
  B, T = 4, 32
  cfg = _cfg("tiny-qwen3")  # q/k norms and an untied head; q/k/v biases: the train step below
  weights = _weights(cfg)
  tokens = _RNG(1).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  # Rows 0-1 start at position 0, rows 2-3 at 3000 (long context: RoPE angles must be fp32).
  offsets = np.array([0, 0, 3000, 3000])
  positions = (offsets[:, None] + np.arange(T)).astype(np.int32)
  for param_dtype in ("float32", "bfloat16"):
    bf = _model(dataclasses.replace(cfg, dtype="bfloat16", param_dtype=param_dtype), weights)
    # bf16 parameters: the reference holds the same rounded weights, so only the compute
    # precision is measured. (GPUs default to TF32 and TPUs to bf16 passes for fp32 dots.)
    ref_weights = weights if param_dtype == "float32" else _round_bf16(weights)
    with jax.default_matmul_precision("float32"):
      ref = np.asarray(_forward_ref(_model(cfg, ref_weights), tokens, positions))
    out = _forward(bf, tokens, positions)
    assert out.dtype == BF16, out.dtype
    for rows in (slice(0, 2), slice(2, 4)):
      assert float(np.std(ref[rows])) > 2.0  # peaked distributions: the test has teeth
      _close(out[rows], ref[rows], f"param_dtype={param_dtype} offset={offsets[rows][0]}")


def test_bf16_cached_decode_matches_full_forward():
  B, P, new = 4, 12, 8
  cfg = _cfg("tiny-llama", dtype="bfloat16", param_dtype="bfloat16")  # Llama-3 RoPE scaling
  model = _model(cfg, _weights(cfg, seed=3))
  tokens = _RNG(4).integers(0, cfg.vocab_size, (B, P + new)).astype(np.int32)
  cache = model.init_cache(B, P + new)
  assert cache.k[0].dtype == BF16  # the cache holds bf16 K/V, as the full forward computes
  logits, cache = _extend(model, tokens[:, :P], cache)
  got = [np.asarray(logits[:, -1], np.float32)]
  for i in range(P, P + new - 1):  # teacher-forced: the true next token each step
    step, cache = _extend(model, tokens[:, i:i + 1], cache)
    assert step.dtype == BF16
    got.append(np.asarray(step[:, 0], np.float32))
  T = P + new - 1
  full = _forward(model, tokens[:, :T], np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)))
  assert full.dtype == BF16
  _close(np.stack(got, 1), full[:, P - 1:], "cached vs full", rel=0.02, kl=2e-3)


def test_divergences_upcast_bf16_logits():
  B, R, V = 4, 24, 512
  rng = _RNG(5)
  t = 6.0 * rng.standard_normal((B, R, V))
  s = t + 0.3 * rng.standard_normal((B, R, V))  # a close student: KL is small
  t[:, :, 0] += 100.0  # a confident teacher: exp(100) overflows fp32 without max-subtraction
  targets = rng.integers(0, V, (B, R)).astype(np.int32)
  t_bf, s_bf = t.astype(BF16), s.astype(BF16)
  every = jax.jit(lambda t, s: {k: losses.token_divergence(t, s, k, targets_BR=targets,
                                                           jsd_beta=0.3, akl_mu=0.5)
                                for k in losses.DIVERGENCES})
  got_all = every(t_bf, s_bf)
  ref_all = every(t_bf.astype(np.float32), s_bf.astype(np.float32))
  for kind in losses.DIVERGENCES:
    got = got_all[kind]
    assert got.dtype == jnp.float32, (kind, got.dtype)
    got = np.asarray(got)
    assert np.isfinite(got).all() and got.min() >= -1e-5, kind
    np.testing.assert_allclose(got, ref_all[kind], rtol=1e-5, atol=1e-6, err_msg=kind)
  # ... and the fp32 values are right: float64 references on the same (bf16-rounded) logits.
  lp, lq = _log_softmax64(t_bf.astype(np.float64)), _log_softmax64(s_bf.astype(np.float64))
  refs = {"forward_kl": np.sum(np.exp(lp) * (lp - lq), -1),
          "reverse_kl": np.sum(np.exp(lq) * (lq - lp), -1),
          "ce": -np.take_along_axis(lq, targets[..., None], -1)[..., 0]}
  for kind, ref in refs.items():
    np.testing.assert_allclose(got_all[kind], ref, rtol=1e-4, atol=1e-5, err_msg=kind)
  mask = (np.arange(R)[None] < np.array([[R], [R - 5], [3], [0]])).astype(np.float32)
  sums, counts = losses.masked_sums(got_all["forward_kl"], mask)
  np.testing.assert_allclose(sums, (refs["forward_kl"] * mask).sum(-1), rtol=1e-4)
  assert float(counts[3]) == 0 and float(sums[3]) == 0  # an empty row adds nothing


def test_fused_chunked_divergence_with_bf16_hidden_and_unembedding():
  from paced_jax.fused_loss import fused_divergence_loss

  B, R, D, V = 4, 20, 64, 384
  rng = _RNG(6)
  h_t = rng.standard_normal((B, R, D))
  h_s = (h_t + 0.2 * rng.standard_normal((B, R, D))).astype(BF16)
  w_t = rng.standard_normal((D, V)) / 2
  w_s = (w_t + 0.05 * rng.standard_normal((D, V))).astype(BF16)
  h_t, w_t = h_t.astype(BF16), w_t.astype(BF16)
  mask = (np.arange(R)[None] < np.array([[R], [11], [1], [R]])).astype(np.float32)

  def loss(h_s, w_s):  # chunks of 8 over R=20: the fused loop with a padded tail
    coef = losses.normalise_coefs(jnp.asarray(mask).sum(-1))
    return fused_divergence_loss(h_t, w_t, h_s, w_s, mask, coef, "forward_kl", chunk=8)[0]

  def ref_loss(h_s, w_s):
    up = lambda x: jnp.asarray(x, jnp.float32)
    tok = losses.token_divergence(up(h_t) @ up(w_t), up(h_s) @ up(w_s), "forward_kl")
    return losses.normalise(*losses.masked_sums(tok, mask))

  with jax.default_matmul_precision("float32"):
    ref, ref_grads = jax.jit(jax.value_and_grad(ref_loss, (0, 1)))(h_s, w_s)
  assert float(ref) > 0.1
  val, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(h_s, w_s)
  assert val.dtype == jnp.float32
  np.testing.assert_allclose(val, ref, rtol=2e-3)
  for g, rg in zip(grads, ref_grads):
    assert g.dtype == BF16  # gradients come back in the inputs' dtype...
    g = np.asarray(g, np.float32)
    assert np.isfinite(g).all()
    assert _rel_err(g, rg) < 0.02, f"gradient error {_rel_err(g, rg):.4f}"  # ...fp32-accurate


def test_bf16_train_step_lowers_the_loss():
  student_cfg = _cfg("tiny-qwen2", dtype="bfloat16", param_dtype="float32", num_layers=1)
  teacher_cfg = dataclasses.replace(student_cfg, hidden=96, num_layers=2, param_dtype="bfloat16")
  # One device: this checks precision, not sharding (tests/test_step.py does that on 8).
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  B = 8
  cfg = Config(model=student_cfg, teacher=teacher_cfg,
               data=DataConfig(batch_size=B, max_response_len=16),
               loss=LossConfig(chunk_size=0),
               train=TrainConfig(steps=100, lr=3e-3, warmup_steps=1, grad_clip=1.0))

  def on_mesh(model):
    nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(mesh, P())))
    return model

  # The teacher's trained-scale weights give it peaked, input-dependent distributions.
  student = on_mesh(_model(student_cfg, _weights(student_cfg, seed=0)))
  teacher_def, teacher_params = nnx.split(
      on_mesh(_model(teacher_cfg, _weights(teacher_cfg, seed=1))))
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  step = compile_train_step(cfg, mesh, state, nnx.graphdef(student), teacher_params,
                            teacher_def, tx)
  T = 32
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, student_cfg.vocab_size, (B, T)).astype(np.int32),
           "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
           "loss_mask": np.repeat((np.arange(T) >= 16).astype(np.float32)[None], B, 0),
           "weights": np.ones((B,), np.float32)}
  history = []
  for _ in range(8):
    state, metrics = step(state, teacher_params, batch)
    history.append(float(metrics["loss"]))
  assert metrics["loss"].dtype == jnp.float32
  assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}  # master weights
  assert np.isfinite(history).all() and np.isfinite(float(metrics["grad_norm"])), history
  assert history[-1] < 0.8 * history[0], history
  assert all(b < a for a, b in zip(history[1:], history[2:])), history  # steadily, after warmup


def _main() -> int:
  """A pytest-free runner: every test_* function here, one line each, exit 1 on any failure."""
  print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
  start, passed, failed = time.perf_counter(), 0, 0
  for name, fn in list(globals().items()):
    if not name.startswith("test_") or not callable(fn):
      continue
    t0 = time.perf_counter()
    try:
      fn()
      status, passed = "PASS", passed + 1
    except Exception as e:  # noqa: BLE001  report it and go on to the next test
      status, failed = f"FAIL {type(e).__name__}: {(str(e).splitlines() or [''])[0]}", failed + 1
    print(f"{name} ({time.perf_counter() - t0:.1f}s): {status}", flush=True)
  # The same closing line as `pytest -q`, which benchmarks/gpu_check.sh reads.
  counts = ", ".join(f"{n} {what}" for n, what in ((failed, "failed"), (passed, "passed")) if n)
  print(f"{counts} in {time.perf_counter() - start:.2f}s")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(_main())
