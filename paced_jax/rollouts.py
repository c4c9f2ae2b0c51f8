"""Rollout engine: continuous batching, shared prompt prefill, decode attention bounded by the
filled length, behind one `Rollouts` interface.

    engine = Engine(model, slots=64)
    out = engine.sample([[1, 5, 9], [1, 7]], rollouts=8, rng=0, stop_ids=[2], pad_id=0,
                        knobs=Knobs(temperature=1.0, max_new_tokens=256))
    out.tokens_BS[i * 8 + k]   # rollout k of prompt i; pad_id after its end (as sampler.generate)
    out.flops()                # matmul FLOPs as computed (see `engine_flops`)

Why: reasoning-length responses are long-tailed. A static batch (sampler.generate) keeps a
finished row's slot until the longest row ends, prefills each prompt K times and attends over
the whole cache buffer at every step. Here:

  * slots: a fixed number of decode rows (fewer for a call with fewer rollouts). When a rollout ends (a stop id or its budget) its slot
    takes the next pending (prompt, rollout) inside the same compiled while-loop: the prompt's
    KV entries are copied into the slot (one scatter per layer, at steps where a slot is idle
    and a rollout is pending) and the slot decodes on. A slot's stale entries past the new prompt are never read (causal mask) and
    are overwritten by the new rollout's own tokens.
  * shared prefill: prompts are prefilled in waves of `wave` prompts, each prompt once; the
    first token of its K rollouts is drawn from the one set of logits with each rollout's key.
    Prompts go shortest first and each wave is prefilled in the smallest prompt bucket that
    holds its longest prompt, so short prompts never pay a long one's bucket.
  * prompt cache (`Engine.prompt_cache`, optional in `Rollouts`): inside it, each prefilled
    prompt's KV rows and last hidden state are kept in host memory (least recently used first
    out beyond `prompt_cache_mb`), and a wave whose prompts are all kept is copied back instead
    of prefilled: its first tokens cost one unembedding per prompt. An adaptive or screened
    estimate samples a problem's rollouts in stages, one call each; without the cache every
    stage prefilled its prompts again (28% of an adaptive K = 8 estimate's FLOPs on the demo,
    against 8% for one full-K call). New weights (`set_params`) empty it.
  * bounded attention: a decode step visits ceil(max filled / block) cache blocks
    (`Decoder.decode_hidden`), not the whole prompt bucket + budget buffer.
  * shrinking drain: once nothing is pending, the last rollouts of a call (the long tail)
    would keep every slot computing. Instead, whenever at most half the slots are busy the
    busy ones are gathered into a table of half the size (a copy, no FLOPs; down to
    `min_slots`) and decode goes on there: the drain costs about what its live rollouts do.
    This cuts FLOPs (and CPU time); on an accelerator whose decode is bound by reading the
    weights, a step's time barely depends on its slot count, so the drain's wall time stays.

Determinism: rollout k of prompt i is stream r = row_offset + i * K + k; its token t is drawn
with `fold_in(fold_in(rng, r), t)` exactly as sampler.generate's row r, so a rollout never
depends on its slot, its neighbours, the slot count or the wave size (greedy and temperature
rollouts equal sampler.generate's token for token up to float rounding of the attention sum).

Compilation: one prefill program per (wave, prompt bucket) (the last wave of a call prefills
its live prompts rounded up to an eighth of a wave; a call of N prompts waves at most N rounded
up to a power of two) and one decode program per (slots, wave,
prompt bucket, budget bucket, output rows bucket, K; the drain's halved slot counts add at
most log2(slots / min_slots) more); knobs (temperature, top-k, top-p,
max_new_tokens, per rollout) are traced. Output rows are padded to a power of two.

An external server (vLLM-TPU, SGLang-Jax) plugs in as one class implementing `Rollouts`
(`sample` with the same arguments, returning a `RolloutOutput` whose `computed_flops` may be
None if unknown, and `set_params` to receive new student weights) and one config field,
`sample.engine="package.module:factory"` (`make_engine`): every place a run samples goes
through it, and estimation verifies whatever comes back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib
from typing import Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from paced_jax.config import Config, ConfigError, SampleConfig
from paced_jax.distributed import to_host
from paced_jax.flops import attention_flops_per_token, body_flops_per_token, unembed_flops
from paced_jax.models.transformer import Decoder, KVCache
from paced_jax.sampler import (Knobs, Sample, Strategy, check_knobs, constrain_cache,
                               pad_prompts, per_row, pick_bucket)
from paced_jax.sharding import batch_shards


@dataclasses.dataclass(frozen=True)
class RolloutOutput:
  """Host arrays, rollout-major (row i * K + k). The counters say what the engine computed."""

  tokens_BS: np.ndarray  # int32 [N * K, max_new_tokens], pad_id after a rollout's end
  logprobs_BS: np.ndarray  # float32, 0 after the end
  lengths_B: np.ndarray  # int32, stop token included
  prefill_rows: int = 0  # prompt rows prefilled (padding rows of the last wave included)
  prompt_len: int = 0  # prompt bucket (the largest any wave of the call was prefilled in)
  slots: int = 0  # decode slots at the call's start
  steps: int = 0  # decode iterations
  attended: int = 0  # sum over iterations of the key slots each slot's attention computed
  busy: int = 0  # decode slot-steps that produced a token of a live rollout
  computed_flops: float | None = None  # what the implementation computed (None: unknown)
  # Where the slot count changed during the call (the engine's shrinking drain): decode
  # slot-steps and slot x attended key slots, summed over iterations. 0: slots x steps and
  # slots x attended (a fixed slot count).
  slot_steps: int = 0
  slot_attended: int = 0
  cached_prompts: int = 0  # prompts whose KV came from the prompt cache (not prefilled)

  @property
  def decode_slot_steps(self) -> int:
    return self.slot_steps or self.steps * self.slots

  @property
  def wasted_fraction(self) -> float:
    """Share of decode slot-steps that produced nothing (idle slots)."""
    total = self.decode_slot_steps
    return 1.0 - self.busy / total if total else 0.0

  def flops(self, cfg=None) -> float:
    """Model FLOPs of the call: `computed_flops` where the implementation counted them (the
    built-in Engine always does), else `engine_flops` of the counters for `cfg`."""
    if self.computed_flops is not None:
      return self.computed_flops
    if cfg is None:
      return 0.0
    return engine_flops(cfg, self.prefill_rows, self.prompt_len, self.decode_slot_steps,
                        self.slot_attended or self.slots * self.attended)


def engine_flops(cfg, prefill_rows: int, prompt_len: int, slot_steps: int,
                 slot_attended: int) -> float:
  """Matmul FLOPs of one `Engine.sample` as computed (paced_jax.flops convention): the prefill
  of `prefill_rows` x `prompt_len` attending over the prompt bucket, logits at one position per
  prompt; then `slot_steps` decode slot-steps (every slot of every iteration: body +
  unembedding), whose attention covered `slot_attended` key slots in total (summed over slots
  and iterations; whole blocks: what was multiplied)."""
  return prefill_flops(cfg, prefill_rows, prompt_len) + decode_flops(cfg, slot_steps,
                                                                     slot_attended)


def prefill_flops(cfg, rows: int, prompt_len: int) -> float:
  """`rows` prompts prefilled in a `prompt_len` bucket, logits at one position each."""
  return float(rows * prompt_len * (body_flops_per_token(cfg)
                                    + attention_flops_per_token(cfg, prompt_len))
               + rows * unembed_flops(cfg))


def decode_flops(cfg, slot_steps: int, slot_attended: int) -> float:
  return float(slot_steps * (body_flops_per_token(cfg) + unembed_flops(cfg))
               + attention_flops_per_token(cfg, slot_attended))


class Rollouts(Protocol):
  """K rollouts for each of a list of tokenised prompts (verification happens upstream).

  A run holds one implementation per model (`make_engine`): estimation, evaluation, on-policy
  rows and `paced estimate` sample the student through it, teacher references a second one
  holding the teacher. `set_params` hands it the student's new weights before each use."""

  def sample(self, prompts: Sequence[Sequence[int]], *, rollouts: int, knobs: Knobs,
             rng: int | jax.Array, stop_ids: Sequence[int] | int | None, pad_id: int,
             row_offset: int = 0, streams: Sequence[int] | None = None) -> RolloutOutput:
    """Rollout k of prompt i (row i * K + k of the output) draws token t with key
    fold_in(fold_in(rng, stream), t), stream = streams[i * K + k] or row_offset + i * K + k."""
    ...

  def set_params(self, params) -> None:
    """The model's new parameters (an `nnx.State` of its `nnx.Param`s); the next `sample`
    uses them."""
    ...

  # Optional: `prompt_cache()`, a context manager inside which the implementation may keep
  # prompts' prefill between `sample` calls (callers that sample the same prompts in stages
  # enter it; an implementation without it, or with its own automatic prefix caching, needs
  # nothing).


