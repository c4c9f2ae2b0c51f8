"""One NNX decoder-only transformer covering Llama-3, Qwen2/2.5 and Qwen3.

Shape letters (see the package docstring): B batch, T query length, S key/cache length,
D model, N query heads, K kv heads, G = N // K, H head dim, F mlp, V vocab.

Every parameter carries `logical_axes` metadata; `paced_jax.sharding.LOGICAL_RULES` maps them
to mesh axes. Masks are by slot index (causal) and segment id; positions only feed RoPE.

KV cache convention ([B, K, S, H] per layer): rows are right-padded; row b owns cache slots [0, end_B[b]). `extend`
writes T new tokens of row b at slots end_B[b] .. end_B[b]+T-1 and then advances end_B[b] by
`lengths_B[b]` (default T). Slots written past a row's length hold garbage that no valid query
can see (causality) and that the next call overwrites.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax.config import ModelConfig

_NEG = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked row never yields NaN

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@flax.struct.dataclass
class KVCache:
  k: tuple[jax.Array, ...]  # per layer [B, K, S, H]: attention reads it without a transpose
  v: tuple[jax.Array, ...]
  end_B: jax.Array  # int32: filled slots per row == next write slot

  @property
  def max_len(self) -> int:
    return self.k[0].shape[2]


def _init(rngs: nnx.Rngs, shape, dtype):
  return nnx.initializers.normal(0.02)(rngs.params(), shape, dtype)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)  # statistics in fp32 whatever the compute dtype
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Linear(nnx.Module):
  """A projection written as one einsum; kernel and bias carry logical axes."""

  def __init__(self, eq: str, shape, axes, *, bias_axes=None, dtype, param_dtype, rngs):
    self.eq, self.dtype = eq, dtype
    self.kernel = nnx.Param(_init(rngs, shape, param_dtype), logical_axes=axes)
    bias_shape = shape[len(shape) - len(bias_axes or ()):]
    self.bias = (nnx.Param(jnp.zeros(bias_shape, param_dtype), logical_axes=bias_axes)
                 if bias_axes is not None else None)

  def __call__(self, x):
    y = jnp.einsum(self.eq, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [H/2], with Llama-3 scaling when `cfg.rope_scaling` is set."""
  H = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, H, 2, dtype=np.float64) / H))
  sc = cfg.rope_scaling
  if sc is None:
    return inv.astype(np.float32)
  low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
  high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
  smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
      sc.high_freq_factor - sc.low_freq_factor)
  smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BTNH, positions_BT, inv_freq):
  """Rotary embedding, half-split layout (as in Hugging Face Llama/Qwen), computed in fp32."""
  ang_BTh = positions_BT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  sin, cos = jnp.sin(ang_BTh)[:, :, None, :], jnp.cos(ang_BTh)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def _write_rows(cache_BKSH, new_BTKH, start_B):
  # One dynamic_update_slice per row (a scatter under vmap); in place when the cache is donated.
  new_BKTH = jnp.swapaxes(new_BTKH, 1, 2).astype(cache_BKSH.dtype)
  return jax.vmap(lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, s, 0)))(
      cache_BKSH, new_BKTH, start_B)


