"""Reference responses: the dataset's solutions, or teacher generations verified and cached.

Teacher mode (`data.reference="teacher"`): `generate_fn(problems) -> list[list[str]]` (e.g. K
teacher samples per problem from the sampler) runs once per problem; `verify(text, problem)`
keeps the correct ones (with `data.reference_verify=false` every response is kept as it
comes, wrong ones too, in a cache of its own); every kept response is cached on disk and the first
`data.references_per_problem` are used. The cache is a directory of ArrayRecord shards, one per
generation chunk, each record the JSON `{"id", "responses", "generated"}`; shard names carry a
digest of `cache_key` (name the teacher and sampling settings there) so a different teacher
never reads another's responses. A run interrupted mid-way keeps its finished chunks, and a
second run generates nothing for problems already cached -- including those whose responses all
failed verification (they are cached as empty and never sampled).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from typing import Callable, Sequence

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data.schema import Problem
from paced_jax.data.sources import DataError


def reference_text(ref) -> str:
  """A reference is a string, or {"text": ..., "eos": False} when it was cut at a budget."""
  return ref if isinstance(ref, str) else ref["text"]

log = logging.getLogger("paced_jax.data")

GenerateFn = Callable[[Sequence[Problem]], Sequence[Sequence[str]]]
VerifyFn = Callable[[str, Problem], bool]


class ReferenceCache:
  """ArrayRecord shards of verified responses keyed by problem id."""

  def __init__(self, directory: str, cache_key: str = ""):
    self.dir = directory
    self.tag = hashlib.sha1(cache_key.encode()).hexdigest()[:10]
    os.makedirs(directory, exist_ok=True)

  def shards(self) -> list[str]:
    return sorted(glob.glob(os.path.join(self.dir, f"references-{self.tag}-*.array_record")))

  def load(self) -> dict[str, list[str]]:
    """id -> verified responses; also sets `generated` (responses generated per id) and
    `failed` (id -> one response that failed verification, truncated)."""
    from array_record.python.array_record_module import ArrayRecordReader

    out: dict[str, list[str]] = {}
    self.generated, self.failed = {}, {}
    for shard in self.shards():
      reader = ArrayRecordReader(shard)
      try:
        for raw in reader.read_all():
          rec = json.loads(raw)
          out[rec["id"]] = list(rec["responses"])
          self.generated[rec["id"]] = rec.get("generated", 0)
          if rec.get("failed") is not None:
            self.failed[rec["id"]] = rec["failed"]
      finally:
        reader.close()
    return out

  def write(self, records: dict[str, list[str]], generated: dict[str, int],
            failed: dict[str, str] | None = None) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    path = os.path.join(self.dir, f"references-{self.tag}-{len(self.shards()):05d}.array_record")
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
      for pid, responses in records.items():
        rec = {"id": pid, "responses": responses, "generated": generated.get(pid, 0)}
        if failed and pid in failed:
          rec["failed"] = failed[pid][:EXAMPLE_CHARS]
        writer.write(json.dumps(rec).encode())
    finally:
      writer.close()
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written shard behind
    return path


def build_references(source, data_cfg: DataConfig, *, generate_fn: GenerateFn | None = None,
                     verify: VerifyFn | None = None, cache_dir: str = "", cache_key: str = "",
                     chunk_size: int = 256, progress: bool = False) -> list[list[str]]:
  """Per-problem reference texts aligned with `source`, for `build_pool(..., references=)`.

  "dataset": `[solution]` (or `[]` when a problem has none). "teacher": generated (a progress
  bar with `progress`), verified, cached under `cache_dir` (default `data.reference_cache`);
  see the module docstring. When no response verifies at all, a DataError line says how many
  were generated and shows one that failed (prompt and response, truncated); the cache stays.
  """
  N = len(source)
  if data_cfg.reference == "dataset":
    return [[p.solution] if p.solution else [] for p in (source[i] for i in range(N))]
  if generate_fn is None or verify is None:
    raise ConfigError("data.reference='teacher' needs generate_fn and verify: pass the "
                      "teacher sampler and the verifier to build_references")
  directory = cache_dir or data_cfg.reference_cache
  if not directory:
    raise ConfigError("data.reference='teacher' needs a cache directory: set "
                      "data.reference_cache=DIR (the trainer defaults it to <workdir>/references)")
  # Unverified references never share a cache with verified ones.
  cache = ReferenceCache(directory, cache_key if data_cfg.reference_verify
                         else cache_key + "|unverified")
  have = cache.load()
  generated, failed = dict(cache.generated), dict(cache.failed)
  missing = [i for i in range(N) if source[i].id not in have]
  if missing:
    log.info("generating teacher references for %d of %d problems", len(missing), N)
  from tqdm.auto import tqdm

  bar = tqdm(total=len(missing), desc="teacher references", unit="problem",
             disable=not progress or not missing, dynamic_ncols=True)
  try:
    for start in range(0, len(missing), chunk_size):
      problems = [source[i] for i in missing[start:start + chunk_size]]
      candidates = generate_fn(problems)
      if len(candidates) != len(problems):
        raise ValueError(f"generate_fn returned {len(candidates)} candidate lists for "
                         f"{len(problems)} problems")
      kept, bad = {}, {}
      for p, cands in zip(problems, candidates):
        right = [t for t in cands if verify(reference_text(t), p)]
        wrong = [t for t in cands if t not in right]
        kept[p.id] = right if data_cfg.reference_verify else list(cands)
        if wrong:
          bad[p.id] = reference_text(wrong[0])
      new = {p.id: len(c) for p, c in zip(problems, candidates)}
      cache.write(kept, new, bad)
      have.update(kept)
      generated.update(new)
      failed.update(bad)
      bar.update(len(problems))
      bar.set_postfix(verified=sum(len(have[p.id]) for p in problems), refresh=False)
  finally:
    bar.close()
  k = data_cfg.references_per_problem
  refs = [have[source[i].id][:k] for i in range(N)]
  solved = sum(1 for r in refs if r)
  ids = {source[i].id for i in range(N)}
  n_gen = sum(v for pid, v in generated.items() if pid in ids)
  n_ok = sum(len(have[source[i].id]) for i in range(N))
  if data_cfg.reference_verify:
    log.info("teacher references: %d of %d responses verified; %d of %d problems have one "
             "(cache %s)", n_ok, n_gen, solved, N, directory)
  else:
    n_bad = sum(1 for i in range(N) if source[i].id in failed)
    log.info("teacher references kept as they come (data.reference_verify=false): %d "
             "responses for %d of %d problems, %d problems with at least one that fails "
             "verification (cache %s)", n_ok, solved, N, n_bad, directory)
  if not solved:
    raise DataError(f"data.reference=teacher: none of the teacher's {n_gen} responses to {N} "
                    f"problems verified ({_example(source, failed)}); check "
                    "data.chat_template, paced.verifier and sample.max_new_tokens (a response "
                    f"cut at the budget rarely verifies); the generations stay cached in "
                    f"{directory}")
  return refs


EXAMPLE_CHARS = 300


def _example(source, failed: dict[str, str]) -> str:
  """One failed response with its prompt and answer, truncated, for an error line."""
  for i in range(len(source)):
    p = source[i]
    if p.id in failed:
      cut = lambda t, n: json.dumps(t if len(t) <= n else t[:n] + "...", ensure_ascii=False)
      return (f"e.g. problem {p.id!r}, answer {p.answer!r}: prompt {cut(p.prompt, 120)} -> "
              f"response {cut(failed[p.id], 200)}")
  return "no response was generated"