# ----------------------------------------------------------------------------- device programs


@flax.struct.dataclass
class EngineState:
  cache: KVCache  # [slots, K, S, H]
  rid_B: jax.Array  # int32 rollout in each slot (valid while busy_B)
  t_B: jax.Array  # int32 tokens that rollout has sampled
  last_B: jax.Array  # int32 token each slot feeds next
  busy_B: jax.Array  # bool
  next: jax.Array  # int32 next rollout id to hand out
  tokens_QS: jax.Array  # int32 [Q, budget]: each rollout's sampled tokens, by rollout id
  logprobs_QS: jax.Array
  lengths_Q: jax.Array
  steps: jax.Array  # int32 decode iterations
  # int32 attention blocks per slot, summed over iterations (blocks, not key slots: a count
  # of key slots wraps int32 at long budgets, e.g. 16k-token rollouts, and FLOPs went negative)
  attended_blocks: jax.Array
  busy: jax.Array  # int32 live slot-steps


@flax.struct.dataclass
class Wave:
  """Prefilled prompts [W, ...] and the first token of each of their W * K rollouts."""

  k: tuple[jax.Array, ...]  # per layer [W, K, P, H]
  v: tuple[jax.Array, ...]
  lengths_W: jax.Array
  first_Q: jax.Array  # int32 [W * K]
  first_lp_Q: jax.Array
  lo: jax.Array  # int32: rollout id of the wave's first rollout
  hi: jax.Array  # int32: one past its last real rollout


