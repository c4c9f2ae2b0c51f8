"""Real checkpoint pairs end to end (issue 13): the model directory decides the architecture;
a `--set` shape that contradicts it is one line naming every differing field; the checkpoint
records the model trained; the Qwen3 recipe runs on tiny stand-in directories."""

import json

import numpy as np
import pytest

from paced_jax import cli
from paced_jax.config import ConfigError, load_config
from paced_jax.models.io import read_model_config
from test_model_io import train_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RECIPE = "configs/qwen3_8b_to_0p6b.py"
# Run length and buckets only: no shape of either model is overridden.
FAST = ["train.steps=3", "train.ckpt_every=3", "train.warmup_steps=1", "data.batch_size=8",
        "data.max_prompt_len=128", "data.max_response_len=16", "data.length_buckets=(160,)",
        "sample.prompt_buckets=(128,)", "sample.max_new_tokens=8", "sample.batch_size=32",
        "paced.rollouts=2", "loss.chunk_size=0", "data.reference=dataset", "eval.max_problems=0"]


def hf_dir(path, hidden, vocab=128, seed=0, tokenizer=True):
  """A tiny random Qwen3 saved by transformers (+ a word-level BPE tokenizer of < 128 ids)."""
  torch.manual_seed(seed)
  cfg = transformers.Qwen3Config(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
      tie_word_embeddings=False, rope_theta=1e6, eos_token_id=1, pad_token_id=1)
  transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
  if tokenizer:
    train_tokenizer(path)
  return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  root = tmp_path_factory.mktemp("pair")
  teacher, student = hf_dir(root / "teacher", 48, seed=1), hf_dir(root / "student", 32)
  pool = root / "pool.jsonl"
  with open(pool, "w") as f:
    for i in range(16):
      a = i + 2
      f.write(json.dumps({"question": f"solve for x two plus {i}", "final_answer": str(a),
                          "solution": f"the answer is {a}"}) + "\n")
  return teacher, student, pool


def _paced(*argv):
  return cli.main([str(a) for a in argv])


@pytest.mark.slow
def test_recipe_runs_on_stand_in_directories(pair, tmp_path):
  """The recipe with only the three paths (its presets say 8B / 0.6B): trains the directories'
  models, config.json and the checkpoint record them, FLOPs are counted on them."""
  from paced_jax.flops import step_flops
  from paced_jax.train import train
  from paced_jax.models.resolve import resolve_models

  teacher, student, pool = pair
  cfg = load_config(f"{RECIPE}:{teacher},{student},{pool}", FAST)
  assert cfg.model.num_layers == 28  # the preset, before the directories are read
  last = train(cfg, tmp_path / "run", progress=False)
  assert last["step"] == 3 and np.isfinite(last["loss"])
  meta = next((tmp_path / "run" / "checkpoints" / "3" / "meta").rglob("*"))
  meta = json.loads(next(f for f in meta.parent.iterdir() if f.is_file()).read_text())
  want = read_model_config(student)
  trained = meta["model_config"]
  assert (trained["hidden"], trained["num_layers"], trained["vocab_size"]) == (32, 2, 128)
  for k in ("hidden", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
            "vocab_size", "arch", "qk_norm", "tie_embeddings"):
    assert trained[k] == getattr(want, k), k
  assert (trained["dtype"], trained["param_dtype"]) == ("bfloat16", "float32")  # the config's
  run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
  assert run_cfg["teacher"]["hidden"] == 48 and run_cfg["model"]["hidden"] == 32
  resolved = resolve_models(cfg)
  flops = step_flops(resolved.model, resolved.teacher, 8, 160, 16, chunk=0)
  assert last["compute/train_flops"] == pytest.approx(3 * flops, rel=1e-6)


def test_contradicting_set_is_one_line_with_every_field(pair, tmp_path, capsys):
  teacher, student, pool = pair
  rc = _paced("train", f"{RECIPE}:{teacher},{student},{pool}", "--workdir", tmp_path / "run",
              *[f"--set={o}" for o in FAST], "--set", "model.hidden=40")
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  line = err[0]
  assert line.startswith("paced: error: train.init_student=") and "Traceback" not in line
  for field in ("hidden: directory 32, config 40 (--set)", "num_layers: directory 2, config 28",
                "vocab_size: directory 128, config 151936", "mlp_dim: directory 64"):
    assert field in line, line
  assert not (tmp_path / "run" / "config.json").exists()


def test_agreeing_set_and_converted_checkpoint(pair, tmp_path):
  """A --set that agrees with the directory is fine; a converted (Orbax) checkpoint decides
  like a Hugging Face directory; a teacher-less config takes the teacher's directory."""
  from paced_jax.models.resolve import resolve_models, shape_overrides

  teacher, student, pool = pair
  assert _paced("convert", "--from-hf", student, "--out", tmp_path / "ckpt") == 0
  sets = ["model.hidden=32", "model.vocab_size=128"]
  cfg = load_config(f"{RECIPE}:{teacher},{tmp_path / 'ckpt'},{pool}", sets)
  out = resolve_models(cfg, shape_overrides(sets))
  assert (out.model.hidden, out.model.num_layers, out.model.remat) == (32, 2, "dots")
  assert out.teacher.hidden == 48 and out.teacher.dtype == "bfloat16"
  assert resolve_models(out, shape_overrides(sets)) == out  # idempotent
  with pytest.raises(ConfigError, match=r"num_layers: directory 2, config 3 \(--set\)"):
    resolve_models(load_config(f"{RECIPE}:{teacher},{student},{pool}",
                               ["teacher.num_layers=3"]), {"teacher.num_layers"})
  assert shape_overrides(["model.rope_scaling.factor=2", "teacher={}", "data.path=x"]) >= {
      "model.rope_scaling", "teacher.hidden", "teacher.vocab_size"}