def blocked_decode_attention(q_BKGH, k_BKSH, v_BKSH, valid_B, num_blocks, block: int):
  """One query per row over cache slots [0, valid_B[b]), visiting only the first `num_blocks`
  blocks of `block` slots (a traced count: the cost follows the filled length, not S).

  Online softmax (running max and sum per head, fp32) over blocks; equals the masked full
  softmax up to float rounding. S must be a multiple of `block`; a row with valid_B = 0 gets a
  finite average of its first blocks (callers ignore such rows).
  """
  B, K, G, H = q_BKGH.shape
  q_BKGH = q_BKGH * jnp.asarray(H ** -0.5, q_BKGH.dtype)

  def body(j, carry):
    m_BKG, l_BKG, acc_BKGH = carry
    k_BKCH = jax.lax.dynamic_slice_in_dim(k_BKSH, j * block, block, axis=2)
    v_BKCH = jax.lax.dynamic_slice_in_dim(v_BKSH, j * block, block, axis=2)
    s_BKGC = jnp.einsum("BKGH,BKCH->BKGC", q_BKGH, k_BKCH.astype(q_BKGH.dtype),
                        preferred_element_type=jnp.float32)
    slot_C = j * block + jnp.arange(block, dtype=jnp.int32)
    s_BKGC = jnp.where((slot_C[None] < valid_B[:, None])[:, None, None], s_BKGC, _NEG)
    m_new_BKG = jnp.maximum(m_BKG, jnp.max(s_BKGC, axis=-1))
    p_BKGC = jnp.exp(s_BKGC - m_new_BKG[..., None])
    scale_BKG = jnp.exp(m_BKG - m_new_BKG)
    pv_BKGH = jnp.einsum("BKGC,BKCH->BKGH", p_BKGC.astype(v_BKCH.dtype), v_BKCH,
                         preferred_element_type=jnp.float32)
    return (m_new_BKG, l_BKG * scale_BKG + jnp.sum(p_BKGC, axis=-1),
            acc_BKGH * scale_BKG[..., None] + pv_BKGH)

  init = (jnp.full((B, K, G), _NEG, jnp.float32), jnp.zeros((B, K, G), jnp.float32),
          jnp.zeros((B, K, G, H), jnp.float32))
  _, l_BKG, acc_BKGH = jax.lax.fori_loop(0, num_blocks, body, init)
  return (acc_BKGH / l_BKG[..., None]).astype(q_BKGH.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
    D, N, K, H = cfg.hidden, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    qb = ("heads", "head_dim") if cfg.qkv_bias else None
    kvb = ("kv_heads", "head_dim") if cfg.qkv_bias else None
    self.q_proj = Linear("BTD,DNH->BTNH", (D, N, H), ("embed", "heads", "head_dim"),
                         bias_axes=qb, **kw)
    self.k_proj = Linear("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                         bias_axes=kvb, **kw)
    self.v_proj = Linear("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                         bias_axes=kvb, **kw)
    self.o_proj = Linear("BTNH,NHD->BTD", (N, H, D), ("heads", "head_dim", "embed"), **kw)
    self.q_norm = RMSNorm(H, cfg.rms_eps, param_dtype) if cfg.qk_norm else None
    self.k_norm = RMSNorm(H, cfg.rms_eps, param_dtype) if cfg.qk_norm else None
    self.num_kv_heads, self.head_dim = K, H

  def __call__(self, x_BTD, positions_BT, mask_BTS, inv_freq, kv=None, start_B=None,
               bounded=None):
    q_BTNH, k_BTKH, v_BTKH = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
    if self.q_norm is not None:
      q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
    q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq)
    k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)
    if kv is not None:  # cached: attend over all S slots of the (updated) cache
      k_BKSH, v_BKSH = _write_rows(kv[0], k_BTKH, start_B), _write_rows(kv[1], v_BTKH, start_B)
      new_kv = (k_BKSH, v_BKSH)
    else:
      k_BKSH, v_BKSH = jnp.swapaxes(k_BTKH, 1, 2), jnp.swapaxes(v_BTKH, 1, 2)
      new_kv = None
    B, T, N, H = q_BTNH.shape
    K = self.num_kv_heads
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    if bounded is not None:  # one-token decode over the first num_blocks * block cache slots
      valid_B, num_blocks, block = bounded
      o_BKGH = blocked_decode_attention(q_BTKGH[:, 0], k_BKSH, v_BKSH, valid_B, num_blocks,
                                        block)
      return self.o_proj(o_BKGH.reshape(B, 1, N, H)), new_kv
    s_BKGTS = jnp.einsum("BTKGH,BKSH->BKGTS", q_BTKGH, k_BKSH.astype(q_BTKGH.dtype),
                         preferred_element_type=jnp.float32) * (H ** -0.5)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, _NEG)
    p_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1).astype(q_BTNH.dtype)  # fp32 softmax
    o_BTKGH = jnp.einsum("BKGTS,BKSH->BTKGH", p_BKGTS, v_BKSH.astype(p_BKGTS.dtype))
    return self.o_proj(o_BTKGH.reshape(B, T, N, H)), new_kv


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
    D, F = cfg.hidden, cfg.mlp_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear("BTD,DF->BTF", (D, F), ("embed", "mlp"), **kw)
    self.up_proj = Linear("BTD,DF->BTF", (D, F), ("embed", "mlp"), **kw)
    self.down_proj = Linear("BTF,FD->BTD", (F, D), ("mlp", "embed"), **kw)

  def __call__(self, x_BTD):
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype)
    self.attn = Attention(cfg, dtype, param_dtype, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype)
    self.mlp = MLP(cfg, dtype, param_dtype, rngs)

  def __call__(self, x_BTD, positions_BT, mask_BTS, inv_freq, kv=None, start_B=None,
               bounded=None):
    a_BTD, new_kv = self.attn(self.input_norm(x_BTD), positions_BT, mask_BTS, inv_freq, kv,
                              start_B, bounded)
    x_BTD = x_BTD + a_BTD
    return x_BTD + self.mlp(self.post_attn_norm(x_BTD)), new_kv


def _block_apply(block, x_BTD, positions_BT, mask_BTS, inv_freq):
  return block(x_BTD, positions_BT, mask_BTS, inv_freq)[0]