def _keys(rng, ids_B, t_B):
  return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(rng, r), t))(ids_B, t_B)


def _stopped(tok_B, stop_ids_E):
  return jnp.any(tok_B[:, None] == stop_ids_E[None], axis=-1)


def _wave(model: Decoder, k, v, h_W1D, lengths_W, knobs_Q: Knobs, rng, stream_Q, lo, *,
          rollouts: int, strategy: Strategy) -> Wave:
  """A wave from prefilled KV and each prompt's last hidden state: token 0 of each of its K
  rollouts drawn with the rollout's own key."""
  W = lengths_W.shape[0]
  logits_QV = jnp.repeat(model.logits(h_W1D)[:, 0], rollouts, axis=0)
  rid_Q = lo + jnp.arange(W * rollouts, dtype=jnp.int32)
  Q_cap = knobs_Q.temperature.shape[0]
  safe_Q = jnp.minimum(rid_Q, Q_cap - 1)
  kn = jax.tree.map(lambda a: a[safe_Q], knobs_Q)
  tok_Q, lp_Q = strategy(logits_QV, _keys(rng, stream_Q[safe_Q], jnp.zeros_like(rid_Q)), kn)
  return Wave(k=tuple(k), v=tuple(v), lengths_W=lengths_W, first_Q=tok_Q, first_lp_Q=lp_Q,
              lo=lo, hi=lo)


def prefill_core(graphdef, params, prompts_WP, lengths_W, knobs_Q: Knobs, rng, stream_Q, lo,
                 *, rollouts: int, strategy: Strategy) -> tuple[Wave, jax.Array]:
  """Prefills W prompts once; draws token 0 of each of their K rollouts with its own key.
  Returns the wave and each prompt's last hidden state [W, D] (what the prompt cache keeps)."""
  model: Decoder = nnx.merge(graphdef, params)
  W, P = prompts_WP.shape
  h_WPD, cache = model.extend_hidden(prompts_WP, model.init_cache(W, P), lengths_W)
  h_W1D = jnp.take_along_axis(h_WPD, (lengths_W - 1)[:, None, None], axis=1)
  wave = _wave(model, cache.k, cache.v, h_W1D, lengths_W, knobs_Q, rng, stream_Q, lo,
               rollouts=rollouts, strategy=strategy)
  return wave, h_W1D[:, 0]


def cached_core(graphdef, params, k, v, h_WD, lengths_W, knobs_Q: Knobs, rng, stream_Q, lo, *,
                rollouts: int, strategy: Strategy) -> Wave:
  """`prefill_core`'s wave from KV and last hidden states the prompt cache kept."""
  model: Decoder = nnx.merge(graphdef, params)
  return _wave(model, k, v, h_WD[:, None], lengths_W, knobs_Q, rng, stream_Q, lo,
               rollouts=rollouts, strategy=strategy)


