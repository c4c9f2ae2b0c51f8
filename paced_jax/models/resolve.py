"""Which models a run trains: the checkpoint decides the architecture.

When `train.init_student` / `train.init_teacher` names a Hugging Face directory, a converted
(Orbax) model checkpoint or a training step, the run's `model` / `teacher` config becomes the one
stored there (read from its JSON; no tensor is touched). The config keeps only how the model
runs: `dtype`, `param_dtype`, `remat`, `max_seq_len`. Its shape fields -- e.g. the preset a
recipe starts from -- are replaced, with one INFO line, unless a shape field was set explicitly
(`--set model.hidden=...`, `--set teacher.num_layers=...`, a whole `--set model={...}`): an
explicit field that disagrees with the directory is an error, one line listing every field where
the config and the directory differ. So a recipe naming real directories runs as is, and
`config.json`, the checkpoint metadata and the FLOP counts describe the model actually trained.

Padded vocabularies: teacher and student embeddings of different sizes are one vocabulary when
their tokenizers (each model directory's tokenizer.json, else `data.tokenizer`) are identical
(`models.io.check_compatible`); `loss.vocab_limit` is then set to the tokenizer's real size V*
(unless the config sets it), so the loss compares ids < V* and nothing samples the padding.
Different tokenizers are refused in one line.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

from paced_jax import divergences
from paced_jax.config import Config, ConfigError, ModelConfig

log = logging.getLogger("paced_jax.train")

RUNTIME = ("dtype", "param_dtype", "remat", "max_seq_len")  # the config's, always
SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in RUNTIME)
_ROLES = (("model", "train.init_student", "init_student"),
          ("teacher", "train.init_teacher", "init_teacher"))


def shape_overrides(overrides: Iterable[str]) -> frozenset[str]:
  """The shape fields `--set` overrides state: {"model.hidden", "teacher.num_layers", ...}
  ("model.rope_scaling.factor=16" -> "model.rope_scaling"; "model={...}" -> every field)."""
  out = set()
  for item in overrides:
    parts = item.partition("=")[0].strip().split(".")
    if parts[0] not in ("model", "teacher"):
      continue
    if len(parts) == 1:
      out.update(f"{parts[0]}.{f}" for f in SHAPE_FIELDS)
    elif parts[1] in SHAPE_FIELDS:
      out.add(f"{parts[0]}.{parts[1]}")
  return frozenset(out)


def shape_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
  """The shape fields (everything but RUNTIME) on which `a` and `b` differ."""
  return [f for f in SHAPE_FIELDS if getattr(a, f) != getattr(b, f)]


def describe_diff(stored: ModelConfig, mine: ModelConfig, fields, explicit=(), prefix="") -> str:
  return ", ".join(f"{f}: directory {getattr(stored, f)!r}, config {getattr(mine, f)!r}"
                   + (" (--set)" if f"{prefix}{f}" in explicit else "") for f in fields)


def resolve_models(cfg: Config, explicit: Iterable[str] = ()) -> Config:
  """`cfg` with `model` / `teacher` taken from the init paths (see the module docstring);
  `explicit` is `shape_overrides(--set items)`. Idempotent; cheap (JSON reads only)."""
  from paced_jax.models.io import check_model_path, read_model_config

  explicit = frozenset(explicit)
  changes = {}
  for section, flag, attr in _ROLES:
    path = getattr(cfg.train, attr)
    if not path or (section == "teacher" and not divergences.needs_teacher(cfg.loss.mode)):
      continue
    check_model_path(path, f"{flag}=")
    stored = read_model_config(path)
    mine = getattr(cfg, section) or cfg.model  # a teacher-less config: the student's runtime
    diff = shape_diff(stored, mine) if getattr(cfg, section) is not None else list(SHAPE_FIELDS)
    if not diff:
      continue
    if any(f"{section}.{f}" in explicit for f in diff):
      raise ConfigError(
          f"{flag}={path} holds a {stored.arch} model that the config's {section} contradicts "
          f"in {len(diff)} field(s): {describe_diff(stored, mine, diff, explicit, section + '.')}"
          f"; the directory decides the architecture: drop the --set {section}.* shape "
          "overrides (or point the path at the model you meant)")
    log.info("%s=%s: the %s is the directory's %s model (%d layers, hidden %d, vocab %d), not "
             "the config's", flag, path, "student" if section == "model" else "teacher",
             stored.arch, stored.num_layers, stored.hidden, stored.vocab_size)
    changes[section] = dataclasses.replace(stored, **{k: getattr(mine, k) for k in RUNTIME})
  cfg = dataclasses.replace(cfg, **changes) if changes else cfg
  return _vocab_limit(cfg)


def _vocab_limit(cfg: Config) -> Config:
  """loss.vocab_limit = V* for a padded teacher / student pair of one tokenizer."""
  from pathlib import Path

  from paced_jax.models.io import check_compatible

  t, s = cfg.teacher, cfg.model
  if t is None or not divergences.needs_teacher(cfg.loss.mode) or t.vocab_size == s.vocab_size:
    return cfg

  def tok_dir(path: str) -> str | None:
    if path and (Path(path) / "tokenizer.json").is_file():
      return path
    return cfg.data.tokenizer if cfg.data.tokenizer != "char" else None

  dirs = tok_dir(cfg.train.init_teacher), tok_dir(cfg.train.init_student)
  if None in dirs:
    raise ConfigError(f"teacher vocab_size={t.vocab_size} differs from student vocab_size="
                      f"{s.vocab_size}: distillation compares distributions over one vocabulary; "
                      "if these are padded sizes of one tokenizer, give it (the model "
                      "directories' tokenizer.json or data.tokenizer)")
  limit = check_compatible(t, s, *dirs)
  if cfg.loss.vocab_limit:
    return cfg
  log.info("teacher vocab %d, student vocab %d, one tokenizer of %d ids: loss.vocab_limit=%d",
           t.vocab_size, s.vocab_size, limit, limit)
  return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, vocab_limit=limit))
