"""Model checkpoints: save / load a `Decoder` (Orbax), and teacher-student compatibility.

A model checkpoint directory is

    <dir>/model_config.json   the ModelConfig as JSON
    <dir>/params/             Orbax (StandardCheckpointer) of nnx.state(model, nnx.Param)
                              as a pure dict

A training step directory (`<workdir>/checkpoints/<step>/`) holds a `params` item in the same
layout, so `load_model` reads it too; its ModelConfig then comes from the nearest
`model_config.json` or run `config.json` (its "model" section) above it. `load_model` also
accepts a Hugging Face directory (config.json + safetensors) and then calls `load_hf_model`.
`model_dir_kind` is the one place that tells these layouts apart; `check_model_path` and
`load_model_checked` turn a missing, incomplete or damaged one into one ConfigError line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from paced_jax import orbax_noise
from paced_jax.config import ConfigError, ModelConfig, RopeScaling
from paced_jax.models.hf import ModelFileError, dtype_name, load_hf_model, read_hf_config
from paced_jax.models.transformer import Decoder
from paced_jax.sharding import abstract_state

MODEL_CONFIG = "model_config.json"
PARAMS = "params"
STEP_ITEMS = ("params", "opt_state", "passrates", "meta")  # of a trainer's checkpoint step


def model_dir_kind(path: str | Path) -> str | None:
  """What a directory holds, from file names alone: "train_step" (params/ with meta/, or named
  WORKDIR/checkpoints/STEP), "orbax" (a model checkpoint: params/), "hf" (config.json +
  model.safetensors or its index, no params/), or None (no directory, or no model in it)."""
  p = Path(str(path))
  if not p.is_dir():
    return None
  if (p / PARAMS).is_dir():
    named_step = p.name.isdigit() and p.parent.name == "checkpoints"
    return "train_step" if named_step or (p / "meta").is_dir() else "orbax"
  if (p / "config.json").is_file() and ((p / "model.safetensors").is_file()
                                        or (p / "model.safetensors.index.json").is_file()):
    return "hf"
  return None


def model_config_to_json(cfg: ModelConfig) -> str:
  return json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"


def model_config_from_dict(d: dict, where: str = "model config") -> ModelConfig:
  d = dict(d)
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ModelFileError(f"{where} has unknown ModelConfig field(s): {', '.join(unknown)}")
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  for k, v in d.items():  # JSON has no tuples; ModelConfig has none either, keep it that way
    if isinstance(v, list):
      d[k] = tuple(v)
  return ModelConfig(**d)


def save_model(model: Decoder, path: str | Path, cfg: ModelConfig | None = None) -> Path:
  """Writes `<path>/model_config.json` and `<path>/params/`; `path` must not hold a model yet.

  Collective in multi-process runs (every process calls it; Orbax writes each shard once).
  """
  import orbax.checkpoint as ocp

  cfg = cfg or model.cfg
  root = Path(path).absolute()
  if (root / PARAMS).exists():
    raise ModelFileError(f"{root / PARAMS} already exists; choose a new directory")
  if jax.process_index() == 0:
    root.mkdir(parents=True, exist_ok=True)
    (root / MODEL_CONFIG).write_text(model_config_to_json(cfg))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(root / PARAMS, params)
    ckptr.wait_until_finished()
  return root


def find_model_config(root: Path) -> ModelConfig:
  """The ModelConfig for the params in `root`, from the first of: `root/model_config.json`;
  a training step's `root/meta/` JSON ("model_config" or "model" key); then, in `root` and up
  to 3 directories above, `model_config.json` or a run `config.json` (its "model" section)."""
  if (root / "meta").is_dir():
    for f in sorted((root / "meta").iterdir()):
      try:
        data = json.loads(f.read_text()) if f.is_file() else None
      except (json.JSONDecodeError, UnicodeDecodeError):
        continue
      for key in ("model_config", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
          return model_config_from_dict(data[key], f"{f} ({key} section)")
  for d in [root, *list(root.parents)[:3]]:
    if (d / MODEL_CONFIG).is_file():
      return model_config_from_dict(_read_json(d / MODEL_CONFIG), str(d / MODEL_CONFIG))
    run_cfg = d / "config.json"
    if run_cfg.is_file():
      data = _read_json(run_cfg)
      if isinstance(data.get("model"), dict):
        return model_config_from_dict(data["model"], f"{run_cfg} (model section)")
  raise ModelFileError(f"no {MODEL_CONFIG} (or run config.json) in {root} or the 3 directories "
                       "above it; it says which model the params belong to")


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ModelFileError(f"{path} is not valid JSON: {e}") from None


def read_model_config(path: str | Path) -> ModelConfig:
  """The ModelConfig of a model checkpoint, training step or Hugging Face directory, read from
  its JSON alone (no tensor is touched): what `load_model(path)` would build."""
  root = Path(path).absolute()
  if not root.is_dir():
    raise ModelFileError(f"model path {root} is not a directory")
  kind = model_dir_kind(root)
  if kind == "hf":
    return read_hf_config(root)
  if kind is None:
    raise ModelFileError(f"{root} is neither a model checkpoint (no {PARAMS}/ directory) nor a "
                         "Hugging Face directory (config.json + *.safetensors)")
  return find_model_config(root)


def load_model(path: str | Path, mesh: Mesh | None = None, dtype: Any = None,
               param_dtype: Any = None) -> tuple[Decoder, ModelConfig]:
  """Loads a model checkpoint, a training step directory, or a Hugging Face directory.

  Parameters are restored straight onto `mesh` (abstract arrays with their shardings from
  `sharding.LOGICAL_RULES`); `mesh=None` puts them on `jax.devices()[0]`. `param_dtype` casts
  stored parameters on restore; `dtype` sets the compute dtype (default: the stored one); both
  take a name ("bfloat16") or a jnp / numpy dtype.
  """
  root = Path(path).absolute()
  if not root.is_dir():
    raise ModelFileError(f"model path {root} is not a directory")
  kind = model_dir_kind(root)
  if kind == "hf":
    return load_hf_model(root, dtype=dtype, mesh=mesh, param_dtype=param_dtype)
  if kind is None:
    raise ModelFileError(f"{root} is neither a model checkpoint (no {PARAMS}/ directory) nor a "
                         "Hugging Face directory (config.json + *.safetensors)")
  cfg = find_model_config(root)
  over = {k: dtype_name(v, k) for k, v in (("dtype", dtype), ("param_dtype", param_dtype))
          if v is not None}
  try:
    cfg = dataclasses.replace(cfg, **over)
  except ConfigError as e:
    raise ModelFileError(str(e)) from None
  ctor = lambda rngs: Decoder(cfg, rngs=rngs)
  if mesh is not None:
    graphdef, abstract = abstract_state(ctor, mesh)
  else:
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ctor(nnx.Rngs(0))))
    device = SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda v: v.replace(jax.ShapeDtypeStruct(v.shape, v.get_value().dtype, sharding=device)),
        abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
  target = nnx.to_pure_dict(abstract)
  restored = _restore(root / PARAMS, target, cfg)
  nnx.replace_by_pure_dict(abstract, restored)
  if mesh is None:
    return nnx.merge(graphdef, abstract), cfg
  with jax.set_mesh(mesh):
    return nnx.merge(graphdef, abstract), cfg


def _restore(params_dir: Path, target: dict, cfg: ModelConfig) -> dict:
  """Restores onto `target`'s shardings. Accepts both the pure-dict layout and an `nnx.State`
  saved as is (whose leaves sit under an extra "value" key)."""
  import orbax.checkpoint as ocp

  # A truncated checkpoint's failed read leaves TensorStore printing "Event loop is closed"
  # after the one error line: dropped (orbax_noise).
  with orbax_noise.reading(), ocp.StandardCheckpointer() as ckptr:
    try:
      stored = ckptr.metadata(params_dir)
      stored = getattr(stored, "item_metadata", stored)  # orbax >= 0.11 wraps the tree
      paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(stored)]
      wrapped = bool(paths) and all(getattr(p[-1], "key", None) == "value" for p in paths)
      if wrapped:
        target = jax.tree.map(lambda x: {"value": x}, target)
      _check_tree(stored, target, params_dir)
      out = ckptr.restore(params_dir, target)
    except ModelFileError:
      raise
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # Orbax: many lines
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ModelFileError(f"cannot restore {params_dir} as {cfg.arch} "
                           f"(hidden={cfg.hidden}, layers={cfg.num_layers}): {first}") from None
  if wrapped:
    out = jax.tree.map(lambda d: d["value"], out,
                       is_leaf=lambda x: isinstance(x, dict) and set(x) == {"value"})
  return out


def _check_tree(stored, target: dict, where: Path) -> None:
  """Names missing / unexpected / wrongly shaped parameters in one line."""
  flat = lambda t: {jax.tree_util.keystr(p, simple=True, separator="."): getattr(x, "shape", None)
                    for p, x in jax.tree_util.tree_leaves_with_path(t)}
  have, want = flat(stored), flat(target)
  if set(want) - set(have):
    miss = sorted(set(want) - set(have))
    raise ModelFileError(f"{where} lacks {len(miss)} parameter(s) the model config needs: "
                         f"{', '.join(miss[:4])}")
  if set(have) - set(want):
    extra = sorted(set(have) - set(want))
    raise ModelFileError(f"{where} has {len(extra)} parameter(s) the model config does not: "
                         f"{', '.join(extra[:4])}")
  for k, shape in want.items():
    if have[k] is not None and tuple(have[k]) != tuple(shape):
      raise ModelFileError(f"parameter {k} in {where} has shape {list(have[k])}, the model "
                           f"config implies {list(shape)}")


# ----------------------------------------------------------------------------- cheap checks


def incomplete(step_dir: str | Path) -> str | None:
  """Why a step directory is not a whole training checkpoint (missing items or commit
  marker), or None."""
  d = Path(str(step_dir))
  missing = [n for n in STEP_ITEMS if not (d / n).is_dir()]
  if missing:
    return f"no {', '.join(missing)}"
  if not any(f.is_file() for f in (d / "meta").iterdir()):
    return "an empty meta/"
  if any("commit" in p.name for p in d.iterdir()) or (
      d / "_CHECKPOINT_METADATA").exists():
    return None
  return "no commit marker (the save did not finish)"


def error_reason(e: BaseException) -> str:
  """The useful part of an Orbax / TensorStore / OS error, one short line."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  for known in ("No space left on device", "Read-only file system", "Permission denied",
                "Transport endpoint is not connected", "Input/output error"):
    if known in text:
      return known
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  return first[:200]


