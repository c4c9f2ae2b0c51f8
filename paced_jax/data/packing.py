"""Tokenised pool and packing of (prompt, response) pairs into bucketed, right-padded rows.

Row layout (one example per row, right-padded to the smallest bucket that fits the batch):

  tokens     [BOS] prompt ... response ... EOS  pad pad
  positions  0     1      ... P   ...      L-1  0   0
  segment    1     1      ... 1   ...      1    0   0      (0 = padding)
  targets    tokens shifted left by one: targets[t] = tokens[t+1], pad at the end
  loss_mask  1 at t in [P-1, L-2]: where targets[t] is a response token (EOS included)

so the loss is `sum_t loss_mask[t] * -log p(targets[t] | tokens[:t+1])` -- the logits at position
t predict token t+1. P is the prompt length (BOS and chat template included), L the row length.

Truncation: a response longer than `data.max_response_len` (or than what is left of the largest
bucket after the prompt) is cut; a cut response loses its EOS, so the student is never taught
to stop mid-solution. A prompt longer than `data.max_prompt_len` (or the largest bucket minus one
token) is an error, or with `data.on_error=skip` makes the problem unusable (never sampled).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data.references import reference_text
from paced_jax.data.sources import DataError
from paced_jax.data.tokenizer import Tokenizer, encode_many, prompt_prefix, prompt_text
from paced_jax.teacher_logits import record_key

log = logging.getLogger("paced_jax.data")


def pack_rows(prompts: Sequence[np.ndarray], responses: Sequence[np.ndarray | None], T: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Packs B (prompt, response) token arrays into [B, T] rows; see the module docstring.

  A `None` response gives a prompt-only row (loss_mask all zero), e.g. for on-policy sampling.
  """
  ptoks, poff = _ragged(prompts)
  rtoks, roff = _ragged([np.zeros(0, np.int32) if r is None else r for r in responses])
  return pack_ragged(ptoks, poff[:-1], np.diff(poff), rtoks, roff[:-1], np.diff(roff), T, pad_id)


def pack_ragged(ptoks: np.ndarray, pstart: np.ndarray, plen: np.ndarray, rtoks: np.ndarray,
                rstart: np.ndarray, rlen: np.ndarray, T: int, pad_id: int
                ) -> dict[str, np.ndarray]:
  """pack_rows on slices of flat token arrays, vectorised over [B, T] (no per-row loop)."""
  plen, rlen = plen.astype(np.int64), rlen.astype(np.int64)
  L = plen + rlen
  if (L > T).any():
    b = int(np.argmax(L > T))
    raise ValueError(f"row {b}: {int(L[b])} tokens do not fit length {T}")
  col = np.arange(T, dtype=np.int64)[None, :]
  P_, L_ = plen[:, None], L[:, None]
  in_prompt, in_resp = col < P_, (col >= P_) & (col < L_)
  # Clipped gathers: out-of-range slots read some valid token and are then masked away.
  pt = ptoks[np.clip(pstart[:, None] + col, 0, max(len(ptoks) - 1, 0))] if len(ptoks) else 0
  rt = rtoks[np.clip(rstart[:, None] + col - P_, 0, max(len(rtoks) - 1, 0))] if len(rtoks) else 0
  tokens = np.where(in_prompt, pt, np.where(in_resp, rt, pad_id)).astype(np.int32)
  real = col < L_
  targets = np.full_like(tokens, pad_id)
  targets[:, :-1] = tokens[:, 1:]
  # loss_mask[t] = 1 where targets[t] = tokens[t+1] is a response token: t in [P-1, L-2].
  loss_mask = ((col >= P_ - 1) & (col < L_ - 1) & (rlen[:, None] > 0)).astype(np.float32)
  return dict(tokens=tokens, targets=targets, loss_mask=loss_mask,
              positions=np.where(real, col, 0).astype(np.int32),
              segment_ids=real.astype(np.int32), prompt_lens=plen.astype(np.int32),
              lengths=L.astype(np.int32))


