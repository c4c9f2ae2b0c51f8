"""Offline top-k teacher logits: the divergence against its definition (numpy, float64) and the
full-vocabulary forward KL at k = V; the fused chunked loss against the unchunked one (value and
gradients, chunk sizes, jit, padding garbage, a 2x2x2 mesh) and fused_divergence_loss at k = V;
the stored format (float16 error, bytes per position), the writer's atomic shards and resume,
and the reader's checks (missing, truncated, corrupt shards; manifest mismatches)."""

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from paced_jax import losses, teacher_logits as tl
from paced_jax.config import ConfigError, MeshConfig
from paced_jax.fused_loss import fused_divergence_loss, fused_offline_forward_kl
from paced_jax.sharding import make_mesh


# --- the divergence --------------------------------------------------------------------------


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_offline_kl(ids, logp_t, log_tail, logits_s, temperature):
  """The definition, in float64: buckets S (the stored ids) and the tail."""
  ids = np.asarray(ids)
  logp = np.asarray(logp_t, np.float64)
  log_tail = np.asarray(log_tail, np.float64)
  q = np.exp(_np_log_softmax(np.asarray(logits_s, np.float64) / temperature))
  q_s = np.take_along_axis(q, ids, -1)
  p_s, p_tail = np.exp(logp), np.exp(log_tail)
  q_tail = 1.0 - q_s.sum(-1)
  head = np.sum(p_s * (logp - np.log(q_s)), -1)
  with np.errstate(divide="ignore", invalid="ignore"):
    tail = np.where(p_tail > 0, p_tail * (log_tail - np.log(q_tail)), 0.0)
  return temperature ** 2 * (head + tail)


def _jnp_offline_kl(ids, logp_t, log_tail, logits_s, temperature):
  """The same definition in jnp (1 - sum Q_S for the student's tail): the gradient reference."""
  logq = jax.nn.log_softmax(logits_s / temperature, -1)
  q_s = jnp.exp(jnp.take_along_axis(logq, ids, -1))
  p_s, p_tail = jnp.exp(logp_t), jnp.exp(log_tail)
  head = jnp.sum(p_s * (logp_t - jnp.log(q_s)), -1)
  tail = p_tail * (log_tail - jnp.log1p(-jnp.sum(q_s, -1)))
  return temperature ** 2 * (head + tail)


def _logits(seed, shape, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_all_ids_is_the_full_vocabulary_forward_kl(temperature):
  B, R, V = 3, 5, 40
  z_t, z_s = _logits(0, (B, R, V)), _logits(1, (B, R, V))
  ids, logp, log_tail = tl.topk_from_logits(z_t, V, temperature)
  assert np.isneginf(np.asarray(log_tail)).all()  # k = V: no tail (log 0 = -inf)
  want = losses.token_divergence(z_t, z_s, "forward_kl", temperature=temperature)
  got = losses.offline_forward_kl(ids, logp, log_tail, z_s, temperature)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
  # A very negative finite tail (exp underflows to 0) is the same as -inf; so are the student's
  # log-probabilities in place of its logits.
  got2 = losses.offline_forward_kl(ids, logp, jnp.full_like(log_tail, -1e30),
                                   jax.nn.log_softmax(z_s, -1), temperature)
  np.testing.assert_allclose(np.asarray(got2), np.asarray(want), atol=1e-5, rtol=1e-5)
  # No NaN gradient from the empty tail.
  g = jax.grad(lambda z: jnp.sum(losses.offline_forward_kl(ids, logp, log_tail, z,
                                                           temperature)))(z_s)
  g_want = jax.grad(lambda z: jnp.sum(losses.token_divergence(z_t, z, "forward_kl",
                                                              temperature=temperature)))(z_s)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_want), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("k,temperature", [(1, 1.0), (5, 1.0), (12, 0.6), (39, 1.5)])