def check_model_path(path: str | Path, flag: str) -> None:
  """Cheap checks of a --checkpoint / --baseline / init path before anything is built."""
  p = Path(str(path))
  where = f"{flag}{'' if flag.endswith('=') else ' '}{path}"
  if not p.exists():
    raise ConfigError(f"{where} does not exist; pass a model checkpoint, a training step "
                      "directory (WORKDIR/checkpoints/STEP) or a Hugging Face directory")
  kind = model_dir_kind(p)
  why = incomplete(p) if kind == "train_step" else None
  if why:
    raise ConfigError(f"{where} is an incomplete training checkpoint ({why}); use another "
                      "step of WORKDIR/checkpoints")
  for file in sorted(p.glob("*.safetensors")) if p.is_dir() else []:
    why = safetensors_damage(file)
    if why:
      raise ConfigError(f"{where} cannot be read: {file.name} is truncated or corrupt ({why}); "
                        "copy or export it again")


def safetensors_damage(file: Path) -> str | None:
  """Why a safetensors file is not whole, from its header and size alone (no tensor is read):
  the header (u64 length + JSON) must parse and the file must end where its last tensor ends."""
  import struct

  size = file.stat().st_size
  with open(file, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      return f"{size} bytes, shorter than a header"
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
      return f"header of {n} bytes in a file of {size}"
    try:
      header = json.loads(f.read(n))
      end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
      return f"unreadable header: {type(e).__name__}"
  if 8 + n + end != size:
    return f"{size} bytes where its tensors end at byte {8 + n + end}"
  return None


def load_model_checked(path: str | Path, flag: str, **kw):
  """`load_model` whose unreadable-file failures are one ConfigError line."""
  check_model_path(path, flag)
  step_dir = model_dir_kind(path) == "train_step"
  try:
    return load_model(path, **kw)
  except ConfigError as e:
    if not step_dir:
      raise
    # A trainer's step holds its own model config: params that disagree with it are damaged.
    raise ConfigError(f"{flag} {path} cannot be read: truncated or corrupt? ({e})") from None
  except Exception as e:  # noqa: BLE001 -- TensorStore / safetensors raise many types
    cause = e.__cause__ or e
    raise ConfigError(f"{flag} {path} cannot be read: truncated or corrupt? "
                      f"({type(cause).__name__}: {error_reason(cause)})") from None


# ----------------------------------------------------------------------------- compatibility


def check_compatible(teacher_cfg: ModelConfig, student_cfg: ModelConfig,
                     teacher_tok_dir: str | Path | None = None,
                     student_tok_dir: str | Path | None = None) -> int:
  """Checks that teacher and student logits index the same tokens; returns the shared vocab.

  Policy: equal `vocab_size` is enough when no tokenizer is given. Different (padded) sizes --
  e.g. Qwen2.5-7B's 152064 rows vs 0.5B's 151936 -- are allowed only when both tokenizer
  directories are given, their vocabularies (with added tokens) are identical and fit in both
  sizes. The return value V* is then the real vocabulary size: the distillation loss must use
  logits[..., :V*] of both models (rows beyond it are padding no tokenizer ever emits).
  Special tokens (bos / eos / pad / unk and added special tokens) must agree.
  """
  tv, sv = teacher_cfg.vocab_size, student_cfg.vocab_size
  if (teacher_tok_dir is None) != (student_tok_dir is None):
    raise ConfigError("check_compatible needs both tokenizer directories or neither "
                      f"(teacher={teacher_tok_dir!r}, student={student_tok_dir!r})")
  if teacher_tok_dir is None:
    if tv != sv:
      raise ConfigError(f"teacher vocab_size={tv} != student vocab_size={sv}; if these are "
                        "padded sizes of one tokenizer, pass both tokenizer directories")
    return tv
  t_vocab, t_special = _tokenizer_facts(Path(teacher_tok_dir))
  s_vocab, s_special = _tokenizer_facts(Path(student_tok_dir))
  if t_vocab != s_vocab:
    diff = sorted(set(t_vocab.items()) ^ set(s_vocab.items()))[:3]
    raise ConfigError(f"teacher tokenizer {teacher_tok_dir} ({len(t_vocab)} tokens) and student "
                      f"tokenizer {student_tok_dir} ({len(s_vocab)} tokens) differ, e.g. "
                      f"{diff}; distillation needs one vocabulary")
  if t_special != s_special:
    keys = sorted(k for k in set(t_special) | set(s_special)
                  if t_special.get(k) != s_special.get(k))
    raise ConfigError(f"special tokens differ between teacher {teacher_tok_dir} and student "
                      f"{student_tok_dir}: " + ", ".join(
                          f"{k}: {t_special.get(k)!r} vs {s_special.get(k)!r}" for k in keys[:3]))
  real = max(t_vocab.values()) + 1
  if real > min(tv, sv):
    raise ConfigError(f"the tokenizer has ids up to {real - 1} but teacher vocab_size={tv}, "
                      f"student vocab_size={sv}; an embedding is too small for it")
  return real if tv != sv else tv


def _tokenizer_facts(d: Path) -> tuple[dict[str, int], dict[str, str | int]]:
  """(token -> id incl. added tokens, special-token facts) of a tokenizer directory."""
  from tokenizers import Tokenizer

  file = d / "tokenizer.json" if d.is_dir() else d
  if not file.is_file():
    raise ConfigError(f"tokenizer {d} has no tokenizer.json")
  try:
    tok = Tokenizer.from_file(str(file))
  except Exception as e:  # tokenizers raises a bare Exception on malformed files
    raise ConfigError(f"{file} is not a valid tokenizer.json: {str(e).splitlines()[0]}") from None
  special: dict[str, str | int] = {}
  for tid, added in tok.get_added_tokens_decoder().items():
    if added.special:
      special[f"special[{tid}]"] = added.content
  cfg_file = file.parent / "tokenizer_config.json"
  if cfg_file.is_file():
    tcfg = _read_json(cfg_file)
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
      v = tcfg.get(k)
      v = v.get("content") if isinstance(v, dict) else v
      if v is not None:
        special[k] = v
  return tok.get_vocab(with_added_tokens=True), special
