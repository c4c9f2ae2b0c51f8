"""Random-access problem sources: TFDS (array_record), JSONL, Parquet and the synthetic suite.

Every source is a Grain-style random-access source: `len(source)` and `source[i] -> Problem`.
`load_pool(data_cfg, split, seed)` picks one by `DataConfig.source` and validates the pool.

Field mapping. `DataConfig.field_map` entries `problem_field=source_field` say which record
field feeds which `Problem` field; unmapped Problem fields read the field of the same name.
Record fields that feed no Problem field are kept in `Problem.metadata`. A record without an id
gets a stable one from its position: `FILE:LINE` (JSONL), `FILE:ROW` (Parquet) or
`NAME/SPLIT:INDEX` (TFDS) -- stable as long as the file is.

Validation. A malformed record is reported as `WHERE: field 'F' ...` with WHERE = file:line
(JSONL, 1-based), file:row (Parquet, 0-based) or name/split:index (TFDS). `on_error="error"`
stops at the first one; `"skip"` drops it, counts it (`source.skipped`) and logs the first.
Duplicate ids and an empty pool are always errors.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data.schema import Problem

log = logging.getLogger("paced_jax.data")

PROBLEM_FIELDS = ("id", "prompt", "answer", "solution", "difficulty")


class DataError(ConfigError):
  """Bad input data (a malformed record, a duplicate id, an empty pool); one-line message."""


def parse_field_map(entries: Sequence[str]) -> dict[str, str]:
  """`("prompt=question", ...)` -> {problem_field: source_field} for every Problem field."""
  out = {f: f for f in PROBLEM_FIELDS}
  for item in entries:
    dst, sep, src = item.partition("=")
    dst, src = dst.strip(), src.strip()
    if not sep or not dst or not src:
      raise ConfigError(f"data.field_map entry {item!r} is not of the form "
                        "problem_field=source_field, e.g. prompt=question")
    if dst not in PROBLEM_FIELDS:
      raise ConfigError(f"data.field_map entry {item!r}: {dst!r} is not a Problem field; "
                        f"choose one of {', '.join(PROBLEM_FIELDS)}")
    out[dst] = src
  return out


def _plain(v: Any) -> Any:
  """TFDS / Arrow values -> plain Python (bytes -> str, numpy scalars -> int/float)."""
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, np.ndarray):
    return [_plain(x) for x in v.tolist()] if v.dtype == object else v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  if isinstance(v, dict):
    return {k: _plain(x) for k, x in v.items()}
  return v


def record_to_problem(rec: dict, fields: dict[str, str], where: str, default_id: str) -> Problem:
  """Maps one record to a Problem; raises DataError('WHERE: field ...') on a bad record."""
  if not isinstance(rec, dict):
    raise DataError(f"{where}: record is a {type(rec).__name__}, expected an object of fields")
  rec = {k: _plain(v) for k, v in rec.items()}

  def text(name: str, required: bool) -> str | None:
    key = fields[name]
    v = rec.get(key)
    if v is None:
      if required:
        raise DataError(f"{where}: field {key!r} (for Problem.{name}) is missing; present "
                        f"fields: {', '.join(sorted(rec)) or 'none'}; map another with "
                        f"data.field_map={name}=FIELD")
      return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
      raise DataError(f"{where}: field {key!r} (for Problem.{name}) is a {type(v).__name__}, "
                      "expected text or a number")
    return str(v)

  prompt = text("prompt", True)
  if not prompt.strip():
    raise DataError(f"{where}: field {fields['prompt']!r} (for Problem.prompt) is empty")
  pid = text("id", False)
  difficulty = rec.get(fields["difficulty"])
  if difficulty is not None:
    if isinstance(difficulty, float) and difficulty.is_integer():
      difficulty = int(difficulty)
    if isinstance(difficulty, bool) or not isinstance(difficulty, int):
      raise DataError(f"{where}: field {fields['difficulty']!r} (for Problem.difficulty) is "
                      f"{difficulty!r}, expected an integer")
  used = set(fields.values())
  return Problem(id=pid if pid is not None else default_id, prompt=prompt,
                 answer=text("answer", True), solution=text("solution", False),
                 difficulty=difficulty,
                 metadata={k: v for k, v in rec.items() if k not in used})


class ListSource:
  """A validated, in-memory pool of Problems (JSONL, Parquet, or any list of Problems)."""

  def __init__(self, problems: Sequence[Problem], name: str = "pool", skipped: int = 0):
    self.problems = list(problems)
    self.name = name
    self.skipped = skipped
    check_pool(self.problems, name)

  def __len__(self) -> int:
    return len(self.problems)

  def __getitem__(self, i: int) -> Problem:
    return self.problems[i]

  def __repr__(self) -> str:
    return f"ListSource({self.name!r}, {len(self)} problems, {self.skipped} skipped)"


def check_pool(problems: Iterable[Problem], name: str) -> None:
  seen: dict[str, int] = {}
  n = 0
  for i, p in enumerate(problems):
    n += 1
    if p.id in seen:
      raise DataError(f"{name}: duplicate problem id {p.id!r} (records {seen[p.id]} and {i}); "
                      "ids key the pass-rate table and must be unique")
    seen[p.id] = i
  if n == 0:
    raise DataError(f"{name}: the problem pool is empty")


def _collect(rows: Iterable[tuple[str, str, Any]], fields: dict[str, str], on_error: str,
             name: str) -> ListSource:
  """rows: (where, default_id, record or an exception raised while reading it)."""
  problems, skipped, first = [], 0, None
  for where, default_id, rec in rows:
    try:
      if isinstance(rec, Exception):
        raise DataError(f"{where}: {rec}")
      problems.append(record_to_problem(rec, fields, where, default_id))
    except DataError as e:
      if on_error == "error":
        raise
      skipped += 1
      first = first or str(e)
  if skipped:
    log.warning("%s: skipped %d malformed record(s); first: %s", name, skipped, first)
  return ListSource(problems, name, skipped)


def _expand(path: str, setting: str = "data.path") -> list[str]:
  files = sorted(glob.glob(os.path.expanduser(path))) if path else []
  if not files:
    raise ConfigError(f"{setting}={path!r} matches no file; give a .jsonl / .parquet file or a "
                      "glob such as data/*.jsonl")
  return files


def jsonl_source(path: str, field_map: Sequence[str] = (), on_error: str = "error",
                 setting: str = "data.path") -> ListSource:
  """One JSON object per line; blank lines are ignored. `path` may be a glob."""
  fields = parse_field_map(field_map)

  def rows():
    for file in _expand(path, setting):
      base = os.path.basename(file)
      with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            rec: Any = json.loads(line)
          except json.JSONDecodeError as e:
            rec = ValueError(f"invalid JSON ({e.msg} at column {e.colno})")
          yield f"{file}:{n}", f"{base}:{n}", rec

  return _collect(rows(), fields, on_error, path)


def parquet_source(path: str, field_map: Sequence[str] = (), on_error: str = "error",
                   setting: str = "data.path") -> ListSource:
  """Parquet file(s) read with pyarrow; rows are 0-based in messages and default ids."""
  import pyarrow.parquet as pq

  fields = parse_field_map(field_map)

  def rows():
    for file in _expand(path, setting):
      try:
        table = pq.read_table(file)
      except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{file}: not a readable Parquet file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from None
      base = os.path.basename(file)
      for n, rec in enumerate(table.to_pylist()):
        yield f"{file}:{n}", f"{base}:{n}", rec

  return _collect(rows(), fields, on_error, path)


class TfdsSource:
  """`tfds.data_source` of a prepared (array_record) TFDS dataset, mapped to Problems lazily.

  Construction scans the split once to validate it (ids, fields); records that fail under
  `on_error="skip"` are left out and the remaining ones renumbered.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str = "",
               field_map: Sequence[str] = (), on_error: str = "error"):
    import tensorflow_datasets as tfds

    self.name, self.split = name, split
    self.fields = parse_field_map(field_map)
    try:
      # download=False and try_gcs=False: a data source must never touch the network.
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                     download=False, try_gcs=False)
    except Exception as e:  # DatasetNotFoundError, unknown split, not array_record, ...
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f"TFDS dataset {name!r} split {split!r} under data_dir="
                      f"{data_dir or '(default)'!r} cannot be opened: {msg}; prepare it with "
                      "file_format='array_record' (tfds build --file_format=array_record)"
                      ) from None
    self.skipped = 0
    keep, first = [], None
    problems = []
    for i in range(len(self.source)):
      try:
        problems.append(self._convert(i))
        keep.append(i)
      except DataError as e:
        if on_error == "error":
          raise
        self.skipped += 1
        first = first or str(e)
    if self.skipped:
      log.warning("%s/%s: skipped %d malformed record(s); first: %s", name, split, self.skipped,
                  first)
    check_pool(problems, f"{name}/{split}")
    self.keep = np.asarray(keep, np.int64)

  def _convert(self, i: int) -> Problem:
    where = f"{self.name}/{self.split}:{i}"
    return record_to_problem(self.source[i], self.fields, where, where)

  def __len__(self) -> int:
    return len(self.keep)

  def __getitem__(self, i: int) -> Problem:
    return self._convert(int(self.keep[i]))

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} problems)"