def test_top_k_equals_the_definition(k, temperature):
  B, R, V = 3, 6, 40
  z_t, z_s = _logits(2, (B, R, V)), _logits(3, (B, R, V))
  ids, logp, log_tail = tl.topk_from_logits(z_t, k, temperature)
  tail = np.asarray(log_tail).copy()
  tail[0, 0] = -np.inf  # a position whose teacher puts no mass outside S: 0 log 0 = 0
  got = losses.offline_forward_kl(ids, logp, jnp.asarray(tail), z_s, temperature)
  want = _np_offline_kl(ids, logp, tail, z_s, temperature)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
  # The tail term is not negligible here (a dropped term would fail the comparison above).
  no_tail = _np_offline_kl(ids, logp, np.full_like(tail, -np.inf), z_s, temperature)
  assert np.abs(want - no_tail).max() > 1e-3
  # Not the renormalised top-k KL of token_divergence(teacher_top_k=k).
  if k < V - 1:
    renorm = losses.token_divergence(z_t, z_s, "forward_kl", temperature=temperature,
                                     teacher_top_k=k)
    assert np.abs(np.asarray(renorm) - want).max() > 1e-3


@pytest.mark.parametrize("k", [1, 7, 30])
def test_gradient_matches_the_reference(k):
  B, R, V, T = 2, 4, 32, 0.8
  z_t, z_s = _logits(4, (B, R, V)), _logits(5, (B, R, V))
  ids, logp, log_tail = tl.topk_from_logits(z_t, k, T)
  w = jnp.asarray(np.random.default_rng(6).uniform(0.5, 2.0, (B, R)), jnp.float32)
  f = lambda fn: jax.grad(lambda z: jnp.sum(w * fn(ids, logp, log_tail, z, T)))(z_s)
  g, g_want = f(losses.offline_forward_kl), f(_jnp_offline_kl)
  assert np.abs(np.asarray(g_want)).max() > 1e-3
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_want), rtol=1e-4, atol=2e-6)


def test_tiny_tails_stay_exact():
  # A peaked student whose mass outside S is below fp32's epsilon: 1 - sum Q_S would be 0 (or
  # negative) in fp32; the complement's logsumexp is exact.
  V, k = 50, 4
  z_t = _logits(7, (1, 2, V))
  z_s = np.zeros((1, 2, V), np.float32)
  ids, logp, log_tail = tl.topk_from_logits(z_t, k, 1.0)
  z_s[0, :, :] = -30.0
  z_s[np.zeros(k, int), 0, np.asarray(ids)[0, 0]] = 0.0
  z_s[np.zeros(k, int), 1, np.asarray(ids)[0, 1]] = 0.0
  got = losses.offline_forward_kl(ids, logp, log_tail, jnp.asarray(z_s), 1.0)
  want = _np_offline_kl(ids, logp, log_tail, z_s, 1.0)
  assert np.isfinite(np.asarray(got)).all()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


# --- the fused loss --------------------------------------------------------------------------

B, R, D, V = 4, 11, 8, 24


def _fused_inputs(seed=0, k=6, temperature=0.7, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), dtype)
  mask = rng.random((B, R)) > 0.3
  mask[1] = False  # a row with nothing to score
  x = dict(h_s=f(B, R, D), h_t=f(B, R, D), w_s=f(D, V), w_t=f(D, V),
           mask=jnp.asarray(mask, jnp.float32),
           weights=jnp.asarray(rng.uniform(0.2, 2.0, B), jnp.float32))
  z_t = jnp.einsum("BRD,DV->BRV", x["h_t"], x["w_t"], preferred_element_type=jnp.float32)
  x["ids"], x["logp"], x["log_tail"] = tl.topk_from_logits(z_t, k, temperature)
  x["coef"] = losses.normalise_coefs(x["mask"].sum(-1), x["weights"])
  return x


def _offline_reference(x, temperature):
  def f(h_s, w_s):
    keep = (x["mask"] > 0)[..., None]
    z = jnp.einsum("BRD,DV->BRV", jnp.where(keep, h_s, 0), w_s,
                   preferred_element_type=jnp.float32)
    tok = losses.offline_forward_kl(x["ids"], x["logp"], x["log_tail"], z, temperature)
    s, _ = losses.masked_sums(tok, x["mask"])
    return jnp.sum(x["coef"] * s), s

  (val, sums), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(x["h_s"], x["w_s"])
  return val, sums, grads


