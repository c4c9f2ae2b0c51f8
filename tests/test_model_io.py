"""Model checkpoints (Orbax), HF export/import without torch, compatibility, `paced convert`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from paced_jax import cli
from paced_jax.config import Config, ConfigError, to_json
from paced_jax.models import Decoder, get_preset
from paced_jax.models.hf import ModelFileError, export_hf, load_hf_model
from paced_jax.models.io import check_compatible, load_model, save_model

TOKENS = np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32)
_fwd = nnx.jit(lambda m, t: m(t))


def random_model(name, seed=0, **over):
  """A preset with every parameter random (biases and norm scales too, so a dropped or
  transposed tensor changes the logits). Filled from numpy: no eager per-op compiles."""
  cfg = get_preset(name, **over)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(seed)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(rng.normal(0, 0.1, s.shape).astype(np.float32)
                               + (jax.tree_util.keystr(p).endswith("'scale']"))),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state), cfg


def params_of(model):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


def train_tokenizer(path, extra_special=(), vocab_size=60):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  special = ["<unk>", "<|endoftext|>", *extra_special]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special)
  tok.train_from_iterator(["the answer is 42", "two plus two is four", "solve for x"] * 20,
                          trainer)
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|endoftext|>", "unk_token": "<unk>",
       "tokenizer_class": "PreTrainedTokenizerFast"}))
  return path


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
  model, cfg = random_model("tiny-qwen2")
  path = save_model(model, tmp_path_factory.mktemp("ckpt") / "qwen2")
  return model, cfg, path, np.asarray(_fwd(model, TOKENS))


def test_save_load_round_trip(qwen2):
  model, cfg, path, ref = qwen2
  assert json.loads((path / "model_config.json").read_text())["qkv_bias"] is True
  loaded, cfg2 = load_model(path)
  assert cfg2 == cfg
  want, got = params_of(model), params_of(loaded)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  np.testing.assert_array_equal(np.asarray(_fwd(loaded, TOKENS)), ref)

  half, _ = load_model(path, param_dtype="bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {"bfloat16"}


def test_load_onto_mesh(qwen2, mesh_2x4):
  _, _, path, ref = qwen2
  model, _ = load_model(path, mesh=mesh_2x4)
  # Shardings come from LOGICAL_RULES: q kernel [D, N, H] -> (fsdp, tensor); embed [V, D].
  assert model.layers[0].attn.q_proj.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert model.embed[...].sharding.spec == P("tensor", "fsdp")
  assert len(model.embed[...].sharding.device_set) == 8
  with jax.set_mesh(mesh_2x4):
    out = _fwd(model, TOKENS)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_load_training_step_directory(qwen2, tmp_path):
  """The trainer's layout: checkpoints/<step>/{params,meta} written by a CheckpointManager.
  Step 7 stores an nnx.State with its config in meta/; step 8 a pure dict whose config comes
  from the run's config.json two directories up."""
  import dataclasses

  import orbax.checkpoint as ocp

  model, cfg, _, ref = qwen2
  (tmp_path / "config.json").write_text(to_json(Config(model=cfg)))
  state = nnx.state(model, nnx.Param)
  with ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("params", "meta")) as mngr:
    mngr.save(7, args=ocp.args.Composite(params=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave({"step": 7, "model_config":
                                                                 dataclasses.asdict(cfg)})))
    mngr.save(8, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.to_pure_dict(state))))
    mngr.wait_until_finished()
  (tmp_path / "config.json").write_text(to_json(Config(model=dataclasses.replace(
      cfg, remat="full"))))  # step 7 must take its config from meta/, not from here
  for step, remat in ((7, "none"), (8, "full")):
    loaded, cfg2 = load_model(tmp_path / "checkpoints" / str(step))
    assert cfg2 == dataclasses.replace(cfg, remat=remat)
    np.testing.assert_allclose(np.asarray(_fwd(loaded, TOKENS)), ref, atol=1e-6)


def test_load_model_errors(qwen2, tmp_path):
  _, cfg, path, _ = qwen2
  with pytest.raises(ModelFileError, match="is not a directory"):
    load_model(tmp_path / "nope")
  with pytest.raises(ModelFileError, match="neither a model checkpoint"):
    load_model(tmp_path)
  # The params were saved for 2 layers; a config claiming 3 names the missing ones.
  (tmp_path / "params").symlink_to(path / "params")
  (tmp_path / "model_config.json").write_text(json.dumps(
      {**json.loads((path / "model_config.json").read_text()), "num_layers": 3}))
  with pytest.raises(ModelFileError, match=r"lacks \d+ parameter.*layers\.2") as e:
    load_model(tmp_path)
  assert "\n" not in str(e.value)
  (tmp_path / "model_config.json").write_text(json.dumps(
      {**json.loads((path / "model_config.json").read_text()), "mlp_dim": 96}))
  with pytest.raises(ModelFileError, match=r"has shape \[128, 64\].*\[96, 64\]"):
    load_model(tmp_path)


@pytest.mark.parametrize("name,over", [("tiny-qwen2", {}), ("tiny-qwen3", {}),
                                       ("tiny-llama", {"tie_embeddings": False}),
                                       ("tiny-qwen2", {"qkv_bias": False})])
