"""Batched generation: bucketed prefill + one `lax.while_loop` decode, all under ONE jit.

    out = generate(model, [[1, 5, 9], [1, 7]], rng=0, knobs=Knobs(temperature=0.7, top_p=0.95,
                   max_new_tokens=64), eos_id=2, pad_id=0, rollouts=4)
    out.tokens_BS   # [2*4, 64] row b = prompt b // 4, rollout b % 4; pad_id after EOS
    out.logprobs_BS # log-prob of each chosen token under the distribution it was drawn from
    out.lengths_B   # generated tokens per row, EOS included

Compilation: one program per (rows, prompt bucket, budget bucket, strategy). Prompts are
right-padded to the smallest of `prompt_buckets` that fits; the KV cache holds prompt bucket +
budget bucket slots, the budget bucket being the smallest of `budget_buckets` >= the largest
per-row `max_new_tokens`. The knobs (temperature, top-k, top-p, max_new_tokens) are per-row traced
arrays: changing them never recompiles (Tunix and the flax example bake the temperature into the
program).

RNG: row b draws step t from `fold_in(fold_in(rng, row_offset + b), t)`, so a row's rollout does
not depend on how rows are sharded or which other rows share the batch.

The decode loop carries a small state pytree (`DecodeState`); XLA updates the while-loop carry
(KV cache, token buffers) in place, so no step copies the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from paced_jax.config import ConfigError, SampleConfig, pick_bucket
from paced_jax.models.transformer import Decoder, KVCache
from paced_jax.sharding import batch_shards, constrain, logical_sharding

_F32_MIN = float(np.finfo(np.float32).min)  # finite "minus infinity": no inf - inf NaNs


@flax.struct.dataclass
class Knobs:
  """Sampling knobs: scalars (every row) or one value per prompt or per row. All traced.

  temperature 0 means greedy for that row; top_k 0 and top_p 1 mean off.
  """

  temperature: Any = 1.0
  top_k: Any = 0
  top_p: Any = 1.0
  max_new_tokens: Any = 128

  @classmethod
  def from_config(cls, cfg: SampleConfig) -> Knobs:
    return cls(cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens)


@flax.struct.dataclass
class SampleOutput:
  tokens_BS: jax.Array  # int32, pad_id after a row's end
  logprobs_BS: jax.Array  # float32, 0 after a row's end
  lengths_B: jax.Array  # int32, generated tokens including the stop token
  # What the program computed, for compute accounting (flops.generate_flops): tokens sampled
  # per row slot (the prefill's pick + decode iterations), and the static shapes it ran at.
  steps: jax.Array | None = None  # int32 scalar
  rows: int = flax.struct.field(pytree_node=False, default=0)  # rows incl. padding rows
  prompt_len: int = flax.struct.field(pytree_node=False, default=0)  # prompt bucket
  cache_len: int = flax.struct.field(pytree_node=False, default=0)  # KV slots attended


@flax.struct.dataclass
class DecodeState:
  step: jax.Array  # int32 scalar: tokens sampled so far (by every row)
  last_B: jax.Array  # the token each row feeds next
  cache: KVCache
  tokens_BS: jax.Array
  logprobs_BS: jax.Array
  lengths_B: jax.Array
  done_B: jax.Array


# ----------------------------------------------------------------------------- strategies


def top_k_top_p_mask(logits_BV: jax.Array, top_k_B: jax.Array, top_p_B: jax.Array) -> jax.Array:
  """True where a token survives top-k then top-p (nucleus) filtering, per row.

  A token is kept if it is among the k largest and the probability mass strictly above it is
  below p, so the most likely token always survives. Ties at the threshold are all kept.
  """
  V = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)
  k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, V), V)
  in_k_BV = jnp.arange(V)[None] < k_B[:, None]
  probs_BV = jax.nn.softmax(jnp.where(in_k_BV, sorted_BV, _F32_MIN), axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass strictly above each token
  keep_BV = in_k_BV & ((before_BV < top_p_B[:, None]) | (top_p_B[:, None] >= 1.0))
  n_keep_B = jnp.maximum(jnp.sum(keep_BV, axis=-1), 1)
  thresh_B = jnp.take_along_axis(sorted_BV, (n_keep_B - 1)[:, None], axis=-1)
  return logits_BV >= thresh_B


def argmax(x_BV: jax.Array) -> jax.Array:
  """First index of the row maximum. Two plain reductions: XLA:CPU lowers `jnp.argmax` to a
  variadic reduce that is ~10x slower, which at 4k+ vocabularies costs ms per decode step."""
  V = x_BV.shape[-1]
  max_B1 = jnp.max(x_BV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x_BV == max_B1, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def limit_vocab(logits_BV, vocab_limit: int):
  """Ids >= vocab_limit (padding rows of an embedding larger than the tokenizer) can never be
  drawn: their logits sit at float32 min. 0 is off."""
  if not vocab_limit or vocab_limit >= logits_BV.shape[-1]:
    return logits_BV
  real = jnp.arange(logits_BV.shape[-1]) < vocab_limit
  return jnp.where(real, logits_BV.astype(jnp.float32), _F32_MIN)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax; the knobs other than max_new_tokens are ignored; log-probs are 0 (deterministic).
  `vocab_limit` > 0: only ids below it (see limit_vocab)."""

  vocab_limit: int = 0

  def __call__(self, logits_BV, keys_B, knobs: Knobs):
    tok_B = argmax(limit_vocab(logits_BV, self.vocab_limit))
    return tok_B, jnp.zeros(tok_B.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Sample:
  """Temperature, then top-k, then top-p (the Hugging Face order), all per row and traced.

  The sort that top-k/top-p need is skipped at run time (`lax.cond`) when no row filters, so plain
  temperature sampling costs one softmax. A row with temperature 0 is greedy (log-prob 0).
  `vocab_limit` > 0: only ids below it are ever drawn (see limit_vocab).
  """

  vocab_limit: int = 0

  def __call__(self, logits_BV, keys_B, knobs: Knobs):
    logits_BV = limit_vocab(logits_BV.astype(jnp.float32), self.vocab_limit)
    greedy_B = knobs.temperature <= 0
    scaled_BV = logits_BV / jnp.where(greedy_B, 1.0, knobs.temperature)[:, None]
    filtering = jnp.any((knobs.top_k > 0) | (knobs.top_p < 1.0))
    scaled_BV = jax.lax.cond(
        filtering,
        lambda s: jnp.where(top_k_top_p_mask(s, knobs.top_k, knobs.top_p), s, _F32_MIN),
        lambda s: s, scaled_BV)
    logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    V = logits_BV.shape[-1]
    gumbel_BV = jax.vmap(lambda k: jax.random.gumbel(k, (V,), jnp.float32))(keys_B)
    # Gumbel-max == a categorical draw; excluded tokens sit at float32 min and never win. Greedy
    # rows add no noise: their argmax is the top logit, which every filter keeps.
    tok_B = argmax(logp_BV + jnp.where(greedy_B[:, None], 0.0, gumbel_BV))
    lp_B = jnp.take_along_axis(logp_BV, tok_B[:, None], axis=-1)[:, 0]
    return tok_B, jnp.where(greedy_B, 0.0, lp_B)


Strategy = Greedy | Sample


# ----------------------------------------------------------------------------- the jitted core


def constrain_cache(cache: KVCache, mesh: Mesh | None) -> KVCache:
  """The KV cache's k/v buffers [B, K, S, H] kept with their rows over the batch mesh axes."""
  axes = ("batch", "act_kv_heads", "length", None)
  return jax.tree.map(lambda x: constrain(x, mesh, axes) if x.ndim == 4 else x, cache)


def _step_keys(row_keys_B, step):
  return jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys_B)


