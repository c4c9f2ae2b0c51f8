"""Token-level divergences between teacher and student next-token distributions.

Everything here is fp32, masked, and returns per-example SUMS and token COUNTS, so the caller
decides how to normalise (token mean over the batch, or per-example means weighted by frontier
weights). Padding never changes a loss: masked tokens contribute exactly 0 to sums and counts.

Conventions: `logits_*_BRV` are scored positions (R of them per row); `mask_BR` marks the valid
ones; `targets_BR` are the next tokens (only cross-entropy uses them). With temperature tau both
distributions are softened by tau and the divergence is multiplied by tau^2 (Hinton et al.), so
gradient magnitudes stay comparable across temperatures.

Divergences (p = teacher, q = student, per token, summed over the vocabulary):
  forward_kl   KL(p || q)                        mode covering; off-policy distillation
  reverse_kl   KL(q || p)                        mode seeking; on the student's own rollouts
  jsd          beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q   (generalised JSD,
               the GKD / TRL convention): beta = 0 is forward KL(p||q), beta = 1 reverse KL(q||p)
               (the limits of JSD/beta and JSD/(1-beta), returned exactly at the end points)
  akl          g_head KL(p||q) + g_tail KL(q||p) (Wu et al. 2024, as their reference code): sort
               the vocabulary by teacher probability; the head is the ranks whose INCLUSIVE
               cumulative teacher mass is <= mu, rank 0 always included; g_head and g_tail are
               the (stop-gradient) shares of sum |p - q| over the head and the tail
  ce           -log q(target)                    plain SFT on the reference tokens
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from paced_jax import divergences

DIVERGENCES = divergences.NAMES  # the table's names: a traced divergence indexes them


def _kl(logp, logq):
  """KL(p || q) over the last axis from log-probabilities; 0 * log 0 treated as 0."""
  p = jnp.exp(logp)
  return jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)


def forward_kl(logp_t, logq_s, **_):
  return _kl(logp_t, logq_s)


def reverse_kl(logp_t, logq_s, **_):
  return _kl(logq_s, logp_t)


def jsd(logp_t, logq_s, *, beta=0.5, **_):
  if beta <= 0.0:  # JSD/beta -> KL(p||q) as beta -> 0 (m -> q); GKD returns the limit there
    return forward_kl(logp_t, logq_s)
  if beta >= 1.0:  # JSD/(1-beta) -> KL(q||p) as beta -> 1 (m -> p)
    return reverse_kl(logp_t, logq_s)
  logm = jnp.logaddexp(jnp.log(beta) + logp_t, jnp.log1p(-beta) + logq_s)
  return beta * _kl(logp_t, logm) + (1.0 - beta) * _kl(logq_s, logm)


def akl(logp_t, logq_s, *, mu=0.5, **_):
  p, q = jnp.exp(logp_t), jnp.exp(logq_s)
  # Ranks by teacher probability (stable: ties keep vocabulary order). Head: inclusive
  # cumulative mass <= mu, and the top token always.
  order = jnp.argsort(-p, axis=-1, stable=True)
  p_sorted = jnp.take_along_axis(p, order, axis=-1)
  q_sorted = jnp.take_along_axis(q, order, axis=-1)
  head = jnp.cumsum(p_sorted, axis=-1) <= mu
  head = head.at[..., 0].set(True)
  gap = jax.lax.stop_gradient(jnp.abs(p_sorted - q_sorted))
  g_head = jnp.sum(jnp.where(head, gap, 0.0), -1)
  g_tail = jnp.sum(jnp.where(head, 0.0, gap), -1)
  total = jnp.maximum(g_head + g_tail, 1e-12)
  return (g_head / total) * _kl(logp_t, logq_s) + (g_tail / total) * _kl(logq_s, logp_t)


def cross_entropy(logp_t, logq_s, *, targets=None, **_):
  del logp_t
  return -jnp.take_along_axis(logq_s, targets[..., None], axis=-1)[..., 0]


_FNS = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd, "akl": akl,
        "ce": cross_entropy}


def _log_softmax32(logits, temperature):
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _topk_teacher(logp_t, logq_s, k):
  """Restricts both distributions to the teacher's top-k tokens, teacher renormalised there.

  The student keeps its full-vocabulary log-probabilities on those k tokens (no
  renormalisation): mass it puts outside the teacher's support is then penalised only through
  the normaliser, as in sparse logit distillation. Forward KL only.
  """
  top_logp, idx = jax.lax.top_k(logp_t, k)
  top_logp = top_logp - jax.nn.logsumexp(top_logp, axis=-1, keepdims=True)
  return top_logp, jnp.take_along_axis(logq_s, idx, axis=-1)


def token_divergence(logits_t_BRV, logits_s_BRV, kind: str | jax.Array, *, targets_BR=None,
                     temperature: float = 1.0, jsd_beta: float = 0.5, akl_mu: float = 0.5,
                     teacher_top_k: int = 0):
  """Per-token divergence [B, R] in fp32 (unmasked). `kind` is a name or a traced index into
  DIVERGENCES (a traced index lets one compiled step switch divergence, e.g. two-stage)."""
  logp_t = _log_softmax32(logits_t_BRV, temperature) if logits_t_BRV is not None else None
  logq_s = _log_softmax32(logits_s_BRV, temperature)
  kw = dict(beta=jsd_beta, mu=akl_mu, targets=targets_BR)
  if isinstance(kind, str) and logp_t is None and divergences.divergence(kind).teacher:
    raise ValueError(f"divergence {kind!r} compares with the teacher: give its logits")
  divergences.check_top_k(kind, teacher_top_k)
  if teacher_top_k:
    logp_t, logq_s = _topk_teacher(logp_t, logq_s, teacher_top_k)
  scale = temperature ** 2
  if isinstance(kind, str):
    divergences.divergence(kind)  # one error for an unknown name
    return scale * _FNS[kind](logp_t, logq_s, **kw)
  if targets_BR is None:  # every branch is traced; cross-entropy's must see some targets
    kw["targets"] = jnp.zeros(logq_s.shape[:-1], jnp.int32)
  branches = [functools.partial(_FNS[name], **kw) for name in DIVERGENCES]
  if logp_t is None:
    logp_t = jnp.zeros_like(logq_s)
  return scale * jax.lax.switch(kind, branches, logp_t, logq_s)


def masked_sums(tok_BR, mask_BR):
  """(per-example sum [B], per-example token count [B]); masked tokens contribute 0."""
  mask = mask_BR.astype(jnp.float32)
  return jnp.sum(jnp.where(mask > 0, tok_BR, 0.0) * mask, axis=-1), jnp.sum(mask, axis=-1)


def linear_divergence(h_t_BRD, w_t_DV, h_s_BRD, w_s_DV, mask_BR, kind, *, targets_BR=None,
                      **kw):
  """Divergence of the logits `h @ w`, unchunked: the [B, R, V] logits exist at once and plain
  autodiff differentiates them (loss.chunk_size=0, and the reference that the fused chunked loss,
  fused_loss.py, is tested against). `h_t_BRD`/`w_t_DV` may be None for cross-entropy. Returns
  (sums [B], counts [B]).
  """
  B, R, _ = h_s_BRD.shape
  if targets_BR is None:
    targets_BR = jnp.zeros((B, R), jnp.int32)
  has_teacher = h_t_BRD is not None
  # Masked rows are zeroed BEFORE the matmul: a non-finite hidden state at a padded position
  # then never reaches the logits, the loss or dW (0 * NaN in a matmul would be NaN).
  keep = (mask_BR > 0)[..., None]
  h_s = jnp.where(keep, h_s_BRD, jnp.zeros((), h_s_BRD.dtype))
  h_t = jnp.where(keep, h_t_BRD, jnp.zeros((), h_t_BRD.dtype)) if has_teacher else None
  logits_s = jnp.einsum("BRD,DV->BRV", h_s, w_s_DV, preferred_element_type=jnp.float32)
  logits_t = (jnp.einsum("BRD,DV->BRV", h_t, w_t_DV, preferred_element_type=jnp.float32)
              if has_teacher else None)
  tok = token_divergence(logits_t, logits_s, kind, targets_BR=targets_BR, **kw)
  return masked_sums(tok, mask_BR)


NORMALISATIONS = ("token", "sequence")


def normalise_coefs(counts_B, weights_B=None, mode: str = "token"):
  """coef_B such that the batch loss is sum_b coef_b * sums_b (per-example weights w_b: 1 when
  sampling by pi; the frontier loss weights in loss-weight mode):

    token     sum_b w_b sum_t l_bt / sum_b w_b n_b        (a token mean: long responses count
                                                           more; the default)
    sequence  sum_b w_b (sum_t l_bt / n_b) / sum_b w_b    (each example counts once; rows with
                                                           n_b = 0 are left out)

  Both uses of the frontier weights share this, so "sample by pi" and "weight by w" differ only
  in how w enters. All weights zero gives coef 0 (the step then skips its update). The coefs
  depend on counts and weights only: no gradient flows through them.
  """
  c = counts_B.astype(jnp.float32)
  w = jnp.ones_like(c) if weights_B is None else weights_B.astype(jnp.float32)
  if mode == "token":
    return w / jnp.maximum(jnp.sum(w * c), 1e-12)
  if mode == "sequence":
    w = w * (c > 0)
    return w / (jnp.maximum(c, 1.0) * jnp.maximum(jnp.sum(w), 1e-12))
  raise ValueError(f"loss.normalise={mode!r} must be one of {', '.join(NORMALISATIONS)}")


def normalise(sums_B, counts_B, weights_B=None, mode: str = "token"):
  """The batch loss sum_b coef_b * sums_b; see normalise_coefs."""
  return jnp.sum(normalise_coefs(counts_B, weights_B, mode) * sums_B)


def gather_positions(x_BT, idx_BR):
  """x[b, idx[b, r]] for [B, T] or [B, T, D] arrays."""
  if x_BT.ndim == 2:
    return jnp.take_along_axis(x_BT, idx_BR, axis=1)
  return jnp.take_along_axis(x_BT, idx_BR[..., None], axis=1)


def scored_positions(loss_mask_BT, num: int):
  """Indices [B, num] of the first `num` positions with loss_mask=1, in order, and their
  validity. Ordered gathering aligns the k-th response token of two different sequences (the
  student's prompt and the teacher's privileged prompt) without knowing the offsets."""
  mask = loss_mask_BT > 0
  idx = jnp.argsort(~mask, axis=1, stable=True)[:, :num].astype(jnp.int32)
  return idx, jnp.take_along_axis(mask, idx, axis=1)


def offline_forward_kl(ids_BRK, logp_t_BRK, log_tail_BR, logq_s_BRV, temperature: float = 1.0):
  """Per-token forward KL [B, R] (fp32, unmasked) against an OFFLINE top-k teacher: the
  teacher's k stored token ids and log-probabilities, plus the mass of everything else.

  The two distributions are compared over k + 1 buckets, the k ids S and one "tail" bucket:
    P_i    = exp(logp_t_i), i in S   the teacher's log-probabilities at the loss temperature,
                                     normalised over the FULL vocabulary (not renormalised on S)
    P_tail = exp(log_tail)           = 1 - sum_S P_i, stored as a log (teacher_logits.py)
    Q_i    = q(i), i in S            the student's full-vocabulary softmax at the temperature
    Q_tail = sum_{j not in S} q(j)   = 1 - sum_S Q_i, computed as a logsumexp over the complement
                                     (exact: no cancellation when the tail is tiny)
    KL     = temperature^2 * [sum_S P_i (log P_i - log Q_i) + P_tail (log P_tail - log Q_tail)]
  with 0 log 0 = 0 (a tail bucket with P_tail = 0, i.e. exp(log_tail) underflows to 0, adds
  exactly 0 and sends no gradient). With k = V (every id) and log_tail = -inf this is
  token_divergence(teacher_logits, student_logits, "forward_kl").

  `ids_BRK` int: k DISTINCT ids in [0, V) per position (no padding value: padded positions are
  masked by the caller; their ids must still be in range). `logp_t_BRK`, `log_tail_BR`: any float
  dtype (computed in fp32). `logq_s_BRV`: the student's logits, or its log-probabilities at
  temperature 1 -- either gives the same log_softmax(x / temperature), as they differ by a
  per-position constant. The ids must cover fewer than V tokens whenever P_tail > 0 (else the
  student's tail is empty and the KL infinite).
  """
  logq = _log_softmax32(logq_s_BRV, temperature)
  ids = ids_BRK.astype(jnp.int32)
  logp = logp_t_BRK.astype(jnp.float32)
  log_tail = log_tail_BR.astype(jnp.float32)
  head = _kl(logp, jnp.take_along_axis(logq, ids, axis=-1))
  # The student's tail: logsumexp of log q over the ids NOT stored.
  in_s = _scatter_true(ids, logq.shape)
  p_tail = jnp.exp(log_tail)
  has_tail = p_tail > 0
  # Double where: rows without a tail take a dummy finite logsumexp (no NaN gradient from an
  # empty complement).
  comp = jnp.where(has_tail[..., None], jnp.where(in_s, -jnp.inf, logq), 0.0)
  log_q_tail = jax.nn.logsumexp(comp, axis=-1)
  safe_log_tail = jnp.where(has_tail, log_tail, 0.0)
  tail = jnp.where(has_tail, p_tail * (safe_log_tail - log_q_tail), 0.0)
  return temperature ** 2 * (head + tail)


def _scatter_true(ids_BRK, shape_BRV):
  """Boolean [..., V], True at the k ids of each position (ids in [0, V); others dropped)."""
  lead = ids_BRK.shape[:-1]
  n = len(lead)
  # A scatter whose leading axes are BATCHING dimensions (not iota indices): the SPMD
  # partitioner then keeps a row sharding of those axes (iota indices made it all-gather them).
  dnums = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(), inserted_window_dims=(n,), scatter_dims_to_operand_dims=(n,),
      operand_batching_dims=tuple(range(n)), scatter_indices_batching_dims=tuple(range(n)))
  return jax.lax.scatter(jnp.zeros((*lead, shape_BRV[-1]), bool), ids_BRK[..., None],
                         jnp.ones(ids_BRK.shape, bool), dnums,
                         mode=jax.lax.GatherScatterMode.FILL_OR_DROP)