def _offline_fused(x, chunk, temperature, row_sharding=None):
  @jax.jit
  def f(h_s, w_s, ids, logp, log_tail):
    return fused_offline_forward_kl(h_s, w_s, ids, logp, log_tail, x["mask"], x["coef"],
                                    chunk=chunk, temperature=temperature,
                                    row_sharding=row_sharding)

  (val, sums), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(
      x["h_s"], x["w_s"], x["ids"], x["logp"], x["log_tail"])
  return val, sums, grads


def _close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("chunk", [1, 4, R, 64])  # 4 does not divide R = 11; 64 > R
def test_fused_offline_equals_unchunked(chunk):
  x = _fused_inputs(0)
  want = _offline_reference(x, 0.7)
  assert float(want[0]) > 0 and np.abs(np.asarray(want[2][1])).max() > 0
  _close(_offline_fused(x, chunk, 0.7), want)
  # The backward scales by the incoming cotangent.
  g = jax.grad(lambda h, w: -2.5 * fused_offline_forward_kl(
      h, w, x["ids"], x["logp"], x["log_tail"], x["mask"], x["coef"], chunk=chunk,
      temperature=0.7)[0], (0, 1))(x["h_s"], x["w_s"])
  _close(g, jax.tree.map(lambda a: -2.5 * a, want[2]))


def test_fused_offline_with_all_ids_is_fused_forward_kl():
  x = _fused_inputs(1, k=V, temperature=1.3)
  got = _offline_fused(x, 4, 1.3)
  (val, sums), grads = jax.value_and_grad(
      lambda h, w: fused_divergence_loss(x["h_t"], x["w_t"], h, w, x["mask"], x["coef"],
                                         "forward_kl", chunk=4, temperature=1.3),
      (0, 1), has_aux=True)(x["h_s"], x["w_s"])
  _close(got, (val, sums, grads), rtol=1e-4, atol=1e-5)


def test_fused_offline_ignores_garbage_at_masked_positions():
  x = _fused_inputs(2)
  want = _offline_reference(x, 0.7)
  m = np.asarray(x["mask"]) == 0
  ids, logp, tail, h = (np.asarray(x[n]).copy() for n in ("ids", "logp", "log_tail", "h_s"))
  ids[m] = -7  # out of range
  logp[m], tail[m], h[m] = np.nan, np.nan, np.inf
  y = dict(x, ids=jnp.asarray(ids), logp=jnp.asarray(logp), log_tail=jnp.asarray(tail),
           h_s=jnp.asarray(h))
  val, sums, (g_h, g_w) = _offline_fused(y, 4, 0.7)
  _close((val, sums, g_w), (want[0], want[1], want[2][1]))
  assert not np.asarray(g_h)[m].any() and np.isfinite(np.asarray(g_h)).all()


def test_fused_offline_on_a_2x2x2_mesh():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  x = _fused_inputs(3)
  want = _offline_reference(x, 0.7)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  vocab = NamedSharding(mesh, P(None, "tensor"))
  xs = dict(x, h_s=jax.device_put(x["h_s"], rows), w_s=jax.device_put(x["w_s"], vocab),
            ids=jax.device_put(x["ids"], rows), logp=jax.device_put(x["logp"], rows),
            log_tail=jax.device_put(x["log_tail"], rows))
  with jax.set_mesh(mesh):
    got = _offline_fused(xs, 4, 0.7, row_sharding=rows)
  _close(got, want)