def sample_core(graphdef, params, prompts_BP, prompt_lengths_B, knobs: Knobs, rng, row_ids_B,
                stop_ids_E, pad_id, *, budget: int, strategy: Strategy = Sample(),
                mesh: Mesh | None = None) -> SampleOutput:
  """Prefill + decode for right-padded prompts; call through `sample_jit` (jitted).

  graphdef/params: `nnx.split(model)`. knobs: per-row arrays (float32 / int32). rng: a key.
  row_ids_B: int32 ids folded into `rng` (one RNG stream per row). stop_ids_E: int32 token ids
  that end a row (E may be 0). budget: static cache room for new tokens (>= max_new_tokens).
  """
  model: Decoder = nnx.merge(graphdef, params)
  B, P = prompts_BP.shape
  cache = constrain_cache(model.init_cache(B, P + budget), mesh)
  row_keys_B = jax.vmap(lambda i: jax.random.fold_in(rng, i))(row_ids_B)
  max_new_B = jnp.clip(knobs.max_new_tokens, 1, budget)

  def pick(logits_BV, step, done_B, st_tokens, st_logprobs, lengths_B):
    tok_B, lp_B = strategy(logits_BV, _step_keys(row_keys_B, step), knobs)
    active_B = ~done_B
    tok_B = jnp.where(active_B, tok_B, pad_id)
    lp_B = jnp.where(active_B, lp_B, 0.0)
    stop_B = jnp.any(tok_B[:, None] == stop_ids_E[None], axis=-1)
    done_B = done_B | (active_B & stop_B) | (step + 1 >= max_new_B)
    return (tok_B, st_tokens.at[:, step].set(tok_B), st_logprobs.at[:, step].set(lp_B),
            lengths_B + active_B.astype(jnp.int32), done_B)

  # Prefill: one pass over the prompt bucket; logits only at each row's last prompt token.
  h_BPD, cache = model.extend_hidden(prompts_BP, cache, prompt_lengths_B)
  h_B1D = jnp.take_along_axis(h_BPD, (prompt_lengths_B - 1)[:, None, None], axis=1)
  logits_BV = model.logits(h_B1D)[:, 0]
  zeros_BS = constrain(jnp.zeros((B, budget), jnp.int32), mesh, ("batch", None))
  tok_B, tokens_BS, logprobs_BS, lengths_B, done_B = pick(
      logits_BV, 0, jnp.zeros((B,), bool), zeros_BS, zeros_BS.astype(jnp.float32),
      jnp.zeros((B,), jnp.int32))
  state = DecodeState(step=jnp.int32(1), last_B=tok_B, cache=cache, tokens_BS=tokens_BS,
                      logprobs_BS=logprobs_BS, lengths_B=lengths_B, done_B=done_B)

  def cond(st: DecodeState):
    return (st.step < budget) & ~jnp.all(st.done_B)

  def body(st: DecodeState) -> DecodeState:
    h_B1D, cache = model.extend_hidden(st.last_B[:, None], st.cache)
    logits_BV = model.logits(h_B1D)[:, 0]
    tok_B, tokens_BS, logprobs_BS, lengths_B, done_B = pick(
        logits_BV, st.step, st.done_B, st.tokens_BS, st.logprobs_BS, st.lengths_B)
    return DecodeState(step=st.step + 1, last_B=tok_B, cache=cache, tokens_BS=tokens_BS,
                       logprobs_BS=logprobs_BS, lengths_B=lengths_B, done_B=done_B)

  state = jax.lax.while_loop(cond, body, state)
  return SampleOutput(tokens_BS=state.tokens_BS, logprobs_BS=state.logprobs_BS,
                      lengths_B=state.lengths_B, steps=state.step)