def test_load_or_init_names_every_field(pair):
  from paced_jax.config import ModelConfig
  from paced_jax.train import load_or_init

  _, student, _ = pair
  with pytest.raises(ConfigError) as e:
    load_or_init(str(student), ModelConfig(), None, 0, "student")
  msg = str(e.value)
  assert "\n" not in msg and "vocab_size: directory 128, config 256" in msg
  assert "hidden: directory 32, config 64" in msg and "arch: directory 'qwen3'" in msg


def test_smoke_loads_the_named_directories(pair, capsys, monkeypatch):
  """`paced smoke` loads what the config names (not the presets), refuses missing paths, and
  refuses in one line a run the planner says will not fit the device memory."""
  from paced_jax import commands

  teacher, student, pool = pair
  spec = f"{RECIPE}:{teacher},{student},{pool}"
  assert _paced("smoke", spec, "--seq", "8", "--batch", "2") == 0
  out = capsys.readouterr().out
  n = transformers.AutoModelForCausalLM.from_pretrained(student).num_parameters()
  capsys.readouterr()  # transformers' loading bar
  assert f"student: qwen3 {n:,} params (2 layers, hidden 32, vocab 128), loaded from {student}" \
      in out and f"(2 layers, hidden 48, vocab 128), loaded from {teacher}" in out
  assert _paced("smoke", f"{RECIPE}:{teacher},{pool.parent / 'nope'},{pool}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "train.init_student=" in err[0] and "does not exist" in err[0]
  monkeypatch.setattr(commands, "_device_memory", lambda: 2**20)  # a 1 MiB device
  assert _paced("smoke", spec, *[f"--set={o}" for o in FAST]) == 2
  captured = capsys.readouterr()
  err = [l for l in captured.err.strip().splitlines() if not l.startswith("INFO")]
  assert len(err) == 1 and err[0].startswith("paced: error: the run needs about"), err
  assert "but a device has 0.00 GiB" in err[0] and "paced plan" in err[0]
  assert "student:" not in captured.out  # refused before any model was built
  monkeypatch.setattr(commands, "_device_memory", lambda: 2**34)
  assert _paced("smoke", spec, *[f"--set={o}" for o in FAST], "--seq", "4") == 0
  assert "plan: 0.0" in capsys.readouterr().out


def _sliced(src, dst, vocab):
  """`src` with its embedding and unembedding rows cut to the first `vocab` ids."""
  model = transformers.AutoModelForCausalLM.from_pretrained(src)
  cfg = model.config
  cfg.vocab_size = vocab
  small = transformers.AutoModelForCausalLM.from_config(cfg)
  state = {k: (v[:vocab] if k in ("model.embed_tokens.weight", "lm_head.weight") else v)
           for k, v in model.state_dict().items()}
  small.load_state_dict(state)
  small.save_pretrained(dst)
  return dst


def test_padded_teacher_vocabulary_trains_like_the_unpadded_one(pair, tmp_path):
  """Teacher 160 rows, student 128, one tokenizer of V ids (< 128): setup sets
  loss.vocab_limit=V and the first-step loss equals that of the same teacher with its padding
  rows sliced away (both 128 rows, loss.vocab_limit=V set by hand)."""
  from tokenizers import Tokenizer

  from paced_jax.models.resolve import resolve_models
  from paced_jax.train import train

  _, student, pool = pair
  V = Tokenizer.from_file(str(student / "tokenizer.json")).get_vocab_size()
  assert V < 128
  padded = hf_dir(tmp_path / "t160", 48, vocab=160, seed=3, tokenizer=False)
  sliced = _sliced(padded, tmp_path / "t128", 128)
  once = FAST + ["train.steps=1", "paced.weighting=uniform", "loss.mode=distill"]
  losses = {}
  for name, teacher, extra in (("padded", padded, []), ("sliced", sliced,
                                                       [f"loss.vocab_limit={V}"])):
    cfg = load_config(f"{RECIPE}:{teacher},{student},{pool}", once + extra)
    assert resolve_models(cfg).loss.vocab_limit == V
    losses[name] = train(cfg, tmp_path / name, progress=False)["loss"]
  run_cfg = json.loads((tmp_path / "padded" / "config.json").read_text())
  assert run_cfg["loss"]["vocab_limit"] == V and run_cfg["teacher"]["vocab_size"] == 160
  assert np.isfinite(losses["padded"])
  assert losses["padded"] == pytest.approx(losses["sliced"], rel=1e-5, abs=1e-6)


def test_padded_vocabulary_needs_one_tokenizer(pair, tmp_path):
  from paced_jax.models.resolve import resolve_models

  _, student, pool = pair
  other = hf_dir(tmp_path / "t160", 48, vocab=160, seed=3, tokenizer=False)
  train_tokenizer(other, extra_special=("<|im_end|>",))  # a different vocabulary
  cfg = load_config(f"{RECIPE}:{other},{student},{pool}")
  with pytest.raises(ConfigError, match="differ, e.g.") as e:
    resolve_models(cfg)
  assert "\n" not in str(e.value) and "distillation needs one vocabulary" in str(e.value)
  cfg = load_config("configs/demo.py:tiny", ["teacher.vocab_size=160"])  # char tokenizer
  with pytest.raises(ConfigError, match="teacher vocab_size=160 differs from student"):
    resolve_models(cfg)