def test_fused_offline_keeps_rows_split_inside_the_loop():
  # The stored ids' membership mask is a scatter with batching dimensions: with iota indices
  # XLA all-gathered every chunk's indices over the fsdp axis (tests/test_fused_loss.py checks
  # the same of fused_divergence_loss).
  import re

  mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  x = _fused_inputs(5)
  put = lambda a: jax.device_put(jnp.concatenate([a, a]), rows)  # B = 8 rows over 4 devices
  h, ids, logp, tail, mask = (put(x[n]) for n in ("h_s", "ids", "logp", "log_tail", "mask"))
  w = jax.device_put(x["w_s"], NamedSharding(mesh, P(None, "tensor")))
  coef = jnp.concatenate([x["coef"], x["coef"]]) / 2
  f = jax.jit(jax.grad(lambda h, w: fused_offline_forward_kl(
      h, w, ids, logp, tail, mask, coef, chunk=4, row_sharding=rows)[0], (0, 1)))
  with jax.set_mesh(mesh):
    txt = f.lower(h, w).compile().as_text()
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


def test_fused_offline_bf16_and_argument_checks():
  x = _fused_inputs(4, dtype=jnp.bfloat16)
  val, _, grads = _offline_fused(x, 4, 0.7)
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
  x32 = {k: (v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v) for k, v in x.items()}
  np.testing.assert_allclose(float(val), float(_offline_reference(x32, 0.7)[0]), rtol=1e-4)
  with pytest.raises(ValueError, match="chunk"):
    fused_offline_forward_kl(x["h_s"], x["w_s"], x["ids"], x["logp"], x["log_tail"], x["mask"],
                             x["coef"], chunk=0)
  with pytest.raises(ValueError, match="do not match"):
    fused_offline_forward_kl(x["h_s"], x["w_s"], x["ids"][:, :3], x["logp"], x["log_tail"],
                             x["mask"], x["coef"], chunk=4)


# --- top-k, storage dtype, bytes -------------------------------------------------------------


def test_topk_from_logits():
  Rn, Vn, k, T = 7, 100, 9, 0.8
  z = np.random.default_rng(8).normal(size=(Rn, Vn)) * 3
  ids, logp, log_tail = jax.jit(tl.topk_from_logits, static_argnums=(1, 2))(
      jnp.asarray(z, jnp.float32), k, T)
  assert ids.dtype == jnp.int32 and logp.dtype == jnp.float32 and log_tail.dtype == jnp.float32
  lp = _np_log_softmax(z / T)
  want_ids = np.argsort(-lp, -1)[:, :k]
  np.testing.assert_array_equal(np.asarray(ids), want_ids)
  np.testing.assert_allclose(np.asarray(logp), np.take_along_axis(lp, want_ids, -1), atol=1e-5)
  want_tail = np.log1p(-np.exp(np.take_along_axis(lp, want_ids, -1)).sum(-1))
  np.testing.assert_allclose(np.asarray(log_tail), want_tail, atol=1e-5)
  # A tail far below fp32's epsilon is kept exactly (1 - sum would round to 0 or below).
  peaked = np.full((1, Vn), -40.0)
  peaked[0, :k] = 0.0
  _, _, t = tl.topk_from_logits(jnp.asarray(peaked, jnp.float32), k, 1.0)
  np.testing.assert_allclose(float(t[0]), -40 + np.log((Vn - k) / k), rtol=1e-5)