sample_jit = jax.jit(sample_core, static_argnames=("graphdef", "budget", "strategy", "mesh"))


# ----------------------------------------------------------------------------- host wrapper


def per_row(x, dtype, n_prompts: int, rollouts: int, n_rows: int, name: str) -> np.ndarray:
  """A knob (scalar, one value per prompt, or one per row = rollout) as one value per row,
  padded to n_rows with the last value."""
  a = np.asarray(x, dtype)
  if a.ndim == 0:
    return np.full((n_rows,), a, dtype)
  if a.shape == (n_prompts,):
    a = np.repeat(a, rollouts)
  elif a.shape != (n_prompts * rollouts,):
    raise ConfigError(f"knob {name} has shape {a.shape}; give a scalar, one value per prompt "
                      f"({n_prompts}) or one per row ({n_prompts * rollouts})")
  return np.concatenate([a, np.full((n_rows - len(a),), a[-1], dtype)])


def check_knobs(k: Knobs) -> None:
  """One-line errors for knob values no sampler accepts (host-side, concrete values only)."""
  checks = [("temperature", k.temperature >= 0, ">= 0 (0 is greedy)"),
            ("top_k", k.top_k >= 0, ">= 0 (0 is off)"),
            ("top_p", (k.top_p > 0) & (k.top_p <= 1), "in (0, 1]"),
            ("max_new_tokens", k.max_new_tokens >= 1, ">= 1")]
  for name, ok, want in checks:
    if not np.all(ok):
      raise ConfigError(f"sampling knob {name}={np.asarray(getattr(k, name)).tolist()} must be "
                        f"{want}")