def decode_core(graphdef, params, st: EngineState, wave: Wave, knobs_Q: Knobs, rng, stream_Q,
                stop_ids_E, pad_id, drain, shrink_at, *, rollouts: int, budget: int, block: int,
                strategy: Strategy, mesh: Mesh | None = None) -> EngineState:
  """Decodes until every rollout of `wave` has a slot (and, with `drain`, until all end, or
  until at most `shrink_at` slots are busy: the host then gathers them into fewer slots)."""
  model: Decoder = nnx.merge(graphdef, params)
  B = st.rid_B.shape[0]
  Q_cap = st.lengths_Q.shape[0]
  WK = wave.first_Q.shape[0]
  P = wave.k[0].shape[2]
  max_new_Q = jnp.clip(knobs_Q.max_new_tokens, 1, budget)

  def refill(st: EngineState) -> EngineState:
    idle_B = ~st.busy_B
    rid_B = st.next + jnp.cumsum(idle_B.astype(jnp.int32)) - 1
    take_B = idle_B & (rid_B < wave.hi)
    n_take = jnp.sum(take_B.astype(jnp.int32))
    local_B = jnp.clip(rid_B - wave.lo, 0, WK - 1)
    src_B = local_B // rollouts
    rows_B = jnp.where(take_B, jnp.arange(B), B)  # out of range: dropped
    put = lambda c, s: c.at[rows_B, :, :P, :].set(s[src_B].astype(c.dtype), mode="drop")
    ks = tuple(put(c, s) for c, s in zip(st.cache.k, wave.k))
    vs = tuple(put(c, s) for c, s in zip(st.cache.v, wave.v))
    first_B, lp_B = wave.first_Q[local_B], wave.first_lp_Q[local_B]
    widx_B = jnp.where(take_B, rid_B, Q_cap)  # out of range: dropped
    done_B = _stopped(first_B, stop_ids_E) | (max_new_Q[jnp.clip(rid_B, 0, Q_cap - 1)] <= 1)
    cache = KVCache(k=ks, v=vs, end_B=jnp.where(take_B, wave.lengths_W[src_B], st.cache.end_B))
    return st.replace(
        cache=cache, rid_B=jnp.where(take_B, rid_B, st.rid_B),
        t_B=jnp.where(take_B, 1, st.t_B), last_B=jnp.where(take_B, first_B, st.last_B),
        busy_B=jnp.where(take_B, ~done_B, st.busy_B), next=st.next + n_take,
        tokens_QS=st.tokens_QS.at[widx_B, 0].set(first_B, mode="drop"),
        logprobs_QS=st.logprobs_QS.at[widx_B, 0].set(lp_B, mode="drop"),
        lengths_Q=st.lengths_Q.at[widx_B].set(1, mode="drop"))

  def decode(st: EngineState) -> EngineState:
    busy_B = st.busy_B
    valid_B = jnp.where(busy_B, st.cache.end_B + 1, 0)
    num_blocks = jnp.maximum((jnp.max(valid_B) + block - 1) // block, 1)
    h_B1D, cache = model.decode_hidden(st.last_B[:, None], st.cache, num_blocks, block)
    cache = cache.replace(end_B=jnp.where(busy_B, cache.end_B, st.cache.end_B))
    logits_BV = model.logits(h_B1D)[:, 0]
    rid_B = jnp.where(busy_B, st.rid_B, 0)
    kn = jax.tree.map(lambda a: a[rid_B], knobs_Q)
    tok_B, lp_B = strategy(logits_BV, _keys(rng, stream_Q[rid_B], st.t_B), kn)
    tok_B = jnp.where(busy_B, tok_B, pad_id)
    lp_B = jnp.where(busy_B, lp_B, 0.0)
    widx_B = jnp.where(busy_B, st.rid_B, Q_cap)
    done_B = _stopped(tok_B, stop_ids_E) | (st.t_B + 1 >= max_new_Q[rid_B])
    return st.replace(
        cache=cache, t_B=st.t_B + 1, last_B=tok_B, busy_B=busy_B & ~done_B,
        tokens_QS=st.tokens_QS.at[widx_B, st.t_B].set(tok_B, mode="drop"),
        logprobs_QS=st.logprobs_QS.at[widx_B, st.t_B].set(lp_B, mode="drop"),
        lengths_Q=st.lengths_Q.at[widx_B].set(st.t_B + 1, mode="drop"),
        steps=st.steps + 1, attended_blocks=st.attended_blocks + num_blocks,
        busy=st.busy + jnp.sum(busy_B.astype(jnp.int32)))

  def cond(st: EngineState):
    return (st.next < wave.hi) | (drain & (jnp.sum(st.busy_B.astype(jnp.int32)) > shrink_at))

  def body(st: EngineState) -> EngineState:
    # Refill only when a slot is idle and a rollout is pending: the copy touches every slot.
    st = jax.lax.cond(jnp.any(~st.busy_B) & (st.next < wave.hi), refill, lambda s: s, st)
    # A refill can end rollouts at once (stop id first, budget 1): decode only if a slot runs.
    return jax.lax.cond(jnp.any(st.busy_B), decode, lambda s: s, st)

  st = st.replace(cache=constrain_cache(st.cache, mesh))
  return jax.lax.while_loop(cond, body, st)


def _pad_wave(wave: Wave, W: int) -> Wave:
  """`wave` padded to W prompts (rows past wave.hi are never taken by a slot)."""
  pad = lambda a, n: jnp.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
  K = wave.first_Q.shape[0] // wave.lengths_W.shape[0]
  return wave.replace(k=tuple(pad(a, W) for a in wave.k), v=tuple(pad(a, W) for a in wave.v),
                      lengths_W=jnp.pad(wave.lengths_W, (0, W - wave.lengths_W.shape[0]),
                                        constant_values=1),
                      first_Q=pad(wave.first_Q, W * K), first_lp_Q=pad(wave.first_lp_Q, W * K))


def _compact(st: EngineState, keep_B) -> EngineState:
  """The slots `keep_B` (every busy slot, then idle ones to fill) as a smaller slot table; the
  per-rollout outputs and counters are untouched."""
  take = lambda a: a[keep_B]
  cache = KVCache(k=tuple(map(take, st.cache.k)), v=tuple(map(take, st.cache.v)),
                  end_B=take(st.cache.end_B))
  return st.replace(cache=cache, rid_B=take(st.rid_B), t_B=take(st.t_B),
                    last_B=take(st.last_B), busy_B=take(st.busy_B))


compact_jit = jax.jit(_compact)
pad_wave_jit = jax.jit(_pad_wave, static_argnames=("W",))
prefill_jit = jax.jit(prefill_core, static_argnames=("graphdef", "rollouts", "strategy"))
cached_jit = jax.jit(cached_core, static_argnames=("graphdef", "rollouts", "strategy"))
decode_jit = jax.jit(decode_core, donate_argnums=(2,),
                     static_argnames=("graphdef", "rollouts", "budget", "block", "strategy",
                                      "mesh"))


# ----------------------------------------------------------------------------- host side


class PromptCache:
  """Prefilled prompts on the host, least recently used out first, up to `limit_mb`: prompt
  tokens -> (k per layer [K, P, H] cut to the prompt's own bucket, v per layer, last hidden
  state [D], bytes). What `Engine.prompt_cache` keeps."""

  def __init__(self, limit_mb: float, prompt_buckets: Sequence[int]):
    self.limit = limit_mb * 2 ** 20
    self.prompt_buckets = prompt_buckets
    self.entries: collections.OrderedDict = collections.OrderedDict()
    self.bytes = 0

  def __len__(self) -> int:
    return len(self.entries)

  def __contains__(self, key) -> bool:
    return key in self.entries

  def keep(self, keys, wave: Wave, h_WD, lengths) -> None:
    """Each of `keys`' prompt rows of a prefilled wave, cut to its own prompt bucket."""
    ks, vs, h = jax.device_get((wave.k, wave.v, h_WD))
    for j, key in enumerate(keys):
      if key in self.entries:
        self.entries.move_to_end(key)
        continue
      pb = min(pick_bucket(int(lengths[j]), self.prompt_buckets, "a prompt",
                           "sample.prompt_buckets"), ks[0].shape[2])
      entry = (tuple(np.ascontiguousarray(a[j, :, :pb]) for a in ks),
               tuple(np.ascontiguousarray(a[j, :, :pb]) for a in vs), np.array(h[j]))
      size = sum(a.nbytes for a in (*entry[0], *entry[1], entry[2]))
      if size > self.limit:
        continue
      while self.entries and self.bytes + size > self.limit:
        _, (*_, old_size) = self.entries.popitem(last=False)
        self.bytes -= old_size
      self.entries[key] = (*entry, size)
      self.bytes += size

  def wave(self, keys, rows: int, P: int):
    """KV [rows, K, P, H] per layer and last hidden states [rows, D] of kept prompts (rows past
    `keys`: zeros, the wave's padding)."""
    entries = [self.entries[key] for key in keys]
    for key in keys:
      self.entries.move_to_end(key)
    k0, _, h0, _ = entries[0]

    def stack(layer, part):
      a = k0[layer]
      out = np.zeros((rows, a.shape[0], P, a.shape[2]), a.dtype)
      for j, e in enumerate(entries):
        out[j, :, :e[part][layer].shape[1]] = e[part][layer]
      return out

    h = np.zeros((rows, h0.shape[0]), h0.dtype)
    for j, e in enumerate(entries):
      h[j] = e[2]
    return (tuple(stack(i, 0) for i in range(len(k0))), tuple(stack(i, 1) for i in range(len(k0))),
            h)


@dataclasses.dataclass
class Engine:
  """Continuous-batching rollouts for one model (see the module docstring).

  slots: decode rows at most; a call of R rollouts uses min(slots, R rounded up to a power of
  two), rounded up to a multiple of the mesh's batch shards (a small call, e.g. one step's
  on-policy rows, computes no idle slots beyond that). wave: prompts
  prefilled per prefill call (default: enough to fill the slots twice). block: cache slots per
  attention block (the cache is padded to a multiple of it). min_slots: the shrinking drain
  halves the slot table down to this many (at least the mesh's batch shards); >= slots: the
  table never shrinks. prompt_cache_mb: host memory the prompt cache may hold inside
  `prompt_cache()` (0: no cache).
  """

  model: Decoder
  slots: int = 64
  wave: int | None = None
  block: int = 32
  min_slots: int = 32
  strategy: Strategy = Sample()
  mesh: Mesh | None = None
  prompt_buckets: Sequence[int] = SampleConfig.prompt_buckets
  budget_buckets: Sequence[int] = SampleConfig.budget_buckets
  prompt_cache_mb: float = SampleConfig.prompt_cache_mb
  _kept: PromptCache | None = dataclasses.field(default=None, init=False, repr=False)  # None
  # outside `prompt_cache()`

  def __post_init__(self):
    for name, v in (("slots", self.slots), ("block", self.block), ("wave", self.wave or 1),
                    ("min_slots", self.min_slots)):
      if v < 1:
        raise ConfigError(f"rollout engine {name}={v} must be >= 1")
    if self.prompt_cache_mb < 0:
      raise ConfigError(f"rollout engine prompt_cache_mb={self.prompt_cache_mb} must be >= 0")

  def set_params(self, params) -> None:
    """New weights for the same model (e.g. the student after a train step). The engine keeps
    no other copy: the old parameters are released, and so are kept prompts (their KV was the
    old weights')."""
    self.model = nnx.merge(nnx.graphdef(self.model), params)
    if self._kept is not None:
      self._kept = PromptCache(self.prompt_cache_mb, self.prompt_buckets)

  @contextlib.contextmanager
  def prompt_cache(self):
    """Inside it, `sample` keeps every prompt it prefills (host memory, up to
    `prompt_cache_mb`, least recently used out first) and a wave whose prompts are all kept is
    copied back instead of prefilled. For callers that sample the same prompts in several
    calls (adaptive and screened estimates); the cache is dropped on exit."""
    if self.prompt_cache_mb <= 0 or self._kept is not None:  # off, or already inside one
      yield self
      return
    self._kept = PromptCache(self.prompt_cache_mb, self.prompt_buckets)
    try:
      yield self
    finally:
      self._kept = None

  def sample(self, prompts: Sequence[Sequence[int]], *, rollouts: int, knobs: Knobs = Knobs(),
             rng: int | jax.Array = 0, stop_ids: Sequence[int] | int | None = None,
             pad_id: int = 0, row_offset: int = 0, streams=None) -> RolloutOutput:
    """`streams`: the RNG stream of each rollout (int [N * K]; default row_offset + row)."""
    if rollouts < 1:
      raise ConfigError(f"rollouts={rollouts} must be >= 1")
    if len(prompts) == 0:
      raise ConfigError("the rollout engine got no prompts")
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
      raise ConfigError(f"prompt {lens.index(min(lens))} is empty; every prompt needs >= 1 "
                        "token (e.g. BOS)")
    N, K = len(prompts), rollouts
    P = pick_bucket(max(lens), self.prompt_buckets, "a prompt", "sample.prompt_buckets")
    R = N * K
    R_cap = 1 << max(R - 1, 1).bit_length()
    row = functools.partial(per_row, n_prompts=N, rollouts=K, n_rows=R_cap)
    kn = Knobs(temperature=row(knobs.temperature, np.float32, name="temperature"),
               top_k=row(knobs.top_k, np.int32, name="top_k"),
               top_p=row(knobs.top_p, np.float32, name="top_p"),
               max_new_tokens=row(knobs.max_new_tokens, np.int32, name="max_new_tokens"))
    check_knobs(kn)
    stream = np.arange(row_offset, row_offset + R) if streams is None else np.asarray(streams)
    if stream.shape != (R,):
      raise ConfigError(f"streams has shape {stream.shape}; give one per rollout ({R})")
    stream = np.concatenate([stream, np.zeros((R_cap - R,))]).astype(np.int32)
    # Prompts are prefilled shortest first, each wave in the smallest bucket that holds its
    # longest prompt (a call of mixed lengths no longer pays the longest one's bucket for every
    # prompt). A rollout depends only on its prompt and stream, so the order changes no token;
    # rows are put back in the caller's order at the end. perm: internal row -> caller's row.
    order = np.argsort(np.asarray(lens), kind="stable")
    perm = (order[:, None] * K + np.arange(K)).reshape(-1)
    in_order = lambda a: np.concatenate([a[:R][perm], a[R:]])
    kn = Knobs(temperature=in_order(kn.temperature), top_k=in_order(kn.top_k),
               top_p=in_order(kn.top_p), max_new_tokens=in_order(kn.max_new_tokens))
    stream = in_order(stream)
    new = int(kn.max_new_tokens[:R].max())
    budget = pick_bucket(new, self.budget_buckets, "max_new_tokens", "sample.budget_buckets")
    S = -(-(P + budget) // self.block) * self.block
    B = min(self.slots, R_cap)  # a call of few rows (on-policy rows, a last stage) computes few
    shards = batch_shards(self.mesh) if self.mesh is not None else 1
    B = -(-B // shards) * shards
    W = self.wave or max(1, -(-2 * B // K))
    # At most the prompts' count rounded up to a power of two: a call's wave shape (and so its
    # decode programs) comes from a short list, not one per prompt count (an adaptive stage's
    # live problems differ every refresh: one program each would grow without bound).
    W = min(W, 1 << max(N - 1, 0).bit_length())
    stops = np.asarray([] if stop_ids is None else np.atleast_1d(stop_ids), np.int32)
    stops = np.pad(stops, (0, max(4, -(-len(stops) // 4) * 4) - len(stops)), constant_values=-1)
    key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
    graphdef, params = nnx.split(self.model)
    tokens, plens = pad_prompts([prompts[i] for i in order], P, pad_id)
    n_waves = -(-N // W)
    # The last wave prefills its live prompts rounded up to a multiple of W / 8 (at most 8
    # prefill programs per W), not a whole W of padding rows; it is padded to W after prefill
    # (a copy, no FLOPs) so it runs the decode program of the full waves in its prompt bucket.
    grain = -(-W // 8)
    W_last = min(W, -(-(N - (n_waves - 1) * W) // grain) * grain)
    rows = (n_waves - 1) * W + W_last
    tokens = np.concatenate([tokens, np.full((rows - N, P), pad_id, np.int32)])
    plens = np.concatenate([plens, np.ones((rows - N,), np.int32)])
    cache = self.model.init_cache(B, S)
    st = EngineState(
        cache=cache, rid_B=jnp.zeros((B,), jnp.int32), t_B=jnp.zeros((B,), jnp.int32),
        last_B=jnp.zeros((B,), jnp.int32), busy_B=jnp.zeros((B,), bool), next=jnp.int32(0),
        tokens_QS=jnp.full((R_cap, budget), pad_id, jnp.int32),
        logprobs_QS=jnp.zeros((R_cap, budget), jnp.float32),
        lengths_Q=jnp.zeros((R_cap,), jnp.int32), steps=jnp.int32(0),
        attended_blocks=jnp.int32(0), busy=jnp.int32(0))
    floor = -(-max(self.min_slots, 1) // shards) * shards  # the drain's smallest table
    half = lambda b: b // 2 if b // 2 >= floor and (b // 2) % shards == 0 else 0
    slot_steps = slot_attended = 0
    computed = 0.0  # prefill FLOPs, wave by wave
    keys = [tuple(prompts[i]) for i in order] if self._kept is not None else None
    prefilled = cached = 0
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      for w in range(n_waves):
        lo = w * W * K
        lens_w = plens[lo // K:lo // K + W]
        P_w = pick_bucket(int(lens_w.max()), self.prompt_buckets, "a prompt",
                          "sample.prompt_buckets")
        mine = keys[lo // K:lo // K + W] if keys is not None else None
        if mine is not None and all(k in self._kept for k in mine):
          k_w, v_w, h_w = self._kept.wave(mine, len(lens_w), P_w)
          computed += len(lens_w) * unembed_flops(self.model.cfg)  # first-token logits
          cached += len(mine)
          wave = cached_jit(graphdef, params, k_w, v_w, h_w, lens_w, kn, key, stream,
                            np.int32(lo), rollouts=K, strategy=self.strategy)
        else:
          computed += prefill_flops(self.model.cfg, len(lens_w), P_w)
          prefilled += len(lens_w)
          wave, h_w = prefill_jit(graphdef, params, tokens[lo // K:lo // K + W, :P_w], lens_w,
                                  kn, key, stream, np.int32(lo), rollouts=K,
                                  strategy=self.strategy)
          if mine is not None:
            self._kept.keep(mine, wave, h_w, lens_w)
        if w == n_waves - 1 and W_last < W:
          wave = pad_wave_jit(wave, W)
        wave = wave.replace(hi=jnp.int32(min(lo + W * K, R)))
        last = w == n_waves - 1
        st = decode_jit(graphdef, params, st, wave, kn, key, stream, stops,
                        np.int32(pad_id), np.bool_(last), np.int32(half(B) if last else 0),
                        rollouts=K, budget=budget, block=self.block, strategy=self.strategy,
                        mesh=self.mesh)
      # The shrinking drain: nothing is pending; while at most half the slots are busy, gather
      # the busy ones into a table of half the size (or less) and decode on there.
      b, seen = B, (0, 0)
      while half(b):
        busy_B = np.asarray(to_host(st.busy_B))
        n = int(busy_B.sum())
        steps_now, blocks_now = int(to_host(st.steps)), int(to_host(st.attended_blocks))
        slot_steps += (steps_now - seen[0]) * b
        slot_attended += (blocks_now - seen[1]) * self.block * b
        seen = steps_now, blocks_now
        if not n:
          break
        b2 = half(b)
        while half(b2) and n <= half(b2):
          b2 = half(b2)
        keep = np.concatenate([np.flatnonzero(busy_B), np.flatnonzero(~busy_B)])[:b2]
        st = compact_jit(st, jnp.asarray(keep, jnp.int32))
        b = b2
        st = decode_jit(graphdef, params, st, wave, kn, key, stream, stops, np.int32(pad_id),
                        np.bool_(True), np.int32(half(b)), rollouts=K, budget=budget,
                        block=self.block, strategy=self.strategy, mesh=self.mesh)
    toks, lps, lengths, steps, blocks, busy = map(to_host, (
        st.tokens_QS, st.logprobs_QS, st.lengths_Q, st.steps, st.attended_blocks, st.busy))
    slot_steps += (int(steps) - seen[0]) * b
    slot_attended += (int(blocks) - seen[1]) * self.block * b
    back = lambda a: np.asarray(a)[:R][np.argsort(perm)]  # the caller's row order
    out = RolloutOutput(tokens_BS=back(toks)[:, :new], logprobs_BS=back(lps)[:, :new],
                        lengths_B=back(lengths),
                        prefill_rows=prefilled, prompt_len=P, slots=B, steps=int(steps),
                        attended=int(blocks) * self.block, busy=int(busy),
                        slot_steps=slot_steps, slot_attended=slot_attended,
                        cached_prompts=cached)
    return dataclasses.replace(out, computed_flops=computed + decode_flops(
        self.model.cfg, slot_steps, slot_attended))


def make_engine(cfg: Config, model: Decoder, mesh: Mesh | None, *, slots: int | None = None
                ) -> Rollouts:
  """The run's rollout engine for `model` (`sample.engine`): "continuous" is `Engine` with
  sample.batch_size slots, the config's buckets and a sampler that never draws padding ids
  (loss.vocab_limit); "package.module:factory" is an external implementation, built as
  `factory(model=model, cfg=cfg, mesh=mesh)` and used wherever the run samples."""
  spec = cfg.sample.engine
  if spec == "continuous":
    return Engine(model, slots=slots or cfg.sample.batch_size, mesh=mesh,
                  min_slots=cfg.sample.min_slots, strategy=Sample(cfg.loss.vocab_limit),
                  prompt_cache_mb=cfg.sample.prompt_cache_mb,
                  prompt_buckets=cfg.sample.prompt_buckets,
                  budget_buckets=cfg.sample.budget_buckets)
  module, _, name = spec.partition(":")
  try:
    factory = getattr(importlib.import_module(module), name)
  except Exception as e:  # any import failure of the user's module is one line
    raise ConfigError(f"sample.engine={spec!r} cannot be loaded ({type(e).__name__}: {e}); "
                      "give 'continuous' or an importable 'package.module:factory'") from None
  if not callable(factory):
    raise ConfigError(f"sample.engine={spec!r} is not callable; name a factory "
                      "(model=, cfg=, mesh=) -> Rollouts")
  engine = factory(model=model, cfg=cfg, mesh=mesh)
  missing = [m for m in ("sample", "set_params") if not callable(getattr(engine, m, None))]
  if missing:
    raise ConfigError(f"sample.engine={spec!r} returned {type(engine).__name__}, which lacks "
                      f"{' and '.join(missing)}: implement paced_jax.rollouts.Rollouts")
  return engine