def test_float16_storage_error_at_v1000_k64(capsys):
  """Max abs error the stored dtype adds to the log-probabilities, the probabilities and the
  per-token KL (a student at the same temperature), random logits, V = 1000, k = 64."""
  Vn, k, Rn = 1000, 64, 512
  rng = np.random.default_rng(9)
  z_s = jnp.asarray(rng.normal(size=(Rn, Vn)) * 2, jnp.float32)
  rows = []
  for scale in (1.0, 3.0, 8.0):
    z = jnp.asarray(rng.normal(size=(Rn, Vn)) * scale, jnp.float32)
    ids, logp, log_tail = tl.topk_from_logits(z, k, 1.0)
    kl = np.asarray(losses.offline_forward_kl(ids, logp, log_tail, z_s))
    lp = np.asarray(logp)
    for name, dt in (("float16", np.float16), ("bfloat16", jnp.bfloat16)):
      r = np.asarray(np.asarray(lp).astype(dt).astype(np.float32))
      kl_r = np.asarray(losses.offline_forward_kl(ids, jnp.asarray(r), log_tail, z_s))
      rows.append((scale, name, np.abs(r - lp).max(), np.abs(np.exp(r) - np.exp(lp)).max(),
                   np.abs(kl_r - kl).max(), abs(kl_r.mean() - kl.mean()) / kl.mean(),
                   float(-lp.min())))
  with capsys.disabled():
    print("\nlogits scale, dtype, max|dlogp|, max|dp|, max|dKL|, |d mean KL|/mean KL, "
          "max -logp")
    for row in rows:
      print("  %4.1f %-8s %.2e %.2e %.2e %.2e %.1f" % row)
  for scale, name, e_lp, e_p, e_kl, e_rel, top in rows:
    if name == "float16":  # half an ulp: |logp| in [2^e, 2^(e+1)) rounds to within 2^(e - 11)
      assert e_lp <= 2.0 ** (np.floor(np.log2(top)) - 11) and e_p < 2e-4
      assert e_kl < 5e-3 and e_rel < 1e-4
  f16 = [r for r in rows if r[1] == "float16"]
  b16 = [r for r in rows if r[1] == "bfloat16"]
  assert all(a[2] < b[2] / 4 for a, b in zip(f16, b16))  # float16 is the better 2 bytes


def test_bytes_per_scored_position(tmp_path, capsys):
  rng = np.random.default_rng(10)
  out = []
  for k in (64, 256):
    d = tmp_path / f"k{k}"
    positions = 0
    with tl.TeacherLogitsWriter(str(d), {"k": k, "temperature": 1.0},
                                records_per_shard=64) as w:
      for i in range(64):
        Rn = 200
        z = jnp.asarray(rng.normal(size=(Rn, 4096)) * 3, jnp.float32)
        w.add(f"p{i}", *tl.topk_from_logits(z, k, 1.0))
        positions += Rn
    m = json.loads((d / "manifest.json").read_text())
    assert m["positions"] == positions
    out.append((k, tl.bytes_per_position(k), m["bytes"] / positions))
  with capsys.disabled():
    for k, raw, disk in out:
      print(f"\nk={k}: {raw} payload bytes per scored position, {disk:.1f} on disk "
            "(random logits, V=4096, default compression)")
  assert tl.bytes_per_position(64) == 388 and tl.bytes_per_position(256) == 1540
  for k, raw, disk in out:
    assert disk < raw * 1.05


# --- writer and reader -----------------------------------------------------------------------


META = {"k": 4, "temperature": 0.9, "teacher": {"path": "/models/t", "hash": "abc"},
        "tokenizer_hash": "tok1", "chat_template": "qwen",
        "data": {"max_response_len": 64, "max_prompt_len": 32}}


def _problems(n=10, k=4, seed=11):
  rng = np.random.default_rng(seed)
  out = {}
  for i in range(n):
    Rn = int(rng.integers(1, 9))
    z = jnp.asarray(rng.normal(size=(Rn, 30)) * 2, jnp.float32)
    out[f"prob-{i}"] = tuple(np.asarray(a) for a in tl.topk_from_logits(z, k, 0.9))
  return out


def _write(d, problems, **kw):
  with tl.TeacherLogitsWriter(str(d), META, **kw) as w:
    for pid, arrs in problems.items():
      w.add(pid, *arrs)
  return w