# Where each split of a file / TFDS pool comes from: (file setting, TFDS split setting).
_SPLIT_KEYS = {"train": ("path", "tfds_split"), "test": ("eval_path", "tfds_eval_split"),
               "probe": ("probe_path", "tfds_probe_split")}


def has_split(data_cfg: DataConfig, split: str) -> bool:
  """Whether the config names a `split` ("train", "test" or "probe") of its pool: always for
  the synthetic suite; for files and TFDS when its setting (`data.eval_path`,
  `data.tfds_probe_split`, ...) is set."""
  if data_cfg.source == "synthetic":
    return True
  file_key, tfds_key = _SPLIT_KEYS[split]
  return bool(getattr(data_cfg, tfds_key if data_cfg.source == "tfds" else file_key))


def load_pool(data_cfg: DataConfig, split: str = "train", seed: int = 0):
  """The problem pool named by `data_cfg.source`: a random-access source of Problems.

  `split` "train", "test" or "probe": for files `data.path`, `data.eval_path`,
  `data.probe_path`; for TFDS the splits `data.tfds_split`, `data.tfds_eval_split`,
  `data.tfds_probe_split` (another name is that TFDS split); the synthetic suite's own splits.
  """
  src = data_cfg.source
  if src == "synthetic":
    from paced_jax.data.synthetic import synthetic_source

    return synthetic_source(data_cfg, split=split, seed=seed)
  if src not in ("jsonl", "parquet", "tfds"):
    raise ConfigError(f"data.source={src!r} is not one of synthetic, jsonl, parquet, tfds")
  file_key, tfds_key = _SPLIT_KEYS.get(split, (None, None))
  if src == "tfds":
    if not data_cfg.tfds_name:
      raise ConfigError("data.source='tfds' needs data.tfds_name, e.g. --set data.tfds_name=gsm8k")
    tsplit = getattr(data_cfg, tfds_key) if tfds_key else split
    if not tsplit:
      raise ConfigError(f"no {split} split: set data.{tfds_key} to a split of "
                        f"{data_cfg.tfds_name!r}")
    return TfdsSource(data_cfg.tfds_name, tsplit, data_cfg.tfds_data_dir, data_cfg.field_map,
                      data_cfg.on_error)
  if file_key is None:
    raise ConfigError(f"split {split!r}: a {src} pool has the splits train (data.path), test "
                      "(data.eval_path) and probe (data.probe_path)")
  path = getattr(data_cfg, file_key)
  if not path:
    raise ConfigError(f"no held-out {split} file: set data.{file_key} (a {src} file of "
                      "problems not in the training pool)")
  read = jsonl_source if src == "jsonl" else parquet_source
  return read(path, data_cfg.field_map, data_cfg.on_error, setting=f"data.{file_key}")


def write_jsonl(problems: Iterable[Problem], path: str) -> None:
  """Writes Problems as JSONL that `jsonl_source` reads back unchanged (metadata inlined)."""
  with open(path, "w", encoding="utf-8") as f:
    for p in problems:
      rec = {"id": p.id, "prompt": p.prompt, "answer": p.answer}
      if p.solution is not None:
        rec["solution"] = p.solution
      if p.difficulty is not None:
        rec["difficulty"] = p.difficulty
      rec.update(p.metadata)
      f.write(json.dumps(rec) + "\n")
