"""Fused linear divergence: the distillation loss of `h @ W` logits, chunk by chunk, with the
gradients computed in the same pass (the idea behind "cut cross-entropy" and Liger's fused linear
JSD), so chunking costs memory nothing and time nothing.

    loss, sums_B = fused_divergence_loss(h_t_BRD, w_t_DV, h_s_BRD, w_s_DV, mask_BR, coef_B,
                                         kind, chunk=128)
    # loss = sum_b coef_b * sum_r mask_br * d_br     (coef from losses.normalise_coefs)

For each chunk of C scored positions the forward pass computes the student's and the teacher's
logits [B, C, V] (fp32 accumulation), the per-token divergence d (losses.token_divergence: every
divergence, temperature, teacher top-k) and, by the chain rule through the unembedding,
  dz_BCV  = coef_b * mask_bc * dd/dz          (the per-token gradient of d w.r.t. the student's
                                               logits, from `jax.vjp` of the elementwise d)
  dh_BCD  = dz @ W_s^T                         (gradient w.r.t. the student's hidden states)
  dW_DV  += h_s^T @ dz                         (fp32 accumulator, carried across chunks)
then drops the chunk's logits. The backward pass only scales dh and dW by the incoming cotangent:
no logits are recomputed. Unembedding matmuls per scored position: 3 for the student (logits,
dh, dW) and 1 for the teacher, as an unchunked step (a `jax.checkpoint` chunking, recomputing
each chunk's logits in the backward, needs 4 + 2). Peak extra memory: a few [B, C, V] fp32
buffers and dW.

Differentiable inputs: h_s and w_s. The teacher (h_t, w_t), mask, coef and targets are constants
(the step holds the teacher under stop_gradient; coef depends only on counts and weights).
`sums_B` (per-example divergence sums, for metrics) carries no gradient.
Masked positions: their hidden rows are zeroed before any matmul, so a non-finite hidden state
at a padded position never reaches the loss, dh or dW.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from paced_jax import divergences, losses


def _value_and_dz(kind, z_t, z_s, targets, ct, opts):
  """(d [B, C], ct * dd/dz_s [B, C, V]) for one divergence. A traced `kind` switches between
  whole (value, gradient) computations: a switch inside the vjp would make every branch's
  [B, C, V] residuals outputs of the forward switch (zero-filled when not taken)."""
  def one(name):
    def f(z_t, z_s, targets, ct):
      d, vjp = jax.vjp(lambda z: losses.token_divergence(z_t, z, name, targets_BR=targets,
                                                         **opts), z_s)
      return d, vjp(ct)[0]
    return f

  if isinstance(kind, str):
    return one(kind)(z_t, z_s, targets, ct)
  if z_t is None:
    z_t = jnp.zeros_like(z_s)  # every branch is traced; only cross-entropy runs without one
  return jax.lax.switch(kind, [one(name) for name in divergences.NAMES], z_t, z_s, targets, ct)


def _accumulate(carry, d_BC, dz, keep, h_s_c, w_s, i, chunk, rowwise):
  """One chunk's share of the loop carry (per-example sums, dW, dh) from its per-token
  divergence d and the gradient dz of d w.r.t. the chunk's student logits, taken through the
  unembedding: dh = dz @ W^T, dW += h^T @ dz."""
  sums, dw, dh_all = carry
  dz = jnp.where(keep, dz, 0.0).astype(w_s.dtype)
  dh = rowwise(jnp.einsum("BCV,DV->BCD", dz, w_s, preferred_element_type=jnp.float32))
  dw = dw + jnp.einsum("BCD,BCV->DV", h_s_c, dz, preferred_element_type=jnp.float32)
  dh_all = jax.lax.dynamic_update_slice_in_dim(dh_all, dh.astype(dh_all.dtype), i * chunk,
                                               axis=1)
  return sums + jnp.sum(d_BC, -1), dw, dh_all


def _chunk_loop(body, n, h_s, w_s, coef, R, rowwise):
  """Runs `body` over the n chunks; ((loss, sums_B), (dh, dW)) as the custom vjp keeps them."""
  init = (rowwise(jnp.zeros((h_s.shape[0],), jnp.float32)), jnp.zeros(w_s.shape, jnp.float32),
          rowwise(jnp.zeros_like(h_s)))
  sums, dw, dh = jax.lax.fori_loop(0, n, body, init)
  return (jnp.sum(coef * sums), sums), (dh[:, :R], dw.astype(w_s.dtype))


def _scaled_grads(res, ct, n_constants: int):
  """The backward pass: dh and dW scaled by the incoming cotangent of the loss (the sums_B
  are for metrics: no gradient flows through them); None for the constant inputs."""
  dh, dw = res
  ct_loss, _ = ct
  return (ct_loss.astype(dh.dtype) * dh, ct_loss.astype(dw.dtype) * dw) + (None,) * n_constants


def _forward(static, h_s, w_s, h_t, w_t, mask, coef, targets, kind):
  chunk, temperature, jsd_beta, akl_mu, top_k, name, rows = static
  # Rows stay split over the batch mesh axes inside the loop (without the constraint XLA
  # all-gathers every chunk's rows and computes the loss on each device redundantly).
  rowwise = (lambda x: jax.lax.with_sharding_constraint(x, rows)) if rows is not None else (
      lambda x: x)
  kind = kind if name is None else name  # a name when it is known on the host
  opts = dict(temperature=temperature, jsd_beta=jsd_beta, akl_mu=akl_mu, teacher_top_k=top_k)
  R = h_s.shape[1]
  has_teacher = h_t is not None
  n = -(-R // chunk)
  pad = n * chunk - R
  padR = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
  h_s, mask, targets = padR(h_s), padR(mask), padR(targets)
  h_t = padR(h_t) if has_teacher else None
  # Chunks are sliced along the position axis (axis 1) in place: the batch axis stays leading,
  # so its sharding carries into the loop (a [n, B, C, ...] scan layout made XLA all-gather the
  # rows of every chunk over the fsdp axis).
  cut = lambda x, i: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)

  def body(i, carry):
    h_s_c, m, tgt = rowwise(cut(h_s, i)), rowwise(cut(mask, i)), rowwise(cut(targets, i))
    keep = (m > 0)[..., None]
    h_s_c = jnp.where(keep, h_s_c, jnp.zeros((), h_s_c.dtype))
    z_t = None
    if has_teacher:
      h_t_c = jnp.where(keep, rowwise(cut(h_t, i)), jnp.zeros((), h_t.dtype))
      z_t = jnp.einsum("BCD,DV->BCV", h_t_c, w_t, preferred_element_type=jnp.float32)
    z_s = jnp.einsum("BCD,DV->BCV", h_s_c, w_s, preferred_element_type=jnp.float32)
    m32 = m.astype(jnp.float32)
    d_BC, dz = _value_and_dz(kind, z_t, z_s, tgt, coef[:, None] * m32, opts)
    d_BC = jnp.where(m32 > 0, d_BC, 0.0) * m32
    return _accumulate(carry, d_BC, dz, keep, h_s_c, w_s, i, chunk, rowwise)

  return _chunk_loop(body, n, h_s, w_s, coef, R, rowwise)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(static, h_s, w_s, h_t, w_t, mask, coef, targets, kind):
  return _forward(static, h_s, w_s, h_t, w_t, mask, coef, targets, kind)[0]


def _fused_fwd(static, h_s, w_s, h_t, w_t, mask, coef, targets, kind):
  return _forward(static, h_s, w_s, h_t, w_t, mask, coef, targets, kind)


def _fused_bwd(static, res, ct):
  return _scaled_grads(res, ct, 6)  # h_t, w_t, mask, coef, targets, kind


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_divergence_loss(h_t_BRD, w_t_DV, h_s_BRD, w_s_DV, mask_BR, coef_B, kind, *,
                          targets_BR=None, chunk: int = 128, temperature: float = 1.0,
                          jsd_beta: float = 0.5, akl_mu: float = 0.5, teacher_top_k: int = 0,
                          row_sharding=None):
  """(loss, sums_B) with loss = sum_b coef_b sum_r mask_br d_br; see the module docstring.

  `kind` is a name in divergences.NAMES (one branch compiled) or a traced index into it (every
  divergence compiled, one taken: two_stage); `h_t_BRD`/`w_t_DV` may be None for cross-entropy.
  `teacher_top_k` needs a divergence that takes it, by name (divergences.check_top_k).
  `chunk` >= 1 positions per chunk (R is padded to a whole number of chunks; padded positions
  are masked). `row_sharding`: a NamedSharding of the leading (batch) axis
  (e.g. NamedSharding(mesh, P(("data", "fsdp")))) that every per-row array keeps in the loop."""
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be >= 1 (use losses.linear_divergence for the "
                     "unchunked reference)")
  B, R, _ = h_s_BRD.shape
  divergences.check_top_k(kind, teacher_top_k)
  name = None
  if isinstance(kind, str):  # host-known: only its branch is traced
    name, kind = kind, jnp.int32(divergences.index(kind))
    if h_t_BRD is None and divergences.divergence(name).teacher:
      raise ValueError(f"divergence {name!r} compares with the teacher: give its hidden states")
  if targets_BR is None:
    targets_BR = jnp.zeros((B, R), jnp.int32)
  static = (min(chunk, R), float(temperature), float(jsd_beta), float(akl_mu),
            int(teacher_top_k), name, row_sharding)
  return _fused(static, h_s_BRD, w_s_DV, h_t_BRD, w_t_DV, mask_BR,
                jax.lax.stop_gradient(coef_B.astype(jnp.float32)), targets_BR, kind)


# --- Offline top-k teacher: the same fused pass against stored teacher log-probabilities ------
# (teacher_logits.py writes them; losses.offline_forward_kl defines the divergence). No teacher
# matmul at all: per chunk only the student's [B, C, V] logits (and a [B, C, V] membership mask
# of the stored ids, for the student's tail mass).


def _offline_forward(static, h_s, w_s, ids, logp_t, log_tail, mask, coef):
  chunk, temperature, rows = static
  rowwise = (lambda x: jax.lax.with_sharding_constraint(x, rows)) if rows is not None else (
      lambda x: x)
  R = h_s.shape[1]
  K = ids.shape[-1]
  n = -(-R // chunk)
  pad = n * chunk - R
  padR = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
  h_s, mask, ids, logp_t, log_tail = (padR(x) for x in (h_s, mask, ids, logp_t, log_tail))
  cut = lambda x, i: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)
  # A masked position's stored arrays are never read: it scores ids 0..k-1 with no tail, so
  # padding (whatever its values) cannot put NaN or out-of-range ids into the chunk.
  pad_ids = jnp.arange(K, dtype=jnp.int32) % w_s.shape[1]

  def body(i, carry):
    h_s_c, m = rowwise(cut(h_s, i)), rowwise(cut(mask, i))
    keep = (m > 0)[..., None]
    ids_c = jnp.where(keep, rowwise(cut(ids, i)).astype(jnp.int32), pad_ids)
    logp_c = jnp.where(keep, rowwise(cut(logp_t, i)).astype(jnp.float32), -jnp.log(K))
    tail_c = jnp.where(m > 0, rowwise(cut(log_tail, i)).astype(jnp.float32), -jnp.inf)
    h_s_c = jnp.where(keep, h_s_c, jnp.zeros((), h_s_c.dtype))
    z_s = jnp.einsum("BCD,DV->BCV", h_s_c, w_s, preferred_element_type=jnp.float32)
    m32 = m.astype(jnp.float32)
    d_BC, vjp = jax.vjp(
        lambda z: losses.offline_forward_kl(ids_c, logp_c, tail_c, z, temperature), z_s)
    dz = vjp(coef[:, None] * m32)[0]
    d_BC = jnp.where(m32 > 0, d_BC, 0.0) * m32
    return _accumulate(carry, d_BC, dz, keep, h_s_c, w_s, i, chunk, rowwise)

  return _chunk_loop(body, n, h_s, w_s, coef, R, rowwise)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_offline(static, h_s, w_s, ids, logp_t, log_tail, mask, coef):
  return _offline_forward(static, h_s, w_s, ids, logp_t, log_tail, mask, coef)[0]


def _fused_offline_fwd(static, h_s, w_s, ids, logp_t, log_tail, mask, coef):
  return _offline_forward(static, h_s, w_s, ids, logp_t, log_tail, mask, coef)


def _fused_offline_bwd(static, res, ct):
  return _scaled_grads(res, ct, 5)  # ids, logp_t, log_tail, mask, coef


_fused_offline.defvjp(_fused_offline_fwd, _fused_offline_bwd)


def fused_offline_forward_kl(h_s_BRD, w_s_DV, ids_BRK, logp_t_BRK, log_tail_BR, mask_BR, coef_B,
                             *, chunk: int, temperature: float = 1.0, row_sharding=None):
  """(loss, sums_B) with loss = sum_b coef_b sum_r mask_br d_br, d the offline top-k forward KL
  (losses.offline_forward_kl) of the student's logits h_s @ w_s against the stored teacher
  arrays: ids [B, R, k] (int), logp [B, R, k] (at `temperature`), log_tail [B, R].

  Chunked like fused_divergence_loss (same gradient-in-the-forward structure, same `chunk` and
  `row_sharding`); differentiable inputs h_s and w_s; the teacher arrays, mask and coef are
  constants. Masked positions (mask 0) never read their stored arrays: pad them with anything
  (e.g. zeros)."""
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be >= 1 (use losses.offline_forward_kl on h @ w for "
                     "the unchunked reference)")
  B, R, _ = h_s_BRD.shape
  K = ids_BRK.shape[-1]
  if ids_BRK.shape != (B, R, K) or logp_t_BRK.shape != (B, R, K) or (
      log_tail_BR.shape != (B, R)):
    raise ValueError(f"offline teacher arrays ids {ids_BRK.shape}, logp {logp_t_BRK.shape}, "
                     f"log_tail {log_tail_BR.shape} do not match the rows [B, R] = {(B, R)}")
  if K > w_s_DV.shape[1]:
    raise ValueError(f"k={K} stored ids exceed the vocabulary of {w_s_DV.shape[1]}")
  static = (min(chunk, R), float(temperature), row_sharding)
  return _fused_offline(static, h_s_BRD, w_s_DV, ids_BRK, logp_t_BRK, log_tail_BR, mask_BR,
                        jax.lax.stop_gradient(coef_B.astype(jnp.float32)))