def _same(teacher, problems):
  for pid, (ids, logp, tail) in problems.items():
    gi, gl, gt = teacher.get(pid)
    assert gi.dtype == np.int32 and gl.dtype == np.float32 and gt.dtype == np.float32
    np.testing.assert_array_equal(gi, ids)
    np.testing.assert_array_equal(gl, logp.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(gt, tail)


def test_round_trip_and_manifest(tmp_path):
  probs = _problems()
  w = _write(tmp_path, probs, records_per_shard=3)
  assert w.written == [f"shard-00000-{i:05d}.array_record" for i in range(4)]
  names = sorted(os.listdir(tmp_path))
  assert not [n for n in names if n.endswith(".tmp")]
  t = tl.OfflineTeacher(str(tmp_path), verify="full")
  m = t.manifest
  assert m["k"] == 4 and m["temperature"] == 0.9 and m["logp_dtype"] == "float16"
  assert m["problem_ids"] == list(probs) and m["records"] == 10
  assert [s["records"] for s in m["shards"]] == [3, 3, 3, 1]
  assert all(s["bytes"] == os.path.getsize(tmp_path / s["name"]) for s in m["shards"])
  assert m["positions"] == sum(len(a[2]) for a in probs.values())
  _same(t, probs)
  assert t.positions("prob-3") == len(probs["prob-3"][2])
  assert t.missing(["prob-1", "nope", "prob-9", "x"]) == ["nope", "x"]
  _same(pickle.loads(pickle.dumps(t)), probs)  # grain workers
  with pytest.raises(KeyError, match="nope"):
    t.get("nope")


def test_check_manifest(tmp_path):
  _write(tmp_path, _problems(3))
  t = tl.OfflineTeacher(str(tmp_path))
  t.check_manifest({"k": 4, "temperature": 0.9, "teacher": {"hash": "abc"},
                    "data": {"max_response_len": 64}})
  cases = [({"k": 64}, "field k is 4, expected 64"),
           ({"temperature": 0.9, "teacher": {"path": "/models/t", "hash": "xyz"}},
            "field teacher.hash is 'abc', expected 'xyz'"),
           ({"data": {"max_response_len": 64, "max_prompt_len": 16}},
            "field data.max_prompt_len is 32, expected 16"),
           ({"chat_template": "qwen", "system_prompt": "hi"},
            "field system_prompt is <missing>, expected 'hi'")]
  for expected, msg in cases:
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")) as e:
      t.check_manifest(expected)
    assert "\n" not in str(e.value)


def test_gather_rows(tmp_path):
  probs = _problems(4)
  _write(tmp_path, probs)
  t = tl.OfflineTeacher(str(tmp_path))
  order = ["prob-2", "prob-0", "prob-3"]
  ids, logp, tail, mask = tl.gather_rows(t, order, 5)
  assert ids.shape == (3, 5, 4) and tail.shape == (3, 5)
  for b, pid in enumerate(order):
    n = min(5, len(probs[pid][2]))
    assert mask[b].sum() == n and not mask[b, n:].any()
    np.testing.assert_array_equal(ids[b, :n], probs[pid][0][:n])
    assert np.isneginf(tail[b, n:]).all()


def _open_error(d, **kw):
  with pytest.raises(ConfigError) as e:
    tl.OfflineTeacher(str(d), **kw)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_truncated_shard(tmp_path):
  _write(tmp_path, _problems(), records_per_shard=4)
  shard = tmp_path / "shard-00000-00001.array_record"
  size = shard.stat().st_size
  for cut in (size - 1, size // 2, 0):
    with open(shard, "r+b") as f:
      f.truncate(cut)
    msg = _open_error(tmp_path)
    assert str(shard) in msg and f"is {cut} bytes, the manifest says {size}" in msg


def test_truncated_shard_with_a_matching_manifest_size(tmp_path):
  # Size check aside (a manifest edited to the short size), the reader itself refuses it.
  _write(tmp_path, _problems(), records_per_shard=4)
  shard = tmp_path / "shard-00000-00001.array_record"
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size // 2)
  mpath = tmp_path / "manifest.json"
  m = json.loads(mpath.read_text())
  m["shards"][1]["bytes"] = shard.stat().st_size
  mpath.write_text(json.dumps(m))
  msg = _open_error(tmp_path)
  assert str(shard) in msg and "corrupt" in msg


def test_corrupt_shard(tmp_path):
  probs = _problems()
  _write(tmp_path, probs, records_per_shard=10)
  shard = tmp_path / "shard-00000-00000.array_record"
  good = shard.read_bytes()
  # Flip bytes inside the records (same size): the default open (sizes, counts) passes, the
  # record's read fails; verify="full" finds it at open.
  bad = bytearray(good)
  for i in range(200, 1200):
    bad[i] ^= 0x5A
  shard.write_bytes(bytes(bad))
  msg = _open_error(tmp_path, verify="full")
  assert str(shard) in msg and "corrupt" in msg
  t = tl.OfflineTeacher(str(tmp_path))
  errors = []
  for pid in probs:
    try:
      t.get(pid)
    except ConfigError as e:
      errors.append(str(e))
  assert errors and all(str(shard) in e and "\n" not in e for e in errors)
  # The footer (the record index and the postscript: the file's last non-zero bytes; riegeli
  # pads the file with zeros after them) corrupted: the open fails.
  bad = bytearray(good)
  end = int(np.nonzero(np.frombuffer(good, np.uint8))[0].max())
  for i in range(end - 100, end + 1):
    bad[i] ^= 0x5A
  shard.write_bytes(bytes(bad))
  msg = _open_error(tmp_path)
  assert str(shard) in msg
  # A missing shard, and a wrong record count in the manifest.
  shard.write_bytes(good)
  mpath = tmp_path / "manifest.json"
  m = json.loads(mpath.read_text())
  m["shards"][0]["records"] = 11
  mpath.write_text(json.dumps(m))
  assert "10 records, the manifest says 11" in _open_error(tmp_path)
  shard.unlink()
  assert "missing" in _open_error(tmp_path)
  mpath.unlink()
  assert "no manifest.json" in _open_error(tmp_path)


def test_record_checks():
  ids, logp, tail = _problems(1)["prob-0"]
  raw = tl.encode_record("a", ids, logp, tail, tokens=np.arange(len(tail)))
  head, i, l, t = tl.decode_record(raw)
  assert head["id"] == "a" and head["tokens"] == tl.tokens_digest(np.arange(len(tail)))
  np.testing.assert_array_equal(i, ids)
  flipped = bytearray(raw)
  flipped[-3] ^= 1
  with pytest.raises(ConfigError, match="crc32"):
    tl.decode_record(bytes(flipped), "shard X")
  with pytest.raises(ConfigError, match="payload bytes"):
    tl.decode_record(raw[:-4], "shard X")
  with pytest.raises(ConfigError, match="magic"):
    tl.decode_record(b"nope" + raw[4:], "shard X")
  with pytest.raises(ValueError, match="NaN"):
    tl.encode_record("a", ids, np.full_like(logp, np.nan), tail)
  # float16's range: very negative log-probabilities stay finite, -inf stays -inf.
  lp = logp.copy()
  lp[0, 0], lp[0, 1] = -1e6, -np.inf
  _, _, l, _ = tl.decode_record(tl.encode_record("a", ids, lp, tail))
  assert l[0, 0] == -65504.0 and np.isneginf(l[0, 1])


def test_resume_equals_writing_at_once(tmp_path):
  probs = _problems(12)
  first = dict(list(probs.items())[:6])
  _write(tmp_path / "once", probs, records_per_shard=4)
  d = tmp_path / "resumed"
  # A first run stores half, then crashes: one shard committed, one written without its index
  # (killed between the two), a leftover .tmp.
  w = tl.TeacherLogitsWriter(str(d), META, records_per_shard=4)
  for pid, a in first.items():
    w.add(pid, *a)
  w.flush()  # 4 committed in shard 0, 2 buffered
  w.flush()  # shard 1 ...
  os.remove(d / "shard-00000-00001.index.json")  # ... never committed
  (d / "shard-00000-00002.array_record.tmp").write_bytes(b"partial")
  assert tl.completed_ids(str(d)) == set(list(first)[:4])
  # Resume with everything: the committed problems are skipped, the rest written.
  w2 = tl.TeacherLogitsWriter(str(d), META, records_per_shard=4)
  assert w2.done == set(list(first)[:4])
  added = [w2.add(pid, *a) for pid, a in probs.items()]
  assert added == [False] * 4 + [True] * 8
  w2.close()
  assert all(int(n.split("-")[2][:5]) >= 3 for n in w2.written)  # never reuses a shard's name
  once, resumed = tl.OfflineTeacher(str(tmp_path / "once")), tl.OfflineTeacher(str(d))
  assert sorted(once.problem_ids) == sorted(resumed.problem_ids) == sorted(probs)
  for pid in probs:
    for a, b in zip(once.get(pid), resumed.get(pid)):
      np.testing.assert_array_equal(a, b)
  assert resumed.manifest["positions"] == once.manifest["positions"]
  # A third run has nothing to do; other settings are refused, naming the field.
  w3 = tl.TeacherLogitsWriter(str(d), META)
  assert not any(w3.add(pid, *a) for pid, a in probs.items())
  with pytest.raises(ConfigError, match=r"teacher\.hash='abc', not 'other'"):
    tl.TeacherLogitsWriter(str(d), dict(META, teacher={"path": "/models/t", "hash": "other"}))
  with pytest.raises(ConfigError, match="k=4, not 8"):
    tl.TeacherLogitsWriter(str(d), dict(META, k=8))


def test_resume_redoes_a_truncated_committed_shard(tmp_path):
  probs = _problems(6)
  _write(tmp_path, probs, records_per_shard=3)
  shard = tmp_path / "shard-00000-00000.array_record"
  with open(shard, "r+b") as f:
    f.truncate(100)
  assert tl.completed_ids(str(tmp_path)) == set(list(probs)[3:])
  _write(tmp_path, probs, records_per_shard=3)
  t = tl.OfflineTeacher(str(tmp_path))  # the truncated shard is no longer in the manifest
  assert sorted(t.problem_ids) == sorted(probs)
  _same(t, probs)


def test_writer_checks(tmp_path):
  w = tl.TeacherLogitsWriter(str(tmp_path), META)
  ids, logp, tail = _problems(1, k=5)["prob-0"]
  with pytest.raises(ValueError, match="k is 4"):
    w.add("a", ids, logp, tail)
  with pytest.raises(ValueError, match=r"must be \[R, k\]"):
    w.add("a", ids[:, :4], logp, tail)
  with pytest.raises(ValueError, match="k' and 'temperature'"):
    tl.TeacherLogitsWriter(str(tmp_path / "x"), {"k": 4})


def test_token_digests_flops_and_record_keys(tmp_path, caplog):
  probs = _problems(5)
  with tl.TeacherLogitsWriter(str(tmp_path), META, records_per_shard=2) as w:
    for n, (pid, arrs) in enumerate(probs.items()):
      w.add(pid, *arrs, tokens=np.arange(n + 3), flops=10.0 * (n + 1))
  t = tl.OfflineTeacher(str(tmp_path))
  for n, pid in enumerate(probs):
    assert t.tokens_digest(pid) == tl.tokens_digest(np.arange(n + 3))
    assert t.record(pid)[0]["tokens"] == t.tokens_digest(pid)
  assert t.manifest["compute"] == {"offline_teacher_flops": 150.0}  # each record once
  assert [tl.record_key("p", 0, 1), tl.record_key("p", 1, 3)] == ["p", "p#1"]
  assert tl.tokenizer_hash("char") == "char"
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text("{}")
  h = tl.tokenizer_hash(str(tok))
  assert tl.tokenizer_hash(str(tok / "tokenizer.json")) == h
  (tok / "model.safetensors").write_bytes(b"weights")  # not the tokenizer's
  assert tl.tokenizer_hash(str(tok)) == h
  (tok / "tokenizer_config.json").write_text('{"eos_token": "x"}')
  assert tl.tokenizer_hash(str(tok)) != h
  # A damaged index file (not the writer's doing: it renames it whole) is one warning, and
  # its shard's problems are redone.
  (tmp_path / "shard-00000-00000.index.json").write_text("{not json")
  with caplog.at_level("WARNING", "paced_jax.teacher_logits"):
    assert tl.completed_ids(str(tmp_path)) == set(list(probs)[2:])
  assert "shard-00000-00000.index.json is unreadable" in caplog.text