def _ragged(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  offsets = np.zeros(len(arrays) + 1, np.int64)
  offsets[1:] = np.cumsum([len(a) for a in arrays])
  flat = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
  return flat, offsets


@dataclasses.dataclass(frozen=True)
class TokenizedPool:
  """Every problem's prompt tokens and reference-response tokens, as flat ragged arrays.

  Problem i's prompt is `prompt_tokens[prompt_offsets[i]:prompt_offsets[i+1]]`; its references
  are responses `ref_offsets[i]` .. `ref_offsets[i+1]-1`, each `response_tokens[response_offsets[
  j]:response_offsets[j+1]]` (EOS appended unless truncated). `usable[i]` is False for problems
  that can never be sampled with a reference (prompt too long under on_error=skip, or no
  reference response); `prompt_ok[i]` only needs the prompt to fit (rows whose response the
  student samples: on-policy and reverse-KL phases need no reference).
  """

  ids: tuple[str, ...]
  prompt_tokens: np.ndarray
  prompt_offsets: np.ndarray
  response_tokens: np.ndarray
  response_offsets: np.ndarray
  ref_offsets: np.ndarray
  usable: np.ndarray
  prompts_only: bool
  truncated: int  # responses cut to fit
  prompt_ok: np.ndarray | None = None  # None: same as usable

  def __post_init__(self):
    if self.prompt_ok is None:
      object.__setattr__(self, "prompt_ok", self.usable)
    # Cached lengths: batch assembly reads them for every batch.
    object.__setattr__(self, "_plen", np.diff(self.prompt_offsets))
    object.__setattr__(self, "_rlen", np.diff(self.response_offsets))
    object.__setattr__(self, "_nref", np.diff(self.ref_offsets))

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def prompt_lens(self) -> np.ndarray:
    return self._plen

  @property
  def num_refs(self) -> np.ndarray:
    return self._nref

  def prompt(self, i: int) -> np.ndarray:
    return self.prompt_tokens[self.prompt_offsets[i]:self.prompt_offsets[i + 1]]

  def response(self, j: int) -> np.ndarray:
    return self.response_tokens[self.response_offsets[j]:self.response_offsets[j + 1]]

  def reference_keys(self) -> list[str]:
    """The offline teacher's record key of every reference, by global reference index
    (teacher_logits.record_key: the problem id, or "id#j" for a problem with several)."""
    n = self.num_refs
    return [record_key(self.ids[i], j, int(n[i])) for i in range(len(self.ids))
            for j in range(int(n[i]))]

  def row_tokens(self, i: int, j: int) -> np.ndarray:
    """The packed row's tokens of problem i with (global) reference j: prompt + response."""
    return np.concatenate([self.prompt(i), self.response(j)])

  def usable_for(self, need_reference: bool) -> np.ndarray:
    """Problems that can be drawn when rows need a reference response (or only a prompt)."""
    return self.usable if need_reference and not self.prompts_only else self.prompt_ok

  def pack(self, idx: np.ndarray, ref: np.ndarray, T: int, pad_id: int,
           responses: bool = True) -> dict[str, np.ndarray]:
    """Rows for problems idx with (global) reference indices ref; see pack_rows.
    `responses=False` packs prompt-only rows (ref ignored)."""
    pstart, plen = self.prompt_offsets[idx], self.prompt_lens[idx]
    if self.prompts_only or not responses:
      rstart, rlen = np.zeros_like(idx), np.zeros_like(idx)
    else:
      rstart, rlen = self.response_offsets[ref], self._rlen[ref]
    return pack_ragged(self.prompt_tokens, pstart, plen, self.response_tokens, rstart, rlen, T,
                       pad_id)

  def row_lengths(self, idx: np.ndarray, ref: np.ndarray, responses: bool = True) -> np.ndarray:
    """Packed length of problem idx[k] with (global) reference ref[k]; ref ignored if
    prompts_only or not `responses`."""
    plen = self.prompt_lens[idx]
    if self.prompts_only or not responses:
      return plen
    return plen + self._rlen[ref]


def build_pool(source, tok: Tokenizer, data_cfg: DataConfig,
               references: Sequence[Sequence[str]] | None = None,
               prompts_only: bool = False) -> TokenizedPool:
  """Tokenises every problem of `source` once (prompt with the chat template, references + EOS).

  references: per-problem reference texts aligned with `source` (from `build_references`);
  None takes `Problem.solution` (data.reference="dataset"). prompts_only: no responses at all
  (on-policy training samples them).
  """
  N = len(source)
  problems = [source[i] for i in range(N)]
  max_bucket = data_cfg.length_buckets[-1]
  # Leave room for at least one response token unless the rows are prompts only.
  max_prompt = min(data_cfg.max_prompt_len, max_bucket - (0 if prompts_only else 1))
  if references is None and not prompts_only:
    if data_cfg.reference == "teacher":
      raise ConfigError("data.reference='teacher' but no references were given: build them "
                        "with paced_jax.data.build_references(...) and pass references=...")
    references = [[p.solution] if p.solution else [] for p in problems]
  if references is not None and len(references) != N:
    raise ValueError(f"references has {len(references)} entries for a pool of {N} problems")

  bos = np.asarray(prompt_prefix(tok, data_cfg.chat_template), np.int32)
  texts = [prompt_text(tok, p.prompt, data_cfg.chat_template) for p in problems]
  try:
    prompt_ids = encode_many(tok, texts)
  except DataError:  # re-encode one by one to name the problem
    prompt_ids = [_encode_named(tok, t, p.id, "prompt") for t, p in zip(texts, problems)]
  prompts, usable, too_long = [], np.ones(N, bool), []
  for i, ids in enumerate(prompt_ids):
    arr = np.concatenate([bos, ids]) if len(bos) else ids
    if len(arr) > max_prompt:
      too_long.append(i)
      usable[i] = False
      arr = arr[:0]
    prompts.append(arr)
  if too_long:
    first = problems[too_long[0]]
    msg = (f"problem {first.id!r}: prompt has {len(bos) + len(prompt_ids[too_long[0]])} "
           f"tokens, more than {max_prompt} (data.max_prompt_len={data_cfg.max_prompt_len}, "
           f"largest bucket {max_bucket}); raise them or set data.on_error=skip")
    if data_cfg.on_error == "error":
      raise DataError(msg)
    log.warning("%d problem(s) with prompts too long are never sampled; first: %s",
                len(too_long), msg)

  responses, ref_counts, truncated = [], np.zeros(N, np.int64), 0
  eos = np.asarray([tok.eos_id], np.int32)
  if not prompts_only:
    flat_refs = [(i, reference_text(r), reference_complete(r))
                 for i in range(N) if usable[i] for r in references[i]]
    try:
      resp_ids = encode_many(tok, [r for _, r, _ in flat_refs])
    except DataError:
      resp_ids = [_encode_named(tok, r, problems[i].id, "reference") for i, r, _ in flat_refs]
    for (i, _, complete), ids in zip(flat_refs, resp_ids):
      room = min(data_cfg.max_response_len, max_bucket - len(prompts[i]))
      # A reference that was itself cut (a teacher sample that hit its token budget) gets no
      # EOS: the student must not learn to stop where the teacher was cut off.
      arr = np.concatenate([ids, eos]) if complete else np.asarray(ids, np.int32)
      if len(arr) > room:
        arr, truncated = arr[:room], truncated + 1
      responses.append(arr)
      ref_counts[i] += 1
    no_ref = usable & (ref_counts == 0)
    if no_ref.any():
      log.warning("%d problem(s) have no reference response and are never sampled (first: %r)",
                  int(no_ref.sum()), problems[int(np.argmax(no_ref))].id)
    if truncated:
      log.info("%d reference response(s) truncated to fit data.max_response_len / buckets",
               truncated)
  prompt_ok = usable.copy()
  if not prompts_only:
    usable &= ref_counts > 0
  if not usable.any():
    raise DataError(f"no usable problem among {N}: every problem lacks a reference response "
                    "or has a prompt that is too long")
  ptoks, poff = _ragged(prompts)
  rtoks, roff = _ragged(responses)
  ref_off = np.zeros(N + 1, np.int64)
  ref_off[1:] = np.cumsum(ref_counts)
  return TokenizedPool(ids=tuple(p.id for p in problems), prompt_tokens=ptoks,
                       prompt_offsets=poff, response_tokens=rtoks, response_offsets=roff,
                       ref_offsets=ref_off, usable=usable, prompts_only=prompts_only,
                       truncated=truncated, prompt_ok=prompt_ok)


def reference_complete(ref) -> bool:
  return isinstance(ref, str) or bool(ref.get("eos", True))


def _encode_named(tok: Tokenizer, text: str, pid: str, what: str) -> np.ndarray:
  try:
    return np.asarray(tok.encode(text), np.int32)
  except DataError as e:
    raise DataError(f"problem {pid!r} {what}: {e}") from None