class Decoder(nnx.Module):
  """`model(tokens_BT) -> logits_BTV`; `model.extend(tokens_BT, cache)` for cached decoding."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.dtype = dtype
    self.embed = nnx.Param(_init(rngs, (cfg.vocab_size, cfg.hidden), param_dtype),
                           logical_axes=("vocab", "embed"))
    self.layers = nnx.List([Block(cfg, dtype, param_dtype, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden, cfg.rms_eps, param_dtype)
    self.lm_head = (nnx.Param(_init(rngs, (cfg.hidden, cfg.vocab_size), param_dtype),
                              logical_axes=("embed", "vocab"))
                    if not cfg.tie_embeddings else None)

  # -- full-sequence forward (training, scoring) --------------------------------------------

  def hidden(self, tokens_BT, positions_BT=None, segment_ids_BT=None, constrain=None):
    """Final-norm hidden states [B, T, D] for a whole sequence (causal, optional packing).

    `constrain(x, logical_axes)`: a sharding constraint by logical axis names (e.g. from
    `paced_jax.sharding.logical_sharding`), applied to the embedding table as it is read (its
    rows whole: FSDP gathers weights, not activations) and to the residual stream after the
    embedding and every block (rows over the batch axes). Without it XLA lets the table's
    layout, D over fsdp, leak into the activations and reshards them by full
    rematerialisation."""
    B, T = tokens_BT.shape
    act = (lambda x: constrain(x, ("batch", "length", "act_embed"))) if constrain else (
        lambda x: x)
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    mask_BTS = jnp.tril(jnp.ones((T, T), bool))[None]
    if segment_ids_BT is not None:
      mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
    mask_BTS = jnp.broadcast_to(mask_BTS, (B, T, T))
    x_BTD = act(self._embed(tokens_BT, constrain))
    inv_freq = rope_inv_freq(self.cfg)  # a trace-time constant, not a parameter
    apply = _block_apply
    if self.cfg.remat != "none":
      apply = nnx.remat(_block_apply, policy=REMAT_POLICIES[self.cfg.remat])
    for block in self.layers:
      x_BTD = act(apply(block, x_BTD, positions_BT, mask_BTS, inv_freq))
    return self.final_norm(x_BTD)

  def unembedding(self):
    """The output projection W_DV (the transposed embedding when tied), in compute dtype.

    Chunked losses take it once and apply it per chunk, so [B, T, V] logits never exist.
    """
    w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
    return w.astype(self.dtype)

  def logits(self, h_BTD):
    """Unembedding; callers that only need some positions (or chunks) pass just those."""
    return jnp.einsum("BTD,DV->BTV", h_BTD.astype(self.dtype), self.unembedding())

  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    return self.logits(self.hidden(tokens_BT, positions_BT, segment_ids_BT))

  # -- cached incremental decoding -----------------------------------------------------------

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    cfg = self.cfg
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    dtype = dtype or self.dtype
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(k=zeros(), v=zeros(), end_B=jnp.zeros((batch,), jnp.int32))

  def extend_hidden(self, tokens_BT, cache: KVCache, lengths_B=None):
    """Appends T tokens per row to the cache; returns (hidden [B, T, D], new cache).

    Prefill is `extend_hidden(prompts_BT, empty_cache, prompt_lengths_B)`; a decode step is
    `extend_hidden(next_BT[:, None], cache)`.
    """
    B, T = tokens_BT.shape
    start_B = cache.end_B
    slots_BT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    mask_BTS = jnp.arange(cache.max_len, dtype=jnp.int32)[None, None, :] <= slots_BT[:, :, None]
    x_BTD = self._embed(tokens_BT)
    inv_freq = rope_inv_freq(self.cfg)
    ks, vs = [], []
    for block, k, v in zip(self.layers, cache.k, cache.v):
      x_BTD, (k, v) = block(x_BTD, slots_BT, mask_BTS, inv_freq, (k, v), start_B)
      ks.append(k)
      vs.append(v)
    lengths_B = jnp.full((B,), T, jnp.int32) if lengths_B is None else lengths_B
    new = KVCache(k=tuple(ks), v=tuple(vs), end_B=start_B + lengths_B.astype(jnp.int32))
    return self.final_norm(x_BTD), new

  def decode_hidden(self, tokens_B1, cache: KVCache, num_blocks, block: int):
    """One decode step whose attention reads only the first `num_blocks` (traced) blocks of
    `block` cache slots; each row attends over its slots [0, end_B] (the new token included).
    The caller picks num_blocks >= ceil((max end_B + 1) / block) over the rows it reads.
    Returns (hidden [B, 1, D], cache advanced by one)."""
    start_B = cache.end_B
    x_BTD = self._embed(tokens_B1)
    inv_freq = rope_inv_freq(self.cfg)
    bounded = (start_B + 1, num_blocks, block)
    ks, vs = [], []
    for blk, k, v in zip(self.layers, cache.k, cache.v):
      x_BTD, (k, v) = blk(x_BTD, start_B[:, None], None, inv_freq, (k, v), start_B, bounded)
      ks.append(k)
      vs.append(v)
    return self.final_norm(x_BTD), KVCache(k=tuple(ks), v=tuple(vs), end_B=start_B + 1)

  def extend(self, tokens_BT, cache: KVCache, lengths_B=None):
    h_BTD, cache = self.extend_hidden(tokens_BT, cache, lengths_B)
    return self.logits(h_BTD), cache

  def _embed(self, tokens_BT, constrain=None):
    table = self.embed[...]
    if constrain is not None:
      table = constrain(table, ("vocab", None))
    return jnp.take(table, tokens_BT, axis=0).astype(self.dtype)
