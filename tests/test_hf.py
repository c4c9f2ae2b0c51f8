"""Logits parity with `transformers` (CPU torch, fp32) for Llama-3, Qwen2 and Qwen3 checkpoints:
load, load onto the 2x4 mesh, export back; and the one-line errors of bad directories."""

import json
import shutil

import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from paced_jax.models.hf import ModelFileError, export_hf, load_hf_model  # noqa: E402

V = 96
TOKENS = np.random.RandomState(0).randint(0, V, (2, 12)).astype(np.int32)
_fwd = nnx.jit(lambda m, t: m(t))

CASES = {
    # llama3 RoPE scaling whose bands all bite at head_dim 8: wavelengths 6.3 (smoothed), 168,
    # 4467, 1.2e5 (divided by the factor); untied; sharded with an index.
    "llama": dict(arch="llama", tie=False, shard=True,
                  rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=16)),
    "llama_tied": dict(arch="llama", tie=True, shard=False),
    "qwen2": dict(arch="qwen2", tie=True, shard=True),  # implicit q/k/v bias
    "qwen3": dict(arch="qwen3", tie=False, shard=False),  # q/k RMSNorm
}


def _hf_config(arch, tie, rope_scaling=None, **_):
  common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=64, tie_word_embeddings=tie, rms_norm_eps=1e-5,
                bos_token_id=1, eos_token_id=2)
  if arch == "llama":
    return transformers.LlamaConfig(**common, rope_theta=500_000.0, rope_scaling=rope_scaling)
  if arch == "qwen2":
    return transformers.Qwen2Config(**common, rope_theta=1e6)
  return transformers.Qwen3Config(**common, rope_theta=1e6)


def _hf_logits(model):
  with torch.no_grad():
    return model(torch.tensor(TOKENS, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """name -> (directory, reference logits) of tiny random HF models saved as safetensors."""
  out = {}
  for name, case in CASES.items():
    torch.manual_seed(len(out))
    model = transformers.AutoModelForCausalLM.from_config(
        _hf_config(**case), attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial biases and norm weights: a dropped one shows
      for pname, p in model.named_parameters():
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in pname else 0.0))
    path = tmp_path_factory.mktemp("hf") / name
    model.save_pretrained(path, max_shard_size="20KB" if case["shard"] else "1GB")
    out[name] = (path, _hf_logits(model))
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_load_matches_transformers(hf_dirs, name):
  path, ref = hf_dirs[name]
  case = CASES[name]
  assert (path / "model.safetensors.index.json").is_file() == case["shard"]
  model, cfg = load_hf_model(path)
  assert (cfg.arch, cfg.tie_embeddings) == (case["arch"], case["tie"])
  assert (cfg.qkv_bias, cfg.qk_norm) == (name == "qwen2", name == "qwen3")
  assert (cfg.rope_scaling is not None) == ("rope_scaling" in case)
  assert isinstance(model.embed[...], jax.Array)
  out = np.asarray(_fwd(model, TOKENS))
  assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_load_onto_mesh_matches_transformers(hf_dirs, name, mesh_2x4):
  path, ref = hf_dirs[name]
  model, _ = load_hf_model(path, mesh=mesh_2x4)
  kernel = model.layers[1].mlp.down_proj.kernel[...]  # [F, D]: (mlp, embed)
  assert kernel.sharding.spec == P("tensor", "fsdp") and len(kernel.sharding.device_set) == 8
  assert model.embed[...].sharding.spec == P("tensor", "fsdp")
  with jax.set_mesh(mesh_2x4):
    out = _fwd(model, TOKENS)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)


def _tokenizer_dir(path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(["the answer is 42", "two plus two is four"] * 10,
                          trainers.BpeTrainer(vocab_size=50, special_tokens=["<unk>", "<eos>"]))
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<eos>", "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast"}))
  (path / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
  return path, tok


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_export_reloads_in_transformers(hf_dirs, name, tmp_path):
  path, ref = hf_dirs[name]
  model, cfg = load_hf_model(path)
  tok_dir, tok = _tokenizer_dir(tmp_path / "tok")
  out = export_hf(model, cfg, tmp_path / "export", tokenizer_dir=tok_dir, max_shard_bytes=16_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  hf_cfg = json.loads((out / "config.json").read_text())
  assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"]) == (0, 1)  # from tokenizer_dir
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", dtype=torch.float32).eval()
  assert type(reloaded).__name__ == hf_cfg["architectures"][0]
  np.testing.assert_allclose(_hf_logits(reloaded), ref, atol=1e-4, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "two plus two is four"
  assert hf_tok(text)["input_ids"] == tok.encode(text).ids and hf_tok.eos_token == "<eos>"


def test_bfloat16_load(hf_dirs):
  path, ref = hf_dirs["qwen3"]
  model, cfg = load_hf_model(path, param_dtype="bfloat16")
  assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {"bfloat16"}
  out = np.asarray(_fwd(model, TOKENS), np.float32)
  assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def _copy(hf_dirs, name, tmp_path):
  return shutil.copytree(hf_dirs[name][0], tmp_path / name)


def _edit_config(path, **changes):
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(changes)
  (path / "config.json").write_text(json.dumps(cfg))


def _one_line_error(path, match):
  with pytest.raises(ModelFileError, match=match) as e:
    load_hf_model(path)
  assert "\n" not in str(e.value)


def test_missing_and_extra_tensors(hf_dirs, tmp_path):
  from safetensors.numpy import load_file, save_file

  path = _copy(hf_dirs, "qwen3", tmp_path)
  tensors = load_file(path / "model.safetensors")
  del tensors["model.layers.1.mlp.down_proj.weight"]
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  _one_line_error(path, r"lacks 1 tensor\(s\) that Qwen3ForCausalLM needs: "
                        r"model\.layers\.1\.mlp\.down_proj\.weight$")
  tensors["model.layers.1.mlp.down_proj.weight"] = np.zeros((32, 64), np.float32)
  tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros((32,), np.float32)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  _one_line_error(path, r"1 unexpected tensor\(s\) for Qwen3ForCausalLM: .*o_proj\.bias")


def test_wrong_shape_and_bad_configs(hf_dirs, tmp_path):
  path = _copy(hf_dirs, "llama", tmp_path)
  _edit_config(path, intermediate_size=48)
  _one_line_error(path, r"tensor model\.layers\.\d\.mlp\.\w+_proj\.weight in model-\d+-of-\d+"
                        r"\.safetensors has shape \[\d+, \d+\], config\.json implies")
  _edit_config(path, intermediate_size=64, architectures=["GPT2LMHeadModel"])
  _one_line_error(path, r"unsupported architecture \['GPT2LMHeadModel'\]; supported: "
                        "LlamaForCausalLM")
  _edit_config(path, architectures=["LlamaForCausalLM"], rope_parameters=None,
               rope_scaling={"rope_type": "yarn", "factor": 4.0})
  _one_line_error(path, "rope_type='yarn'")
  _edit_config(path, rope_scaling=None, attention_bias=True)
  _one_line_error(path, "attention_bias=true")
  for f in path.glob("model*.safetensors*"):
    f.unlink()
  (path / "pytorch_model.bin").write_bytes(b"not loaded")
  _edit_config(path, attention_bias=False)
  _one_line_error(path, "pytorch_model.bin: pickle checkpoints are never loaded")
