"""Hugging Face interop: load Llama-3 / Qwen2.5 / Qwen3 safetensors directories, export back.

    model, cfg = load_hf_model("/ckpt/Qwen3-0.6B", mesh=mesh)       # a normal `Decoder`
    export_hf(model, cfg, "/out/qwen3-distilled", tokenizer_dir="/ckpt/Qwen3-0.6B")

Loading never unpickles anything: only `*.safetensors` files are read, one tensor at a time
(`safe_open(..., "numpy")`), converted to our layout as a host view and placed on the mesh with
`jax.make_array_from_callback`, so each device copies only its own shard and the host holds at
most one checkpoint tensor at a time. The module is built abstractly (`nnx.eval_shape`); no
random initialisation ever runs.

Layout (HF `nn.Linear.weight` is [out, in]; ours is [in, ...out]):
  q_proj [N*H, D] -> [D, N, H]   k/v_proj [K*H, D] -> [D, K, H]   o_proj [D, N*H] -> [N, H, D]
  gate/up [F, D] -> [D, F]       down [D, F] -> [F, D]           lm_head [V, D] -> [D, V]
  embed [V, D] -> [V, D]         q/k/v bias [N*H] -> [N, H]      norms [D] or [H] unchanged
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from paced_jax.config import ConfigError, ModelConfig, RopeScaling
from paced_jax.models.transformer import Decoder
from paced_jax.sharding import abstract_state

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "Qwen3ForCausalLM": "qwen3"}
_HF_ARCH = {v: k for k, v in ARCHITECTURES.items()}
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_FLOAT_ST = {"F32", "BF16", "F16", "F64"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")


class ModelFileError(ConfigError):
  """A model directory or checkpoint that cannot be used as asked; its message is one line."""


def dtype_name(value: Any, what: str = "dtype") -> str | None:
  """"bfloat16" for "bfloat16", jnp.bfloat16 or np.dtype(ml_dtypes.bfloat16); None stays None."""
  if value is None:
    return None
  try:
    name = np.dtype(value).name
  except TypeError:
    name = str(value)
  if name not in _DTYPES:
    raise ModelFileError(f"{what}={value!r} is not one of {', '.join(_DTYPES)} (a name or a "
                         "jnp / numpy dtype)")
  return name


# ----------------------------------------------------------------------------- config.json


def model_config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig from a parsed HF `config.json`; `overrides` replace fields (e.g. dtype)."""
  archs = hf.get("architectures") or []
  arch_name = next((a for a in archs if a in ARCHITECTURES), None)
  if arch_name is None:
    by_type = {v: k for k, v in ARCHITECTURES.items()}  # no "architectures": use model_type
    arch_name = by_type.get(hf.get("model_type", "")) if not archs else None
  if arch_name is None:
    raise ModelFileError(f"unsupported architecture {archs or hf.get('model_type')!r}; "
                         f"supported: {', '.join(ARCHITECTURES)}")
  arch = ARCHITECTURES[arch_name]

  def unsupported(what: str):
    raise ModelFileError(f"{arch_name} with {what} is not supported by paced_jax's decoder")

  if hf.get("hidden_act", "silu") != "silu":
    unsupported(f"hidden_act={hf['hidden_act']!r}")
  if hf.get("mlp_bias"):
    unsupported("mlp_bias=true")
  if arch != "qwen2" and hf.get("attention_bias"):
    unsupported("attention_bias=true (it adds an o_proj bias)")
  layer_types = hf.get("layer_types") or []
  if hf.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
    unsupported("sliding-window attention layers")
  rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5 folds theta in here
  rope.update(hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(factor=float(rope["factor"]),
                          low_freq_factor=float(rope["low_freq_factor"]),
                          high_freq_factor=float(rope["high_freq_factor"]),
                          original_max_position_embeddings=int(
                              rope["original_max_position_embeddings"]))
  elif rope_type != "default":
    unsupported(f"rope_type={rope_type!r} (supported: default, llama3)")
  try:
    heads = int(hf["num_attention_heads"])
    dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
    dtype = dtype if dtype in _DTYPES else "float32"
    fields = dict(
        arch=arch, vocab_size=int(hf["vocab_size"]), hidden=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        mlp_dim=int(hf["intermediate_size"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        rope_scaling=scaling, rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        dtype=dtype, param_dtype=dtype)
  except KeyError as e:
    raise ModelFileError(f"config.json for {arch_name} lacks the required field {e}") from None
  fields.update(overrides)
  return ModelConfig(**fields)


def _hf_arch(cfg: ModelConfig) -> str:
  """The HF class that computes exactly what `cfg` computes."""
  if cfg.qkv_bias and cfg.qk_norm:
    raise ModelFileError("a model with both q/k/v bias and q/k norm has no Hugging Face "
                         "architecture to export to")
  if cfg.qk_norm:
    return "Qwen3ForCausalLM"
  if cfg.qkv_bias or cfg.arch == "qwen2":  # Qwen2 without bias: exported with zero biases
    return "Qwen2ForCausalLM"
  return "LlamaForCausalLM"


def hf_config_from_model(cfg: ModelConfig, dtype: str | None = None,
                         token_ids: dict | None = None) -> dict:
  """A `config.json` dict that `transformers` (4.4x and 5.x) reads as the same model.

  transformers 5 style (`dtype`, `rope_parameters`, `layer_types`), plus the keys 4.x reads
  (`torch_dtype`, `rope_theta`, `rope_scaling`; 5.x ignores them when `rope_parameters` is
  there). `token_ids`: bos_token_id / eos_token_id (an int or a list) / pad_token_id.
  """
  arch = _hf_arch(cfg)
  dtype = dtype or cfg.param_dtype
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    rope.update(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
  out: dict[str, Any] = {
      "architectures": [arch], "model_type": ARCHITECTURES[arch],
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_theta, "rope_scaling": None,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
      "initializer_range": 0.02, "use_cache": True, "dtype": dtype, "torch_dtype": dtype,
      "rope_parameters": rope, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
  }
  out.update({k: v for k, v in (token_ids or {}).items() if k in _TOKEN_ID_KEYS})
  if cfg.rope_scaling is not None:
    out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
  if arch == "LlamaForCausalLM":
    out.update(attention_bias=False, mlp_bias=False)
  elif arch == "Qwen3ForCausalLM":
    out.update(attention_bias=False, use_sliding_window=False, sliding_window=None)
  else:
    out.update(use_sliding_window=False, sliding_window=None)
  if arch != "LlamaForCausalLM":
    out["layer_types"] = ["full_attention"] * cfg.num_layers
  return out


# ----------------------------------------------------------------------------- tensor table


@dataclasses.dataclass(frozen=True)
class _Entry:
  hf_name: str
  path: tuple  # key path into `nnx.to_pure_dict(nnx.state(model, nnx.Param))`
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]  # ours
  transpose: bool  # HF [out, in] kernel -> ours [in, ...out]

  def to_ours(self, w: np.ndarray) -> np.ndarray:  # a view whenever numpy allows
    return (w.T if self.transpose else w).reshape(self.shape)

  def to_hf(self, w: np.ndarray) -> np.ndarray:
    if self.transpose:
      return w.reshape(self.hf_shape[::-1]).T
    return w.reshape(self.hf_shape)


def tensor_table(cfg: ModelConfig) -> list[_Entry]:
  """Every HF tensor of `cfg`'s architecture with its place and shape in our param tree."""
  D, N, K, H, F, V = (cfg.hidden, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)
  t = [_Entry("model.embed_tokens.weight", ("embed",), (V, D), (V, D), False),
       _Entry("model.norm.weight", ("final_norm", "scale"), (D,), (D,), False)]
  if not cfg.tie_embeddings:
    t.append(_Entry("lm_head.weight", ("lm_head",), (V, D), (D, V), True))
  for i in range(cfg.num_layers):
    p, a = f"model.layers.{i}.", ("layers", i, "attn")
    t += [_Entry(p + "input_layernorm.weight", ("layers", i, "input_norm", "scale"), (D,), (D,),
                 False),
          _Entry(p + "post_attention_layernorm.weight", ("layers", i, "post_attn_norm", "scale"),
                 (D,), (D,), False)]
    for name, heads in (("q", N), ("k", K), ("v", K)):
      t.append(_Entry(p + f"self_attn.{name}_proj.weight", a + (f"{name}_proj", "kernel"),
                      (heads * H, D), (D, heads, H), True))
      if cfg.qkv_bias:
        t.append(_Entry(p + f"self_attn.{name}_proj.bias", a + (f"{name}_proj", "bias"),
                        (heads * H,), (heads, H), False))
    t.append(_Entry(p + "self_attn.o_proj.weight", a + ("o_proj", "kernel"), (D, N * H),
                    (N, H, D), True))
    if cfg.qk_norm:
      t += [_Entry(p + f"self_attn.{n}_norm.weight", a + (f"{n}_norm", "scale"), (H,), (H,),
                   False) for n in ("q", "k")]
    for name, hf_shape, shape in (("gate", (F, D), (D, F)), ("up", (F, D), (D, F)),
                                  ("down", (D, F), (F, D))):
      t.append(_Entry(p + f"mlp.{name}_proj.weight", ("layers", i, "mlp", f"{name}_proj",
                                                      "kernel"), hf_shape, shape, True))
  return t


# ----------------------------------------------------------------------------- loading


def _weight_files(root: Path) -> dict[str, Path]:
  """tensor name -> the safetensors file holding it (from the index, or the single file)."""
  index = root / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ModelFileError(f"{index} is not a safetensors index with a weight_map ({e})") from None
    files = {name: root / fname for name, fname in weight_map.items()}
    missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
    if missing:
      raise ModelFileError(f"{index} names {len(missing)} shard file(s) that do not exist: "
                           f"{', '.join(missing[:3])}")
    return files
  single = root / "model.safetensors"
  if single.is_file():
    from safetensors import safe_open
    with safe_open(str(single), "numpy") as f:
      return {name: single for name in f.keys()}
  others = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
  hint = (f" (found {others[0]}: pickle checkpoints are never loaded; re-save it with "
          "safe_serialization=True)" if others else "")
  raise ModelFileError(f"{root} has neither model.safetensors nor model.safetensors.index.json"
                       + hint)


def _names(names) -> str:
  names = sorted(names)
  more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
  return ", ".join(names[:4]) + more


def read_hf_config(path: str | Path, **overrides) -> ModelConfig:
  root = Path(path)
  cfg_file = root / "config.json"
  if not cfg_file.is_file():
    raise ModelFileError(f"{root} is not a Hugging Face model directory (no config.json)")
  try:
    hf = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise ModelFileError(f"{cfg_file} is not valid JSON: {e}") from None
  return model_config_from_hf(hf, **overrides)


def load_hf_model(path: str | Path, dtype: Any = None, mesh: Mesh | None = None,
                  param_dtype: Any = None) -> tuple[Decoder, ModelConfig]:
  """Loads a local HF Llama-3 / Qwen2 / Qwen2.5 / Qwen3 directory as a `Decoder`.

  `param_dtype` defaults to the checkpoint's `dtype`, `dtype` (compute) to `param_dtype`; both
  take a name ("bfloat16") or a jnp / numpy dtype.
  With a `mesh`, every parameter is placed by `sharding.LOGICAL_RULES`; `mesh=None` puts the
  whole model on `jax.devices()[0]` (single-process use: conversion, tests, notebooks).
  Raises ModelFileError (one line) for unknown architectures and missing, unexpected or
  wrongly shaped tensors -- checked from the file headers before any tensor is read.
  """
  root = Path(path)
  dtype, param_dtype = dtype_name(dtype), dtype_name(param_dtype, "param_dtype")
  over = {}
  if param_dtype is not None:
    over["param_dtype"] = param_dtype
  if dtype is not None or param_dtype is not None:
    over["dtype"] = dtype or param_dtype
  cfg = read_hf_config(root, **over)
  table = tensor_table(cfg)
  files = _weight_files(root)
  expected = {e.hf_name for e in table}
  present = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
  if cfg.tie_embeddings:  # some tied checkpoints still store the (identical) head
    present.discard("lm_head.weight")
  if expected - present:
    raise ModelFileError(f"{root} lacks {len(expected - present)} tensor(s) that "
                         f"{_HF_ARCH[cfg.arch]} needs: {_names(expected - present)}")
  if present - expected:
    raise ModelFileError(f"{root} has {len(present - expected)} unexpected tensor(s) for "
                         f"{_HF_ARCH[cfg.arch]}: {_names(present - expected)}")

  ctor = lambda rngs: Decoder(cfg, rngs=rngs)
  if mesh is not None:
    graphdef, abstract = abstract_state(ctor, mesh)
  else:
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ctor(nnx.Rngs(0))))
  targets = nnx.to_pure_dict(abstract)
  device = SingleDeviceSharding(jax.devices()[0])
  target_dtype = np.dtype(_DTYPES[cfg.param_dtype])

  from safetensors import safe_open

  by_file: dict[Path, list[_Entry]] = {}
  for e in table:
    by_file.setdefault(files[e.hf_name], []).append(e)
  values: dict[tuple, jax.Array] = {}
  for file, entries in by_file.items():
    with safe_open(str(file), "numpy") as f:
      for e in entries:  # headers first: no tensor is read unless every shape checks out
        sl = f.get_slice(e.hf_name)
        shape, st_dtype = tuple(sl.get_shape()), sl.get_dtype()
        if shape != e.hf_shape:
          raise ModelFileError(f"tensor {e.hf_name} in {file.name} has shape {list(shape)}, "
                               f"config.json implies {list(e.hf_shape)}")
        if st_dtype not in _FLOAT_ST:
          raise ModelFileError(f"tensor {e.hf_name} in {file.name} is {st_dtype}; only float "
                               "checkpoints load (dequantize first)")
  for file, entries in by_file.items():
    for e in entries:
      # Reopened per tensor: the mapping (and its resident file pages) ends with each tensor.
      with safe_open(str(file), "numpy") as f:
        host = e.to_ours(f.get_tensor(e.hf_name))
      target = _get(targets, e.path)
      sharding = target.sharding if mesh is not None else device
      # Each device copies (and casts) only its own slice of the host view.
      values[e.path] = jax.make_array_from_callback(
          e.shape, sharding, lambda idx, h=host: np.asarray(h[idx], dtype=target_dtype))
      del host
  for p, v in values.items():
    _set(targets, p, v)
  nnx.replace_by_pure_dict(abstract, targets)
  if mesh is None:
    return nnx.merge(graphdef, abstract), cfg
  with jax.set_mesh(mesh):
    return nnx.merge(graphdef, abstract), cfg


def _get(tree: dict, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


# ----------------------------------------------------------------------------- export


def _to_host(x: jax.Array) -> np.ndarray:
  if not x.is_fully_addressable:  # multi-host: gather the global value on every process
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def export_hf(model: Decoder, model_config: ModelConfig, out_dir: str | Path,
              tokenizer_dir: str | Path | None = None, max_shard_bytes: int = 5 * 2**30,
              dtype: Any = None, token_ids: dict | None = None) -> Path:
  """Writes `model` as a HF directory (`config.json`, safetensors shards + index) that
  `transformers.AutoModelForCausalLM.from_pretrained` loads; returns `out_dir`.

  One shard is gathered to the host at a time. `dtype` casts on the way out (default: each
  parameter's own dtype, so a bf16 model stays bf16). `token_ids` (bos/eos/pad ids, e.g. from
  `token_ids_of`) go into config.json. `tokenizer_dir` (typically the original HF model
  directory) supplies tokenizer files and `generation_config.json`, and its ids replace
  `token_ids`; a tokenizer with ids beyond the model's vocab_size is refused.
  Only process 0 writes; every process must call this (the gather is collective).
  """
  from safetensors.numpy import save_file

  cfg, out = model_config, Path(out_dir)
  if out.is_dir() and any(out.glob("model*.safetensors*")):  # stale shards would mix in
    raise ModelFileError(f"{out} already holds safetensors files; export into a new directory")
  token_ids = dict(token_ids or {})
  if tokenizer_dir is not None:
    _check_tokenizer_fits(Path(tokenizer_dir), cfg)
    token_ids.update(token_ids_of(Path(tokenizer_dir)))
  table = tensor_table(cfg)
  if cfg.arch == "qwen2" and not cfg.qkv_bias:  # Qwen2ForCausalLM always has q/k/v biases
    cfg_b = dataclasses.replace(cfg, qkv_bias=True)
    table = tensor_table(cfg_b)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  dtype = dtype_name(dtype)
  out_dtype = np.dtype(_DTYPES[dtype]) if dtype else None
  itemsize = lambda e: (out_dtype or _leaf_dtype(params, e)).itemsize

  shards: list[list[_Entry]] = [[]]
  size = 0
  for e in table:
    nbytes = math.prod(e.hf_shape) * itemsize(e)
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  writer = jax.process_index() == 0
  if writer:
    out.mkdir(parents=True, exist_ok=True)
  weight_map, total = {}, 0
  for i, entries in enumerate(shards):
    fname = ("model.safetensors" if len(shards) == 1 else
             f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    tensors = {}
    for e in entries:
      try:
        w = _to_host(_get(params, e.path))
      except KeyError:  # a Qwen2 bias the model does not have: exactly zero
        w = np.zeros(e.shape, out_dtype or _leaf_dtype(params, table[0]))
      w = np.ascontiguousarray(e.to_hf(w))
      tensors[e.hf_name] = w.astype(out_dtype) if out_dtype is not None else w
      weight_map[e.hf_name] = fname
      total += tensors[e.hf_name].nbytes
    if writer:
      save_file(tensors, str(out / fname), metadata={"format": "pt"})
    del tensors
  if not writer:
    return out
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  if tokenizer_dir is not None:
    _copy_tokenizer(Path(tokenizer_dir), out)
  hf_cfg = hf_config_from_model(cfg, dtype or str(_leaf_dtype(params, table[0])), token_ids)
  (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
  return out


def _leaf_dtype(params: dict, e: _Entry) -> np.dtype:
  try:
    return np.dtype(_get(params, e.path).dtype)
  except KeyError:
    return np.dtype(params["embed"].dtype)


def _copy_tokenizer(src: Path, out: Path) -> None:
  found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
  if not any(n != "generation_config.json" for n in found):
    raise ModelFileError(f"tokenizer directory {src} holds none of: "
                         f"{', '.join(TOKENIZER_FILES[:-1])}")
  for name in found:
    shutil.copyfile(src / name, out / name)


def _check_tokenizer_fits(src: Path, cfg: ModelConfig) -> None:
  """A tokenizer whose ids reach past the embedding would index rows that do not exist."""
  if not (src / "tokenizer.json").is_file():
    return  # e.g. sentencepiece only: nothing to count without transformers
  from tokenizers import Tokenizer

  try:
    n = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
  except Exception as e:  # tokenizers raises a bare Exception on malformed files
    raise ModelFileError(f"{src / 'tokenizer.json'} is not a valid tokenizer.json: "
                         f"{str(e).splitlines()[0]}") from None
  if n > cfg.vocab_size:
    raise ModelFileError(f"tokenizer {src} has {n} tokens but the model's vocab_size is "
                         f"{cfg.vocab_size}; it belongs to another model")


def token_ids_of(src: str | Path) -> dict:
  """bos/eos/pad ids of a model or tokenizer directory: from its `config.json` when that names
  them, else from its tokenizer files (eos: every stop id; see data.tokenizer.HFTokenizer)."""
  src = Path(src)
  if (src / "config.json").is_file():
    try:
      src_cfg = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError:
      src_cfg = {}
    ids = {k: src_cfg[k] for k in _TOKEN_ID_KEYS
           if isinstance(src_cfg, dict) and src_cfg.get(k) is not None}
    if ids:
      return ids
  if not (src / "tokenizer.json").is_file():
    return {}
  from paced_jax.data.tokenizer import HFTokenizer

  return tokenizer_token_ids(HFTokenizer(str(src)))


def tokenizer_token_ids(tok) -> dict:
  """config.json ids of a paced_jax tokenizer; eos_token_id lists every stop id."""
  stops = list(tok.stop_ids)
  return {"bos_token_id": tok.bos_id, "eos_token_id": stops[0] if len(stops) == 1 else stops,
          "pad_token_id": tok.pad_id}