def test_export_then_load_hf_is_exact(name, over, tmp_path):
  model, cfg = random_model(name, **over)
  out = export_hf(model, cfg, tmp_path / "hf", max_shard_bytes=40_000)
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["architectures"] == [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                                      "llama": "LlamaForCausalLM"}[cfg.arch]]
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1  # really sharded
  assert ("lm_head.weight" in index["weight_map"]) == (not cfg.tie_embeddings)
  loaded, cfg2 = load_hf_model(out)
  want, got = params_of(model), params_of(loaded)
  if cfg.arch == "qwen2" and not cfg.qkv_bias:  # Qwen2ForCausalLM always has q/k/v biases
    assert cfg2 == get_preset(name, **{**over, "qkv_bias": True})
    biases = {k: v for k, v in got.items() if k.endswith("['bias']")}
    assert len(biases) == 3 * cfg.num_layers and not any(v.any() for v in biases.values())
    got = {k: v for k, v in got.items() if k not in biases}
  else:
    assert cfg2 == cfg
  assert want.keys() == got.keys()
  for k in want:  # exact: the layout transforms are pure permutations
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_check_compatible(tmp_path):
  tok = train_tokenizer(tmp_path / "a")
  same = train_tokenizer(tmp_path / "b")
  other = train_tokenizer(tmp_path / "c", extra_special=("<|im_end|>",))
  real = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
  small, big = get_preset("tiny-qwen2"), get_preset("tiny-qwen3", vocab_size=160)
  assert check_compatible(small, small) == 128
  assert check_compatible(small, small, tok, same) == 128
  # Padded embeddings of one tokenizer: allowed, logits beyond the real vocabulary are masked.
  assert check_compatible(big, small, tok, same) == real
  with pytest.raises(ConfigError, match="teacher vocab_size=160 != student vocab_size=128"):
    check_compatible(big, small)
  with pytest.raises(ConfigError, match=f"teacher tokenizer {tmp_path / 'c'}.*student tokenizer "
                     f"{tmp_path / 'a'}"):
    check_compatible(small, small, other, tok)
  cfg_file = same / "tokenizer_config.json"
  cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "pad_token": "<unk>"}))
  with pytest.raises(ConfigError, match="special tokens differ.*pad_token"):
    check_compatible(small, small, tok, same)


def _paced(*args):
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", "convert", *map(str, args)],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_convert_cli_round_trip(tmp_path):
  model, cfg = random_model("tiny-qwen3")
  src = export_hf(model, cfg, tmp_path / "src")
  tok = train_tokenizer(tmp_path / "tok")
  r = _paced("--from-hf", src, "--out", tmp_path / "ckpt")
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "ckpt" / "params").is_dir()
  r = _paced("--to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tok,
             "--max-shard-size", "30KB", "--dtype", "bfloat16")
  assert r.returncode == 0, r.stderr
  assert "wrote Hugging Face directory" in r.stdout
  assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
  assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
  back, cfg2 = load_hf_model(tmp_path / "hf", param_dtype="float32")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  ref = np.asarray(_fwd(model, TOKENS))
  # bf16 storage: close, not equal (and not trivially close: logits are O(1)).
  assert np.abs(ref).max() > 0.5
  np.testing.assert_allclose(np.asarray(_fwd(back, TOKENS)), ref, atol=0.1 * np.abs(ref).max())


def test_convert_cli_user_errors(tmp_path, capsys):
  model, cfg = random_model("tiny-llama")
  src = export_hf(model, cfg, tmp_path / "src")
  assert cli.main(["convert", "--from-hf", str(tmp_path / "missing"), "--out",
                   str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a directory" in err
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("mine")
  assert cli.main(["convert", "--from-hf", str(src), "--out", str(busy)]) == 2
  assert "pass --force" in capsys.readouterr().err
  assert (busy / "keep.txt").read_text() == "mine"
  # --force replaces only what an earlier convert wrote, never the user's own files.
  assert cli.main(["convert", "--from-hf", str(src), "--out", str(busy), "--force"]) == 2
  assert "keep.txt" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
  done = tmp_path / "done"
  for extra in ([], ["--force"]):
    assert cli.main(["convert", "--from-hf", str(src), "--out", str(done), *extra]) == 0
  assert (done / "params").is_dir()
  # A broken source fails before --out is touched, even with --force.
  before = sorted(p.relative_to(done) for p in done.rglob("*"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  capsys.readouterr()
  assert cli.main(["convert", "--from-hf", str(tmp_path / "bad"), "--out", str(done),
                   "--force"]) == 2
  assert "unsupported architecture" in capsys.readouterr().err
  assert sorted(p.relative_to(done) for p in done.rglob("*")) == before
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_real_pair_config_loads_offline():
  from paced_jax.config import load_config
  from paced_jax.models import param_count

  cfg = load_config("configs/qwen3_8b_to_0p6b.py:/m/Qwen3-8B,/m/Qwen3-0.6B",
                    ["data.path=/d/gsm8k.jsonl"])
  assert (cfg.train.init_teacher, cfg.train.init_student) == ("/m/Qwen3-8B", "/m/Qwen3-0.6B")
  assert (cfg.data.source, cfg.data.path, cfg.paced.verifier) == ("jsonl", "/d/gsm8k.jsonl",
                                                                 "math")
  assert check_compatible(cfg.teacher, cfg.model) == 151_936
  assert param_count(cfg.model) == 596_049_920 and cfg.teacher.num_layers == 36
  defaults = load_config("configs/qwen3_8b_to_0p6b.py")
  assert defaults.train.init_student == "models/Qwen3-0.6B"
  tiny = load_config("configs/qwen3_8b_to_0p6b.py:tiny")
  assert tiny.train.init_student == "" and tiny.model.num_layers == 2
  with pytest.raises(ConfigError, match="TEACHER_DIR,STUDENT_DIR"):
    load_config("configs/qwen3_8b_to_0p6b.py:a,,b")