def pad_prompts(prompts: Sequence[Sequence[int]], width: int, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists to [len(prompts), width]; returns (tokens, lengths)."""
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  lengths = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
    lengths[i] = len(p)
  return tokens, lengths


def generate(model: Decoder, prompts: Sequence[Sequence[int]], *, rng: int | jax.Array,
             knobs: Knobs = Knobs(), eos_id: int | Sequence[int] | None = None, pad_id: int = 0,
             mesh: Mesh | None = None, rollouts: int = 1, strategy: Strategy = Sample(),
             prompt_buckets: Sequence[int] = SampleConfig.prompt_buckets,
             budget_buckets: Sequence[int] = SampleConfig.budget_buckets,
             pad_rows_to: int | None = None, row_offset: int = 0) -> SampleOutput:
  """Samples `rollouts` continuations of every prompt (row b = prompt b // rollouts).

  Returns device arrays (dispatch is asynchronous: `np.asarray` on them waits). With `mesh`, rows
  are split over the `batch` logical axis (`data` x `fsdp`) and the model keeps the shardings
  it was created with (`paced_jax.sharding.shard_init`). `pad_rows_to` pads the row count (with
  1-token dummy rows) so that batches of different sizes share one compiled program;
  `row_offset` shifts the per-row RNG streams (e.g. by batch index * rows).
  """
  if rollouts < 1:
    raise ConfigError(f"rollouts={rollouts} must be >= 1")
  if len(prompts) == 0:
    raise ConfigError("generate() got no prompts")
  lens = [len(p) for p in prompts]
  if min(lens) < 1:
    raise ConfigError(f"prompt {lens.index(min(lens))} is empty; every prompt needs >= 1 token "
                      "(e.g. BOS)")
  width = pick_bucket(max(lens), prompt_buckets, "a prompt", "sample.prompt_buckets")
  n_real = len(prompts) * rollouts
  n_rows = max(n_real, pad_rows_to or 0)
  if mesh is not None:  # rows split evenly over the batch mesh axes
    shards = batch_shards(mesh)
    n_rows = -(-n_rows // shards) * shards
  tokens, lengths = pad_prompts(prompts, width, pad_id)
  tokens = np.concatenate([np.repeat(tokens, rollouts, 0),
                           np.full((n_rows - n_real, width), pad_id, np.int32)])
  lengths = np.concatenate([np.repeat(lengths, rollouts), np.ones((n_rows - n_real,), np.int32)])
  row = functools.partial(per_row, n_prompts=len(prompts), rollouts=rollouts, n_rows=n_rows)
  k = Knobs(temperature=row(knobs.temperature, np.float32, name="temperature"),
            top_k=row(knobs.top_k, np.int32, name="top_k"),
            top_p=row(knobs.top_p, np.float32, name="top_p"),
            max_new_tokens=row(knobs.max_new_tokens, np.int32, name="max_new_tokens"))
  check_knobs(k)
  budget = pick_bucket(int(k.max_new_tokens.max()), budget_buckets, "max_new_tokens",
                       "sample.budget_buckets")
  # Padded with -1 (never a token) to a multiple of 4: "no EOS" and up to 4 stop ids share one
  # compiled program.
  stops = np.asarray([] if eos_id is None else np.atleast_1d(eos_id), np.int32)
  stops = np.pad(stops, (0, max(4, -(-len(stops) // 4) * 4) - len(stops)), constant_values=-1)
  key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
  row_ids = np.arange(row_offset, row_offset + n_rows, dtype=np.int32)
  graphdef, params = nnx.split(model)
  args = (tokens, lengths, k, row_ids)
  if mesh is not None:
    put = lambda x: jax.device_put(x, logical_sharding(mesh, ("batch",) + (None,) * (x.ndim - 1),
                                                       x.shape))
    args = jax.tree.map(put, args)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    out = sample_jit(graphdef, params, args[0], args[1], args[2], key, args[3], stops,
                     np.int32(pad_id), budget=budget, strategy=strategy, mesh=mesh)
  out = out.replace(rows=n_rows, prompt_len=width, cache_len=width + budget)
  new = int(k.max_new_tokens.max())  # the budget bucket may be wider than any row needs
  if n_rows == n_real and new == budget:
    return out
  return out.replace(tokens_BS=out.tokens_BS[:n_real, :new],
                     logprobs_BS=out.logprobs_BS[:n_real, :new], lengths_B=out.lengths_B[:n_real])
