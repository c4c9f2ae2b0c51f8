"""Offline top-k teacher logits: computed once, stored in ArrayRecord shards, read in training.

The teacher runs once over each problem's reference response; at every scored position (the
positions whose next token is a response token, packing.py's loss_mask) it keeps its k most
likely tokens and their log-probabilities at the loss temperature (normalised over the full
vocabulary), and the log of the mass of all other tokens. Training then reads these instead of
running the teacher (losses.offline_forward_kl, fused_loss.fused_offline_forward_kl).
`paced teacher-logits CONFIG --out DIR` (commands.py) writes them for a config's pool; a run
with loss.teacher=offline:DIR reads them (open_for_run, data/pipeline.py). A record's key is
record_key: the problem id, or "id#j" for reference j of a problem with several.

    ids, logp, log_tail = topk_from_logits(logits_RV, k, temperature)   # jit-friendly
    with TeacherLogitsWriter(out_dir, meta, process=jax.process_index()) as w:
      for pid, (ids, logp, log_tail) in ...:     # w.done: ids already stored (resume)
        w.add(pid, ids, logp, log_tail)
    teacher = OfflineTeacher(out_dir)            # verifies every shard
    teacher.check_manifest({"k": 64, "temperature": 1.0, "teacher": {"hash": ...}})
    ids, logp, log_tail = teacher.get(pid)       # [R_i, k] int32, [R_i, k] fp32, [R_i] fp32

On disk (DIR):
  meta.json                     the settings every shard was written with (`meta`, plus the
                                format fields below); a resumed writer must give the same
  shard-PPPPP-IIIII.array_record  ArrayRecord (group_size:1: random access per record), one
                                record per problem; PPPPP the writing process, IIIII its shard
  shard-PPPPP-IIIII.index.json  the shard's commit point, written after the shard: its record
                                count, byte size, ids, positions per id (resume reads these),
                                per id the digest of the tokens the teacher read and its FLOPs
  manifest.json                 meta + every committed shard (name, records, bytes, ids,
                                positions, tokens, flops) + problem_ids + compute
                                {"offline_teacher_flops"}; written by write_manifest (the
                                writer's close), read by OfflineTeacher
Every file is written to a .tmp name and renamed (atomic): a crash leaves finished shards and
at worst an uncommitted shard without its index (ignored; its problems are redone).

A record (little-endian): b"PTL1", uint32 n, n bytes of JSON header {"id", "positions": R,
"k", "crc32" (of the payload), "tokens" (optional digest of the tokens the teacher read)}, then
the payload
  ids       [R, k] int32
  logp      [R, k] float16   (LOGP_DTYPE: the same 2 bytes as bf16 with 3 more mantissa bits;
                              log-probabilities in [-65504, 0] need no bf16 range; -inf kept)
  log_tail  [R]    float32
= 6k + 4 bytes per scored position before compression (388 at k=64, 1540 at k=256).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import struct
import zlib
from typing import Any, Iterable, Sequence

import numpy as np

from paced_jax.config import ConfigError

log = logging.getLogger("paced_jax.teacher_logits")

FORMAT = "paced_jax.teacher_logits"
VERSION = 1
MAGIC = b"PTL1"
LOGP_DTYPE = np.dtype("<f2")
IDS_DTYPE = np.dtype("<i4")
TAIL_DTYPE = np.dtype("<f4")
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads one problem
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # random access
MANIFEST = "manifest.json"
META = "meta.json"
_SHARD_RE = re.compile(r"^shard-(\d{5})-(\d{5})\.")


def bytes_per_position(k: int) -> int:
  """Uncompressed payload bytes per scored position."""
  return k * (IDS_DTYPE.itemsize + LOGP_DTYPE.itemsize) + TAIL_DTYPE.itemsize


# --- computing -----------------------------------------------------------------------------


def topk_from_logits(logits_RV, k: int, temperature: float = 1.0):
  """(ids [..., k] int32, logp [..., k] fp32, log_tail [...] fp32) from logits [..., V].

  logp = log_softmax(logits / temperature) (fp32, normalised over the whole vocabulary) at the
  k largest (lax.top_k: distinct ids, descending); log_tail = log(sum of the other V - k
  probabilities) = log(max(1 - sum exp(logp), 0)), computed as a logsumexp over the complement
  (exact however small the tail; -inf when k = V). Jit-friendly (k static)."""
  import jax
  import jax.numpy as jnp

  from paced_jax import losses

  V = logits_RV.shape[-1]
  if not 1 <= k <= V:
    raise ValueError(f"k={k} must be in [1, {V}] (the vocabulary)")
  logp = jax.nn.log_softmax(logits_RV.astype(jnp.float32) / temperature, axis=-1)
  top, ids = jax.lax.top_k(logp, k)
  in_top = losses._scatter_true(ids, logp.shape)
  log_tail = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, logp), axis=-1)
  return ids.astype(jnp.int32), top, log_tail


def files_hash(path: str) -> str:
  """sha256 over a file, or a directory's files (relative names and contents, sorted; hidden
  files and *.tmp skipped): the manifest's content hash of the teacher's or tokenizer's files."""
  h = hashlib.sha256()
  if os.path.isfile(path):
    files = [(os.path.basename(path), path)]
  else:
    files = []
    for root, dirs, names in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      files += [(os.path.relpath(os.path.join(root, n), path), os.path.join(root, n))
                for n in names if not n.startswith(".") and not n.endswith(".tmp")]
    files.sort()
  for rel, full in files:
    h.update(rel.encode() + b"\0")
    with open(full, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    h.update(b"\0")
  return h.hexdigest()


def tokens_digest(tokens) -> str:
  """Short digest of the tokens the teacher read (`paced teacher-logits`: the packed row, prompt
  and reference response), checked against the pool's rows when a run opens the logits."""
  return hashlib.sha1(np.ascontiguousarray(tokens, IDS_DTYPE).tobytes()).hexdigest()[:16]


def record_key(problem_id: str, j: int, n: int) -> str:
  """The record key of reference j of a problem with n references: the problem id when it has
  one (data.reference=dataset: its solution), f"{problem_id}#{j}" when it has several."""
  return str(problem_id) if n == 1 else f"{problem_id}#{j}"


def tokenizer_hash(spec: str) -> str:
  """Content hash of what turns a run's text into tokens (data.tokenizer): "char" for the
  built-in tokenizer; else sha256 over its tokenizer.json and, beside it, tokenizer_config.json
  and chat_template.jinja (EOS, BOS, the chat template), not the model's weights."""
  if spec == "char":
    return "char"
  file = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
  h = hashlib.sha256()
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    path = file if name == "tokenizer.json" else os.path.join(os.path.dirname(file), name)
    if os.path.isfile(path):
      h.update(name.encode() + b"\0" + files_hash(path).encode() + b"\0")
  return h.hexdigest()


def token_meta(cfg) -> dict:
  """The manifest fields that shape the tokens and scored positions the logits belong to (a
  Config's): the loss temperature, the logits' vocabulary (loss.vocab_limit, else the
  model's), the tokenizer (path and tokenizer_hash), the chat template and the data fields
  of tokenisation, truncation and length buckets. A run reading the logits must match them."""
  d = cfg.data
  return {"temperature": float(cfg.loss.temperature), "vocab_limit": cfg.loss.vocab_limit,
          "vocab": cfg.loss.vocab_limit or cfg.model.vocab_size,
          "tokenizer": {"path": d.tokenizer, "hash": tokenizer_hash(d.tokenizer)},
          "data": {"chat_template": d.chat_template,
                   "chat_template_kwargs": list(d.chat_template_kwargs),
                   "max_prompt_len": d.max_prompt_len, "max_response_len": d.max_response_len,
                   "references_per_problem": d.references_per_problem,
                   "reference": d.reference, "length_buckets": list(d.length_buckets)}}


# --- records -------------------------------------------------------------------------------


def encode_record(problem_id: str, ids, logp, log_tail, tokens=None) -> bytes:
  """One problem's record (see the module docstring). ids [R, k], logp [R, k], log_tail [R]."""
  ids, logp, log_tail = np.asarray(ids), np.asarray(logp), np.asarray(log_tail)
  if ids.ndim != 2 or logp.shape != ids.shape or log_tail.shape != ids.shape[:1]:
    raise ValueError(f"problem {problem_id!r}: ids {ids.shape}, logp {logp.shape}, log_tail "
                     f"{log_tail.shape} must be [R, k], [R, k], [R]")
  if np.isnan(logp).any() or np.isnan(log_tail).any() or (logp > 0).any():
    raise ValueError(f"problem {problem_id!r}: log-probabilities must be <= 0 and not NaN")
  R, k = ids.shape
  payload = b"".join([
      np.ascontiguousarray(ids, IDS_DTYPE).tobytes(),
      # Clamped to float16's range: an entry below -65504 (probability 0 to any precision)
      # stays finite; -inf stays -inf.
      np.ascontiguousarray(np.where(np.isneginf(logp), -np.inf, np.maximum(logp, -65504.0)),
                           LOGP_DTYPE).tobytes(),
      np.ascontiguousarray(log_tail, TAIL_DTYPE).tobytes()])
  head = {"id": problem_id, "positions": R, "k": k, "crc32": zlib.crc32(payload)}
  if tokens is not None:
    head["tokens"] = tokens_digest(tokens)
  hb = json.dumps(head, separators=(",", ":")).encode()
  return MAGIC + struct.pack("<I", len(hb)) + hb + payload


def decode_record(raw: bytes, where: str = "record"):
  """(header dict, ids [R, k] int32, logp [R, k] float32, log_tail [R] float32); a malformed
  record raises ConfigError naming `where`."""
  bad = lambda why: ConfigError(f"offline teacher {where} is corrupt: {why}")
  if len(raw) < 8 or raw[:4] != MAGIC:
    raise bad("not a teacher-logits record (bad magic)")
  (n,) = struct.unpack("<I", raw[4:8])
  try:
    head = json.loads(raw[8:8 + n])
    R, k = int(head["positions"]), int(head["k"])
  except (ValueError, KeyError, TypeError):
    raise bad("unreadable record header") from None
  payload = raw[8 + n:]
  n_ids, n_logp = R * k * IDS_DTYPE.itemsize, R * k * LOGP_DTYPE.itemsize
  if len(payload) != n_ids + n_logp + R * TAIL_DTYPE.itemsize:
    raise bad(f"record {head.get('id')!r} holds {len(payload)} payload bytes, not the "
              f"{n_ids + n_logp + R * TAIL_DTYPE.itemsize} of {R} positions at k={k}")
  if zlib.crc32(payload) != head.get("crc32"):
    raise bad(f"record {head.get('id')!r} fails its crc32 check")
  ids = np.frombuffer(payload, IDS_DTYPE, R * k).reshape(R, k).astype(np.int32)
  logp = np.frombuffer(payload, LOGP_DTYPE, R * k, n_ids).reshape(R, k).astype(np.float32)
  tail = np.frombuffer(payload, TAIL_DTYPE, R, n_ids + n_logp).astype(np.float32)
  return head, ids, logp, tail


# --- writing -------------------------------------------------------------------------------


def _json_value(x):
  return json.loads(json.dumps(x))


def _first_difference(have: Any, want: Any, path: str = "") -> tuple[str, Any, Any] | None:
  """(dotted field, have, want) of the first field of `want` that `have` lacks or differs in."""
  if isinstance(want, dict):
    if not isinstance(have, dict):
      return path or "<root>", have, want
    for key, w in want.items():
      d = _first_difference(have.get(key, _MISSING), w, f"{path}.{key}" if path else key)
      if d is not None:
        return d
    return None
  return None if have == want else (path, have, want)


class _Missing:
  def __repr__(self):
    return "<missing>"


_MISSING = _Missing()


def _atomic_write(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _format_fields() -> dict:
  return {"format": FORMAT, "version": VERSION, "ids_dtype": "int32", "logp_dtype": "float16",
          "log_tail_dtype": "float32", "writer_options": WRITER_OPTIONS}


def write_meta(directory: str, meta: dict) -> dict:
  """meta.json (meta plus the format fields); when it exists already it must hold the same
  settings (a resumed writer with another teacher, k or temperature raises ConfigError)."""
  if "k" not in meta or "temperature" not in meta:
    raise ValueError("teacher-logits meta needs 'k' and 'temperature'")
  full = _json_value({**meta, **_format_fields()})
  path = os.path.join(directory, META)
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    d = _first_difference(have, full) or _first_difference(full, have)
    if d is not None:
      field, a, b = d
      raise ConfigError(f"{directory} holds teacher logits written with {field}={a!r}, not "
                        f"{b!r}: use another directory (or delete it to start over)")
    return have
  _atomic_write(path, json.dumps(full, indent=1, sort_keys=True).encode())
  return full


def _committed_shards(directory: str) -> list[dict]:
  """The shards whose index file exists and whose bytes match it, sorted by name; a shard that
  is missing or has another size (truncated) is skipped with a warning (its problems redone)."""
  out = []
  for idx_path in sorted(glob.glob(os.path.join(directory, "shard-*.index.json"))):
    try:
      with open(idx_path) as f:
        rec = json.load(f)
    except (OSError, ValueError) as e:  # damaged from outside (the writer renames it whole)
      log.warning("teacher logits: shard index %s is unreadable (%s): its problems are not "
                  "counted", idx_path, _one_line(e))
      continue
    path = os.path.join(directory, rec["name"])
    size = os.path.getsize(path) if os.path.exists(path) else None
    if size != rec["bytes"]:
      log.warning("teacher logits: shard %s is %s (index says %d bytes): its %d problems are "
                  "not counted", path, "missing" if size is None else f"{size} bytes",
                  rec["bytes"], rec["records"])
      continue
    out.append(rec)
  return out


def completed_ids(directory: str) -> set[str]:
  """Problem ids already stored in committed shards of `directory` (any process): a resumed
  writer skips them."""
  if not os.path.isdir(directory):
    return set()
  return {i for rec in _committed_shards(directory) for i in rec["ids"]}


def write_manifest(directory: str) -> dict:
  """manifest.json from meta.json and every committed shard (all processes': call it once, after
  they all finished). An id stored twice (two processes, or a redone shard) is read from its
  first shard by name."""
  with open(os.path.join(directory, META)) as f:
    meta = json.load(f)
  shards, first, total, flops = _committed_shards(directory), {}, 0, 0.0
  for rec in shards:
    per = rec.get("flops") or [0.0] * len(rec["ids"])
    for i, n, f in zip(rec["ids"], rec["positions"], per):
      if i not in first:
        first[i] = rec["name"]
        total += n
        flops += f
  # compute: the teacher forward's FLOPs of the stored records, once each (flops.py conventions)
  manifest = dict(meta, shards=shards, problem_ids=list(first), records=len(first),
                  positions=total, bytes=int(sum(rec["bytes"] for rec in shards)),
                  compute={"offline_teacher_flops": flops})
  _atomic_write(os.path.join(directory, MANIFEST),
                json.dumps(manifest, indent=1, sort_keys=True).encode())
  return manifest


class TeacherLogitsWriter:
  """Appends records to ArrayRecord shards of `directory` for process `process`; see the module
  docstring. `meta`: JSON-serialisable settings, at least k and temperature; the manifest adds
  the format fields. Problems in `done` (committed by an earlier run) are skipped by `add`.
  `close(finalize=True)` (the context manager's exit without an error) flushes and writes
  manifest.json: with several processes, let only process 0 finalize, after every process
  closed (write_manifest)."""

  def __init__(self, directory: str, meta: dict, *, process: int = 0,
               records_per_shard: int = 256):
    if records_per_shard < 1:
      raise ValueError(f"records_per_shard={records_per_shard} must be >= 1")
    os.makedirs(directory, exist_ok=True)
    self.dir, self.process, self.per_shard = directory, int(process), records_per_shard
    self.meta = write_meta(directory, meta)
    self.k = int(self.meta["k"])
    self.done = completed_ids(directory)
    used = [int(m.group(2)) for n in os.listdir(directory)
            if (m := _SHARD_RE.match(n)) and int(m.group(1)) == self.process]
    self._next = max(used, default=-1) + 1
    self._buf: list[tuple[str, bytes, int]] = []
    self._ids_in_buf: set[str] = set()
    self._digests: list[str | None] = []  # per buffered record: its tokens digest, its FLOPs
    self._flops: list[float] = []
    self.written: list[str] = []  # shard names written by this writer

  def add(self, problem_id: str, ids, logp, log_tail, tokens=None, flops: float = 0.0) -> bool:
    """Buffers one problem (ids [R, k], logp [R, k], log_tail [R]; `tokens`: the tokens the
    teacher read (the packed row: prompt and response), stored as a digest in the record and in
    the shard's index; `flops`: the teacher forward's FLOPs spent on it, summed into the
    manifest's compute); False (nothing written) when it is stored already."""
    problem_id = str(problem_id)
    if problem_id in self.done or problem_id in self._ids_in_buf:
      return False
    if np.shape(ids)[-1] != self.k:
      raise ValueError(f"problem {problem_id!r}: {np.shape(ids)[-1]} ids per position, the "
                       f"directory's k is {self.k}")
    raw = encode_record(problem_id, ids, logp, log_tail, tokens)
    self._buf.append((problem_id, raw, int(np.shape(ids)[0])))
    self._ids_in_buf.add(problem_id)
    self._digests.append(None if tokens is None else tokens_digest(tokens))
    self._flops.append(float(flops))
    if len(self._buf) >= self.per_shard:
      self.flush()
    return True

  def flush(self) -> str | None:
    """Writes the buffered records as one shard (tmp + rename), then commits its index."""
    if not self._buf:
      return None
    from array_record.python.array_record_module import ArrayRecordWriter

    name = f"shard-{self.process:05d}-{self._next:05d}.array_record"
    path = os.path.join(self.dir, name)
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for _, raw, _ in self._buf:
        writer.write(raw)
    finally:
      writer.close()
    os.replace(tmp, path)
    index = {"name": name, "records": len(self._buf), "bytes": os.path.getsize(path),
             "ids": [i for i, _, _ in self._buf], "positions": [r for _, _, r in self._buf],
             "tokens": list(self._digests), "flops": list(self._flops)}
    _atomic_write(path[:-len(".array_record")] + ".index.json",
                  json.dumps(index, separators=(",", ":")).encode())  # the commit point
    self.done.update(index["ids"])
    self._buf, self._ids_in_buf, self._digests, self._flops = [], set(), [], []
    self._next += 1
    self.written.append(name)
    return name

  def close(self, finalize: bool = True) -> dict | None:
    self.flush()
    return write_manifest(self.dir) if finalize else None

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:  # keep what was committed; never finalize a failed run's manifest
      self._buf, self._ids_in_buf, self._digests, self._flops = [], set(), [], []


# --- reading -------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:300]


class OfflineTeacher:
  """The stored teacher logits of `directory` (manifest.json and its shards).

  Opening verifies every shard: it exists, has the manifest's byte size, opens as an ArrayRecord
  file with the manifest's record count (`verify="full"` also reads and checks every record,
  crc32 included). Any failure raises ConfigError, one line naming the file. `get` checks each
  record it reads (header, id, size, crc32). Picklable (readers reopen lazily): grain workers
  may hold one."""

  def __init__(self, directory: str, *, verify: str = "size"):
    if verify not in ("size", "full"):
      raise ValueError(f"verify={verify!r} must be 'size' or 'full'")
    self.dir = directory
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise ConfigError(f"no {MANIFEST} in {directory}: not a teacher-logits directory, or its "
                        "writer did not finish (run it again: it resumes)")
    try:
      with open(path) as f:
        self.manifest = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{path} is unreadable: {_one_line(e)}") from None
    m = self.manifest
    if m.get("format") != FORMAT or m.get("version") != VERSION:
      raise ConfigError(f"{path} is format {m.get('format')!r} version {m.get('version')!r}, "
                        f"not {FORMAT!r} version {VERSION}")
    self.k, self.temperature = int(m["k"]), float(m["temperature"])
    self._where: dict[str, tuple[int, int, int]] = {}  # id -> (shard, record, positions)
    self._digest: dict[str, str | None] = {}  # id -> digest of the tokens the teacher read
    for s, rec in enumerate(m["shards"]):
      digests = rec.get("tokens") or [None] * len(rec["ids"])
      for r, (pid, n, d) in enumerate(zip(rec["ids"], rec["positions"], digests)):
        if pid not in self._where:
          self._where[pid], self._digest[pid] = (s, r, n), d
    self._readers: dict[int, Any] = {}
    for s in range(len(m["shards"])):
      self._check_shard(s)
    if verify == "full":
      for pid in self._where:
        self.get(pid)

  def _path(self, s: int) -> str:
    return os.path.join(self.dir, self.manifest["shards"][s]["name"])

  def _open(self, s: int):
    from array_record.python.array_record_module import ArrayRecordReader

    path, rec = self._path(s), self.manifest["shards"][s]
    try:
      reader = ArrayRecordReader(path, READER_OPTIONS)
      ok = reader.ok()
      n = reader.num_records() if ok else None
    except Exception as e:  # noqa: BLE001 (the C++ reader's errors are RuntimeErrors, mostly)
      raise ConfigError(f"offline teacher shard {path} is unreadable: {_one_line(e)}") from None
    if not ok or n != rec["records"]:
      try:
        reader.close()
      except RuntimeError:  # a reader that failed to open fails to close too
        pass
      raise ConfigError(f"offline teacher shard {path} is corrupt: " + (
          "not a readable ArrayRecord file" if not ok else
          f"{n} records, the manifest says {rec['records']}"))
    return reader

  def _check_shard(self, s: int) -> None:
    path, rec = self._path(s), self.manifest["shards"][s]
    if not os.path.exists(path):
      raise ConfigError(f"offline teacher shard {path} is missing")
    size = os.path.getsize(path)
    if size != rec["bytes"]:
      raise ConfigError(f"offline teacher shard {path} is {size} bytes, the manifest says "
                        f"{rec['bytes']} (truncated or rewritten)")
    self._readers[s] = self._open(s)

  def _reader(self, s: int):
    if s not in self._readers:
      self._readers[s] = self._open(s)
    return self._readers[s]

  def __len__(self) -> int:
    return len(self._where)

  def __contains__(self, problem_id: str) -> bool:
    return problem_id in self._where

  @property
  def problem_ids(self) -> list[str]:
    return list(self.manifest["problem_ids"])

  def positions(self, problem_id: str) -> int:
    """R_i, the number of scored positions stored for a problem."""
    return self._where[problem_id][2]

  def tokens_digest(self, problem_id: str) -> str | None:
    """The digest (tokens_digest) of the tokens the teacher read for a problem, from the
    manifest (None when its writer gave no tokens)."""
    return self._digest[problem_id]

  def record(self, problem_id: str):
    """(header, ids, logp, log_tail): get's arrays with the record's header (its "tokens"
    digest, when the writer gave the tokens)."""
    if problem_id not in self._where:
      raise KeyError(f"problem {problem_id!r} has no stored teacher logits in {self.dir}")
    s, r, n = self._where[problem_id]
    path = self._path(s)
    try:
      raw = self._reader(s).read([r])[0]
    except (RuntimeError, ValueError, IndexError) as e:
      raise ConfigError(f"offline teacher shard {path} is corrupt: record {r} "
                        f"({problem_id!r}) unreadable: {_one_line(e)}") from None
    head, ids, logp, tail = decode_record(raw, f"shard {path}")
    if head.get("id") != problem_id or ids.shape != (n, self.k):
      raise ConfigError(f"offline teacher shard {path} is corrupt: record {r} holds "
                        f"{head.get('id')!r} {ids.shape}, the manifest says {problem_id!r} "
                        f"({n}, {self.k})")
    return head, ids, logp, tail

  def get(self, problem_id: str):
    """(ids [R_i, k] int32, logp [R_i, k] float32, log_tail [R_i] float32)."""
    return self.record(problem_id)[1:]

  def missing(self, ids: Iterable[str]) -> list[str]:
    """The ids (in order) with no stored teacher logits: the pool check."""
    return [i for i in ids if i not in self._where]

  def check_manifest(self, expected: dict) -> None:
    """ConfigError naming the first field of `expected` (dotted for nested dicts, e.g.
    "teacher.hash") that the manifest lacks or holds another value of, with both values."""
    d = _first_difference(self.manifest, _json_value(expected))
    if d is not None:
      field, have, want = d
      raise ConfigError(f"offline teacher {self.dir}: manifest field {field} is {have!r}, "
                        f"expected {want!r}")

  def close(self) -> None:
    for reader in self._readers.values():
      reader.close()
    self._readers = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"] = {}
    return state


def open_for_run(cfg) -> OfflineTeacher:
  """The OfflineTeacher of a run's loss.teacher="offline:DIR", its manifest checked against the
  run (k = loss.offline_k, and token_meta but the tokenizer's path): a mismatch is a ConfigError,
  one line naming the field and both values."""
  directory = cfg.loss.offline_dir
  if not os.path.isdir(directory):
    raise ConfigError(f"loss.teacher={cfg.loss.teacher!r}: {directory} does not exist; write "
                      f"the teacher's logits there first (paced teacher-logits CONFIG --out "
                      f"{directory})")
  teacher = OfflineTeacher(directory)
  expected = {"k": cfg.loss.offline_k, **token_meta(cfg)}
  del expected["tokenizer"]["path"]  # the same files may lie elsewhere
  try:
    teacher.check_manifest(expected)
  except ConfigError as e:
    raise ConfigError(f"{e} (loss.teacher={cfg.loss.teacher!r} was written for other settings): "
                      "train with the settings it was written with, or write the logits again "
                      "for this run (paced teacher-logits CONFIG --out NEW_DIR)") from None
  return teacher


def gather_rows(teacher: OfflineTeacher, problem_ids: Sequence[str], R: int):
  """Per-row arrays for a batch: ids [B, R, k] int32, logp [B, R, k] fp32, log_tail [B, R] fp32
  and mask [B, R] (1 where a stored position exists), each problem's first min(R_i, R) scored
  positions at the front of its row (as losses.scored_positions orders a row's scored
  positions); padding is ids 0, logp 0, log_tail -inf, mask 0."""
  B, k = len(problem_ids), teacher.k
  ids = np.zeros((B, R, k), np.int32)
  logp = np.zeros((B, R, k), np.float32)
  tail = np.full((B, R), -np.inf, np.float32)
  mask = np.zeros((B, R), np.float32)
  for b, pid in enumerate(problem_ids):
    i, lp, t = teacher.get(pid)
    n = min(len(t), R)
    ids[b, :n], logp[b, :n], tail[b, :n], mask[b, :n] = i[:n], lp[:n], t[:n], 1.0
  return ids, logp, tail, mask
