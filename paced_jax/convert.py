"""`paced convert`: Hugging Face directory <-> paced_jax model checkpoint.

    paced convert --from-hf /ckpt/Qwen3-0.6B --out /ckpt/qwen3-0.6b-paced
    paced convert --to-hf WORKDIR/checkpoints/1000 --out /out/student-hf \\
        --tokenizer /ckpt/Qwen3-0.6B

The source is read completely before anything is written; the result goes to a temporary
sibling of `--out` and is renamed into place, so a failure never leaves a half-written or
clobbered `--out`. An existing non-empty `--out` is refused unless `--force`, and `--force`
replaces only an earlier convert output (never a run directory, a checkpoint, the source or a
directory holding it, or files convert did not write). Large models convert on the host:
`JAX_PLATFORMS=cpu paced convert ...`.

--to-hf keeps the parameters' dtype unless `--dtype` and writes the source's bos/eos/pad ids
into config.json, with or without `--tokenizer`: --from-hf keeps the HF directory's ids in
`hf_token_ids.json`; a training checkpoint takes those of its run (train.init_student, else
data.tokenizer, from the run's config.json). `--tokenizer` files and ids win; a tokenizer with
more tokens than the model's vocab_size is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

from paced_jax.config import ConfigError

TOKEN_IDS = "hf_token_ids.json"  # bos/eos/pad ids of the HF source, kept by --from-hf
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
  if not m or m.group(2).upper() not in _UNITS:
    raise ConfigError(f"--max-shard-size {text!r} is not a size such as 5GB, 500MB or 2GiB")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "convert", help="convert between a Hugging Face directory and a paced_jax checkpoint",
      description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--from-hf", metavar="DIR", help="Hugging Face directory (config.json + "
                   "*.safetensors) to convert into a paced_jax model checkpoint")
  src.add_argument("--to-hf", metavar="CKPT", help="paced_jax model checkpoint or training step "
                   "directory to export as a Hugging Face directory")
  p.add_argument("--out", required=True, metavar="DIR", help="output directory")
  p.add_argument("--tokenizer", metavar="DIR", help="with --to-hf: copy tokenizer files (and "
                 "bos/eos ids) from this directory, usually the original HF model")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                 help="parameter dtype of the output (default: keep the source's)")
  p.add_argument("--max-shard-size", default="5GB", help="with --to-hf: largest safetensors "
                 "shard (default 5GB)")
  p.add_argument("--force", action="store_true", help="replace a non-empty --out")
  p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
  from paced_jax.models.hf import export_hf, load_hf_model, token_ids_of
  from paced_jax.models.io import load_model_checked, save_model

  out = Path(args.out).absolute()
  src = Path(args.from_hf or args.to_hf)
  flag = "--from-hf" if args.from_hf else "--to-hf"
  if not src.is_dir():
    raise ConfigError(f"{flag} {src} is not a directory")
  real_out, real_src = out.resolve(), src.resolve()  # symlinks and `..` seen through
  if real_out == real_src or real_src in real_out.parents or real_out in real_src.parents:
    raise ConfigError(f"--out {out} must not be {flag} {src}, lie inside it or contain it "
                      "(convert would write into or replace the source); pick another --out")
  if out.is_symlink():  # replacing it would rename over the link, not into its target
    raise ConfigError(f"--out {out} is a symbolic link; pass the directory it points to "
                      f"({real_out}) or another --out")
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    if not args.force:
      raise ConfigError(f"--out {out} exists and is not empty; pass --force to replace it")
    foreign = not_convert_output(out)
    if foreign:
      raise ConfigError(f"--out {out} holds {foreign}, not only an earlier paced convert "
                        "output; --force replaces nothing else: pick another --out")
  if args.tokenizer is not None and args.from_hf:
    raise ConfigError("--tokenizer applies to --to-hf only (a paced_jax checkpoint holds no "
                      "tokenizer; pass the HF directory as data.tokenizer instead)")
  if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
    raise ConfigError(f"--tokenizer {args.tokenizer} is not a directory")
  max_shard = parse_size(args.max_shard_size)

  if args.from_hf:
    try:
      model, cfg = load_hf_model(src, param_dtype=args.dtype)
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 -- safetensors / JSON readers raise many types
      raise ConfigError(f"--from-hf {src} cannot be read: truncated or corrupt? "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
  else:
    model, cfg = load_model_checked(src, "--to-hf")
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  out.parent.mkdir(parents=True, exist_ok=True)
  try:
    if args.from_hf:
      save_model(model, tmp, cfg)
      ids = token_ids_of(src)
      if ids:
        (tmp / TOKEN_IDS).write_text(json.dumps(ids) + "\n")
    else:
      export_hf(model, cfg, tmp, tokenizer_dir=args.tokenizer, max_shard_bytes=max_shard,
                dtype=args.dtype, token_ids=source_token_ids(src))
    if out.exists():
      shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  kind = "paced_jax checkpoint" if args.from_hf else "Hugging Face directory"
  print(f"wrote {kind} {out} ({cfg.arch}, {cfg.num_layers} layers, hidden {cfg.hidden}, "
        f"vocab {cfg.vocab_size}, {args.dtype or cfg.param_dtype})")
  return 0


# What `paced convert` writes: --to-hf a HF directory, --from-hf an Orbax model directory.
_HF_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json"}
_HF_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_ORBAX_FILES = {"model_config.json", TOKEN_IDS}


def not_convert_output(out: Path) -> str:
  """'' when `out` holds only what an earlier convert wrote (a model among it), so --force
  may replace it; else what is there, for the error. --force deleting a run directory, a
  checkpoint or anyone's own files would lose what no convert can give back."""
  from paced_jax.models.hf import TOKENIZER_FILES

  if not out.is_dir():
    return "a file"
  entries = sorted(out.iterdir(), key=lambda p: p.name)
  files = {p.name for p in entries if p.is_file() and not p.is_symlink()}
  names = {p.name for p in entries}
  hf = (names == files and "config.json" in files
        and files <= _HF_FILES | set(TOKENIZER_FILES) | set(filter(_HF_SHARD.fullmatch, files))
        and ({"model.safetensors", "model.safetensors.index.json"} & files)
        and not isinstance(_read_json(out / "config.json").get("model"), dict))  # a run's
  orbax = ((out / "params").is_dir() and not (out / "params").is_symlink()
           and names - {"params"} == files and "model_config.json" in files
           and files <= _ORBAX_FILES)
  if hf or orbax:
    return ""
  first = ("checkpoints", "metrics.jsonl", "config.json", "params", "meta")  # what tells
  entries.sort(key=lambda p: (p.name not in first, first.index(p.name) if p.name in first else 0))
  shown = [p.name + ("/" if p.is_dir() else "") for p in entries]
  what = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
  if {"checkpoints", "metrics.jsonl"} & names:
    return f"a paced run directory ({what})"
  if (out / "meta").is_dir() and (out / "params").is_dir():
    return f"a training checkpoint ({what})"
  return what


def _read_json(path: Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return {}
  return data if isinstance(data, dict) else {}


def source_token_ids(src: Path) -> dict:
  """bos/eos/pad ids for a --to-hf source (see the module docstring); {} when none is found.
  Looks in `src` and up to 3 directories above it, like models.io.find_model_config."""
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.models.hf import token_ids_of, tokenizer_token_ids
  from paced_jax.models.io import model_dir_kind

  for d in [src, *list(src.absolute().parents)[:3]]:
    if (d / TOKEN_IDS).is_file():
      return _read_json(d / TOKEN_IDS)
    if model_dir_kind(d) == "hf":
      return token_ids_of(d)
    run = _read_json(d / "config.json")
    if not isinstance(run.get("model"), dict):
      continue
    init = str((run.get("train") or {}).get("init_student") or "")
    if init and model_dir_kind(init) == "hf":
      return token_ids_of(init)
    if init and (Path(init) / TOKEN_IDS).is_file():
      return _read_json(Path(init) / TOKEN_IDS)
    spec = str((run.get("data") or {}).get("tokenizer") or "")
    if spec == "char" or (spec and Path(spec).exists()):
      return tokenizer_token_ids(load_tokenizer(spec))
    return {}
  return {}
