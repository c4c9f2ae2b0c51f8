"""Cheap checks that run before any model is built, any baseline evaluated or anything written:
the paths a run or a command will read exist and look whole. Each failure is one ConfigError
line naming the setting, the path (file:line for text), and what to do."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from paced_jax.config import Config, ConfigError, DataConfig
from paced_jax.data.chat_template import parse_kwargs
from paced_jax.models.io import check_model_path


def check_data_files(data: DataConfig) -> None:
  """data.path (and data.eval_path / data.probe_path when set) match files; JSONL files are
  UTF-8 (the first bad line is named)."""
  if data.source not in ("jsonl", "parquet"):
    return
  for key in ("path", "eval_path", "probe_path"):
    path = getattr(data, key)
    if key != "path" and not path:
      continue
    files = sorted(glob.glob(os.path.expanduser(path))) if path else []
    if not files:
      raise ConfigError(f"data.{key}={path!r} matches no file; give a .{data.source} file or a "
                        f"glob such as data/*.{data.source}")
    if data.source == "jsonl":
      for file in files:
        _check_utf8(file)


def _check_utf8(file: str) -> None:
  with open(file, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ConfigError(f"{file}:{n}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at "
                          f"column {e.start + 1}); re-encode the file as UTF-8") from None


def check_run(cfg: Config) -> None:
  """Everything `paced train` reads, before anything is built."""
  parse_kwargs(cfg.data.chat_template_kwargs)  # a bad entry is one line, not a failed load
  for flag, path in (("train.init_student", cfg.train.init_student),
                     ("train.init_teacher", cfg.train.init_teacher)):
    if path:
      check_model_path(path, f"{flag}=")
  if cfg.data.tokenizer != "char" and not Path(cfg.data.tokenizer).exists():
    raise ConfigError(f"data.tokenizer={cfg.data.tokenizer!r} is neither 'char' nor an existing "
                      "tokenizer.json file or model directory")
  check_data_files(cfg.data)
