"""`paced convert --to-hf`: transformers-style config.json with the source's bos/eos ids, the
checkpoint's dtype kept, tokenizers that do not fit refused; dtype objects accepted on load."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import cli
from paced_jax.config import Config, ConfigError, DataConfig, to_json
from paced_jax.models.hf import ModelFileError, export_hf, load_hf_model
from paced_jax.models.io import load_model, save_model
from tokenizer_dirs import byte_bpe_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 96
TOKENS = np.random.RandomState(0).randint(0, V, (2, 10)).astype(np.int32)


def _logits(model):
  with torch.no_grad():
    return model(torch.tensor(TOKENS, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def qwen_src(tmp_path_factory):
  """A tiny random Qwen3 saved by transformers, with Qwen's two stop ids; and its logits."""
  torch.manual_seed(0)
  cfg = transformers.Qwen3Config(
      vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
      tie_word_embeddings=False, rope_theta=1e6, bos_token_id=None, eos_token_id=[7, 5],
      pad_token_id=5)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
  path = tmp_path_factory.mktemp("src") / "qwen3"
  model.save_pretrained(path)
  return path, _logits(model), model


def _convert(*args):
  return cli.main(["convert", *map(str, args)])


def test_round_trip_without_tokenizer_keeps_ids_and_logits(qwen_src, tmp_path):
  src, ref, _ = qwen_src
  assert _convert("--from-hf", src, "--out", tmp_path / "ckpt") == 0
  assert _convert("--to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf") == 0
  hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"], hf_cfg["pad_token_id"]) == (
      None, [7, 5], 5)
  # transformers 5 style (and the keys 4.x reads).
  assert hf_cfg["dtype"] == hf_cfg["torch_dtype"] == "float32"
  assert hf_cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
  assert hf_cfg["layer_types"] == ["full_attention"] * 2
  back = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "hf", attn_implementation="eager").eval()
  assert back.dtype == torch.float32 and back.config.eos_token_id == [7, 5]
  np.testing.assert_allclose(_logits(back), ref, atol=1e-4, rtol=0)


def test_bfloat16_stays_bfloat16(qwen_src, tmp_path):
  from safetensors import safe_open

  src, ref, model = qwen_src
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  model.to(torch.float32)
  assert _convert("--from-hf", tmp_path / "bf16", "--out", tmp_path / "ckpt") == 0
  assert _convert("--to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf") == 0
  with safe_open(str(tmp_path / "hf" / "model.safetensors"), "numpy") as f:
    assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert back.dtype == torch.bfloat16
  assert np.abs(_logits(back) - ref).max() < 0.1 * np.abs(ref).max()


def test_tokenizer_too_large_is_refused(qwen_src, tmp_path, capsys):
  src, _, _ = qwen_src
  big = byte_bpe_dir(tmp_path / "tok", ["<|im_end|>"], {"eos_token": "<|im_end|>"})
  assert _convert("--from-hf", src, "--out", tmp_path / "ckpt") == 0
  capsys.readouterr()
  assert _convert("--to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer",
                  big) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert re.search(rf"tokenizer {big} has \d\d\d tokens but the model's vocab_size is {V};", err)
  assert not (tmp_path / "hf").exists()


def test_training_checkpoint_takes_its_runs_ids(qwen_src, tmp_path):
  src, _, _ = qwen_src
  model, cfg = load_hf_model(src)
  tok = byte_bpe_dir(tmp_path / "tok", ["<|endoftext|>", "<|im_end|>"], {
      "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
      generation_config={"eos_token_id": [1, 0]})
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(to_json(Config(
      model=cfg, data=DataConfig(tokenizer=str(tok)))))
  # A model checkpoint inside a run directory (a checkpoints/<step> directory must be a whole
  # training checkpoint: params, opt_state, passrates, meta).
  save_model(model, tmp_path / "run" / "models" / "5", cfg)
  assert _convert("--to-hf", tmp_path / "run" / "models" / "5", "--out",
                  tmp_path / "hf") == 0
  hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"], hf_cfg["pad_token_id"]) == (
      None, [1, 0], 0)


def test_dtype_objects_are_accepted(qwen_src, tmp_path):
  src, _, _ = qwen_src
  model, cfg = load_hf_model(src, dtype=jnp.float32, param_dtype=jnp.bfloat16)
  assert (cfg.dtype, cfg.param_dtype) == ("float32", "bfloat16")
  assert model.embed[...].dtype == jnp.bfloat16
  _, cfg = load_hf_model(src, param_dtype=np.dtype(np.float16))
  assert cfg.param_dtype == "float16"
  with pytest.raises(ModelFileError, match=r"^dtype=<class 'numpy.int32'> is not one of"):
    load_hf_model(src, dtype=np.int32)
  path = save_model(model, tmp_path / "ckpt", cfg=dataclasses.replace(cfg, param_dtype="bfloat16"))
  half, cfg2 = load_model(path, dtype=jnp.bfloat16, param_dtype=np.float32)
  assert (cfg2.dtype, cfg2.param_dtype) == ("bfloat16", "float32")
  assert {x.dtype for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {np.dtype("float32")}
  out = export_hf(half, cfg2, tmp_path / "hf", dtype=jnp.float16)
  assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
  with pytest.raises(ConfigError):
    load_model(path, param_dtype="fp8")
