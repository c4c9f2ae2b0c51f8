"""The Grain frontier pipeline: per-example sampling of pool problems with probabilities pi.

Element i of round r is pool index `searchsorted(cumsum(pi), u * sum(pi))` with u a
counter-based uniform hashed from (seed, r, i): no RNG state is carried, so the iterator state
is the Grain batch counter, a checkpoint restores mid-round exactly, and every process can
recompute any draw. In Grain terms one round is

  MapDataset.range(huge)                       local element j
    .map(position)                             j -> global position in round r
    .batch(local_batch, batch_fn=collate)      draw (pool index, reference), pack, pad
    .to_iter_dataset()  [.mp_prefetch(workers)]

Sharding by process: global batch b holds positions b*G .. b*G+G-1; process p of P takes the
contiguous slice b*G + p*G/P ... b*G + (p+1)*G/P - 1, so the processes' local batches are
disjoint and concatenate (in process order) to the global batch. All processes pad batch b to
the same bucket because each one recomputes the lengths of the whole global batch.

Checkpointing: `get_state()` is a small JSON-able dict; save it next to the model with
`ocp.args.Composite(..., data=ocp.args.JsonSave(pipe.get_state()))` and restore with
`pipe.set_round(state["round"], probs)` (probs from the restored PassRateTable) followed by
`pipe.set_state(restored)` -- set_state checks that the probabilities match.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterator

import grain
import jax
import numpy as np

from paced_jax.config import ConfigError, DataConfig, pick_bucket
from paced_jax.data.packing import TokenizedPool, build_pool
from paced_jax.sharding import logical_sharding
from paced_jax.teacher_logits import OfflineTeacher, gather_rows, tokens_digest

log = logging.getLogger("paced_jax.data")

_ROUND_LEN = 1 << 40  # elements per round: effectively endless; a round ends on set_round
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


_C0, _C1, _C2 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                        0x94D049BB133111EB))
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a bijective 64-bit hash."""
  with np.errstate(over="ignore"):
    x = x + _C0
    x = (x ^ (x >> _S30)) * _C1
    x = (x ^ (x >> _S27)) * _C2
    return x ^ (x >> _S31)


def stream_key(seed: int, round_: int, stream: int = 0) -> np.uint64:
  key = _mix64(np.array([(seed & 0xFFFFFFFF) << 8 | stream], np.uint64))
  return _mix64(key ^ np.uint64(round_ & 0xFFFFFFFFFFFF))[0]


def uniforms(seed: int, round_: int, positions: np.ndarray, stream: int = 0,
             key: np.uint64 | None = None) -> np.ndarray:
  """Counter-based U[0, 1) draws, one per position, a pure function of (seed, round, stream,
  position); `key` = stream_key(seed, round, stream) may be passed precomputed."""
  key = stream_key(seed, round_, stream) if key is None else key
  h = _mix64(key ^ np.asarray(positions, np.uint64))
  return (h >> _S11).astype(np.float64) * (1.0 / (1 << 53))


class _Round:
  """Everything one round's Grain chain needs; picklable so Grain workers can run it."""

  def __init__(self, pool: TokenizedPool, cdf: np.ndarray, weights: np.ndarray, seed: int,
               round_: int, global_batch: int, process_index: int, process_count: int,
               buckets: tuple[int, ...], pad_id: int, responses: bool = True,
               offline: OfflineTeacher | None = None, ref_keys: list[str] | None = None,
               max_response_len: int = 0):
    self.pool, self.cdf, self.weights = pool, cdf, weights
    # loss.teacher=offline:DIR: the stored teacher arrays of each row's reference (record keys
    # by global reference index), for the step's first min(max_response_len, T) scored positions.
    self.offline, self.ref_keys, self.max_response_len = offline, ref_keys, max_response_len
    self.responses = responses and not pool.prompts_only
    self.total = float(cdf[-1])
    # The last index with mass: u * total can round up to total, never past this index.
    self.last = int(np.searchsorted(cdf, self.total, side="left"))
    self.seed, self.round = seed, round_
    self.G, self.p = global_batch, process_index
    self.L = global_batch // process_count
    self.buckets, self.pad_id = buckets, pad_id
    self.keys = (stream_key(seed, round_, 0), stream_key(seed, round_, 1))
    self.num_refs = pool.num_refs

  def draw(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pool index, global reference index) for each global position."""
    u = uniforms(self.seed, self.round, positions, key=self.keys[0])
    # side="right": a zero-probability problem i has cdf[i] == cdf[i-1] and is never the first
    # index whose cdf exceeds u * total.
    idx = np.minimum(np.searchsorted(self.cdf, u * self.total, side="right"), self.last)
    if not self.responses:
      return idx, np.zeros_like(idx)
    n = self.num_refs[idx]
    v = uniforms(self.seed, self.round, positions, stream=1, key=self.keys[1])
    ref = self.pool.ref_offsets[idx] + np.minimum((v * n).astype(np.int64), n - 1)
    return idx, ref

  def position(self, j: int) -> int:
    """Local element j -> its global position (this process's slice of global batch b)."""
    b, k = divmod(int(j), self.L)
    return b * self.G + self.p * self.L + k

  def collate(self, positions) -> dict[str, np.ndarray]:
    # Draw the whole global batch (cheap, vectorised): every process then pads to the same
    # bucket; this process keeps its own slice of it.
    b = int(positions[0]) // self.G
    gidx, gref = self.draw(np.arange(b * self.G, (b + 1) * self.G, dtype=np.uint64))
    T = pick_bucket(int(self.pool.row_lengths(gidx, gref, self.responses).max()), self.buckets)
    local = np.asarray(positions, np.int64) - b * self.G
    idx, ref = gidx[local], gref[local]
    out = self.pool.pack(idx, ref, T, self.pad_id, self.responses)
    out["weights"] = self.weights[idx]
    out["index"] = idx.astype(np.int32)
    if self.offline is not None and self.responses:
      R = min(self.max_response_len, T)  # what step.loss_fn scores
      ids, logp, tail, _ = gather_rows(self.offline, [self.ref_keys[r] for r in ref], R)
      # Stored as float16: kept so on the host and in the transfer, cast to fp32 in the loss.
      out["teacher_ids"], out["teacher_log_tail"] = ids, tail
      out["teacher_logp"] = logp.astype(np.float16)
    return out


def _digest(*arrays: np.ndarray) -> str:
  h = hashlib.sha1()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


class FrontierPipeline:
  """Batches of pool problems sampled with per-round probabilities; see the module docstring.

    pipe = FrontierPipeline(load_pool(cfg.data), load_tokenizer(cfg.data.tokenizer), cfg.data,
                            seed=cfg.seed, mesh=mesh)
    pipe.set_round(0, probs)             # [N]; or set_round(0, None, weights=w): uniform + w
    batch = next(pipe)                   # dict of [B, T] / [B] arrays (see packing.py)

  A batch holds tokens, targets, loss_mask, positions, segment_ids, prompt_lens, lengths
  (int32/float32 [B, T] and [B]), weights [B] float32 (per-example loss weight; 1 when
  sampling by pi) and index [B] int32 (pool index). With `offline` (an OfflineTeacher:
  loss.teacher=offline:DIR) rows with a reference also carry its stored teacher arrays for the
  step's R = min(data.max_response_len, T) scored positions: teacher_ids [B, R, k] int32,
  teacher_logp [B, R, k] float16, teacher_log_tail [B, R] float32 (teacher_logits.gather_rows);
  the pool is checked against them first (check_offline). With `mesh` the arrays are global
  `jax.Array`s sharded by the "batch" logical axis; without, local numpy arrays.
  """

  def __init__(self, source, tokenizer, data_cfg: DataConfig, seed: int = 0, *,
               references=None, prompts_only: bool = False, mesh=None,
               process_index: int | None = None, process_count: int | None = None,
               pool: TokenizedPool | None = None, offline: OfflineTeacher | None = None):
    self.cfg, self.seed, self.mesh = data_cfg, int(seed), mesh
    self.source, self.tokenizer = source, tokenizer
    self.pool = pool if pool is not None else build_pool(source, tokenizer, data_cfg,
                                                         references, prompts_only)
    self.process_count = jax.process_count() if process_count is None else process_count
    self.process_index = jax.process_index() if process_index is None else process_index
    if data_cfg.batch_size % self.process_count:
      raise ConfigError(f"data.batch_size={data_cfg.batch_size} does not divide over "
                        f"{self.process_count} processes; use a multiple of {self.process_count}")
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index={self.process_index} not in [0, {self.process_count})")
    self.offline, self.ref_keys = offline, None
    if offline is not None:
      self.ref_keys = self.pool.reference_keys()
      check_offline(self.pool, offline, self.ref_keys)
    self.round: int | None = None
    self.probs: np.ndarray | None = None  # effective sampling probabilities of this round
    self._it: Iterator | None = None
    self._digest = ""

  def __len__(self) -> int:
    return len(self.pool)

  def set_round(self, round_: int, probs: np.ndarray | None, weights: np.ndarray | None = None,
                need_reference: bool = True) -> None:
    """Starts round `round_` with sampling probabilities `probs` [N] (unnormalised, >= 0;
    None: uniform) and optional per-example loss weights `weights` [N] (None: ones).

    Problems that cannot be sampled (no reference, prompt too long) get probability 0.
    `need_reference=False` draws prompt-only rows (the student samples the responses: on-policy
    and reverse-KL phases), so problems without a reference can be drawn too.
    """
    N = len(self.pool)
    p = np.ones(N) if probs is None else np.asarray(probs, np.float64)
    w = np.ones(N, np.float32) if weights is None else np.asarray(weights, np.float32)
    for name, a in (("probs", p), ("weights", w)):
      if a.shape != (N,):
        raise ValueError(f"set_round: {name} has shape {a.shape}, expected ({N},) for the pool")
      if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"set_round: {name} must be finite and >= 0")
    p = np.where(self.pool.usable_for(need_reference), p, 0.0)
    if p.sum() <= 0:
      raise ValueError(f"set_round({round_}): every usable problem has probability 0; mix in "
                       "a floor (paced.eps > 0) or use uniform sampling")
    self.close()
    self.round, self.probs = int(round_), p / p.sum()
    # (the flag joins the digest only when set, so earlier checkpoints keep their digest)
    self._digest = _digest(p, w) if need_reference else _digest(p, w, np.zeros(1, bool))
    self._spec = _Round(self.pool, np.cumsum(p), w, self.seed, self.round, self.cfg.batch_size,
                        self.process_index, self.process_count, self.cfg.length_buckets,
                        self.tokenizer.pad_id, responses=need_reference,
                        offline=self.offline, ref_keys=self.ref_keys,
                        max_response_len=self.cfg.max_response_len)
    self._it = iter(self._dataset(self._spec))

  def _dataset(self, spec: _Round):
    ds = (grain.MapDataset.range(_ROUND_LEN)
          .map(spec.position)
          .batch(spec.L, drop_remainder=True, batch_fn=spec.collate))
    if self.cfg.worker_count > 0:
      from absl import flags

      # Grain workers read absl flags; programs that parse their own argv (argparse) never
      # parse absl's, and the defaults are what we want.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
      return it.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.cfg.worker_count, per_worker_buffer_size=self.cfg.prefetch))
    # One prefetch thread: batches are cheap numpy work; more threads only fight the GIL.
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=self.cfg.prefetch))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    if self._it is None:
      raise RuntimeError("call set_round(round, probs) before drawing batches")
    batch = next(self._it)
    return to_global_batch(batch, self.mesh, self.process_count) if self.mesh else batch

  next = __next__

  def drawn(self, steps: int) -> np.ndarray:
    """Pool indices of the rows of this round's first `steps` global batches (every process's
    share): the draws are counter-based, so this recomputes them without iterating."""
    if self._it is None:
      raise RuntimeError("call set_round(round, probs) before drawn()")
    n = max(int(steps), 0) * self.cfg.batch_size
    return self._spec.draw(np.arange(n, dtype=np.uint64))[0]

  def get_state(self) -> dict[str, Any]:
    """JSON-able position in the stream: round, probabilities digest, Grain iterator state."""
    if self._it is None:
      raise RuntimeError("call set_round(round, probs) before get_state()")
    return {"round": self.round, "probs_digest": self._digest, "seed": self.seed,
            "batch_size": self.cfg.batch_size, "grain": self._it.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores `get_state()` output; call `set_round(state["round"], same probs)` first."""
    if self._it is None or state.get("round") != self.round:
      raise ValueError(f"pipeline state is for round {state.get('round')}, the pipeline is at "
                       f"round {self.round}: call set_round(state['round'], probs) first")
    for key, mine in (("probs_digest", self._digest), ("seed", self.seed),
                      ("batch_size", self.cfg.batch_size)):
      if state.get(key) != mine:
        raise ValueError(f"pipeline state {key}={state.get(key)!r} does not match this "
                         f"pipeline's {mine!r}: restore the same probabilities, seed and "
                         "data.batch_size that were saved")
    self._it.set_state(state["grain"])

  def close(self) -> None:
    """Stops the current round's prefetch threads / worker processes."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def check_offline(pool: TokenizedPool, teacher: OfflineTeacher, keys: list[str]) -> None:
  """Every reference a round can draw has stored teacher logits of the same row: its record
  exists, holds one position per response token (the packed row's scored positions) and was
  written for the same prompt and response tokens (the digest in the manifest). A failure is
  one ConfigError line naming the first problem."""
  where = f"offline teacher {teacher.dir}"
  again = "write the logits again for this pool (paced teacher-logits CONFIG --out NEW_DIR)"
  refs = [(int(i), int(pool.ref_offsets[i]) + j) for i in np.nonzero(pool.usable)[0]
          for j in range(int(pool.num_refs[i]))]
  missing = teacher.missing([keys[r] for _, r in refs])
  if missing:
    first = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise ConfigError(f"{where}: {len(missing)} of the pool's {len(refs)} reference responses "
                      f"have no stored logits (first: {first}); add them with paced "
                      f"teacher-logits CONFIG --out {teacher.dir} (it writes only the missing)")
  for i, r in refs:
    key, n, want = keys[r], teacher.positions(keys[r]), len(pool.response(r))
    if n != want:
      raise ConfigError(f"{where}: {key!r} has {n} stored scored positions, its packed reference "
                        f"response {want} (data.max_response_len or data.length_buckets differ "
                        f"from the writer's?); {again}")
    digest = teacher.tokens_digest(key)
    if digest is not None and digest != tokens_digest(pool.row_tokens(i, r)):
      raise ConfigError(f"{where}: {key!r} was written for other tokens (its prompt or reference "
                        f"response changed, or the tokenizer or chat template); {again}")


def to_global_batch(batch: dict[str, np.ndarray], mesh, process_count: int | None = None
                    ) -> dict[str, jax.Array]:
  """Local [B/P, ...] numpy arrays -> global [B, ...] jax.Arrays sharded by "batch"."""
  P = jax.process_count() if process_count is None else process_count
  out = {}
  for k, v in batch.items():
    shape = (v.shape[0] * P,) + v.shape[1:]
    sharding = logical_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1), shape)
    out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
  return out
