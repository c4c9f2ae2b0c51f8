"""Tokenizers: the built-in char tokenizer and a real Hugging Face tokenizer.json."""

import json

import pytest

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data import (CharTokenizer, DataError, HFTokenizer, Tokenizer, encode_prompt,
                            load_tokenizer)


def test_char_tokenizer_round_trip_and_ids():
  tok = load_tokenizer("char")
  assert isinstance(tok, Tokenizer) and tok.vocab_size == 128
  text = "Compute 12*(3+4) - x_1 ~ {a}|\\n\n#### 84"
  ids = tok.encode(text)
  assert len(ids) == len(text) and min(ids) >= 3 and max(ids) < 128
  assert tok.decode(ids) == text
  # Special ids are dropped on decode; bos/eos/pad are distinct.
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text
  assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3
  assert encode_prompt(tok, "1+1", "Q: {prompt}\nA:") == [tok.bos_id] + tok.encode("Q: 1+1\nA:")
  with pytest.raises(DataError, match=r"'é' \(U\+00E9\)"):
    CharTokenizer().encode("café")
  with pytest.raises(DataError, match=r"'\\t'"):
    CharTokenizer().encode("a\tb")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  from tokenizers import Tokenizer as HF
  from tokenizers import models, pre_tokenizers, trainers

  d = tmp_path_factory.mktemp("hf_tok")
  tok = HF(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["what is 12 plus 30? the answer is 42."] * 50, trainer)
  from tokenizers import decoders

  tok.decoder = decoders.ByteLevel()
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({
      "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>", "bos_token": None}))
  return d


def test_hf_tokenizer_from_model_directory(hf_dir):
  tok = load_tokenizer(str(hf_dir))
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  assert tok.eos_id == tok._tok.token_to_id("<|im_end|>")
  assert tok.pad_id == tok._tok.token_to_id("<|endoftext|>") and tok.bos_id is None
  text = "what is 12 plus 30?"
  ids = tok.encode(text)
  assert tok.decode(ids) == text and len(ids) < len(text)  # merges learned
  assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == text
  # Special tokens written in the chat template become single ids.
  template = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
  ids = encode_prompt(tok, "hi", template)
  start = tok._tok.token_to_id("<|im_start|>")
  assert ids[0] == start and ids.count(start) == 2 and tok.eos_id in ids


def test_hf_tokenizer_file_without_config_guesses_eos(hf_dir, tmp_path):
  (tmp_path / "tok.json").write_text((hf_dir / "tokenizer.json").read_text())
  tok = load_tokenizer(str(tmp_path / "tok.json"))
  assert tok.eos_id == tok.pad_id == tok._tok.token_to_id("<|endoftext|>")


def test_bad_tokenizer_specs_are_one_line(tmp_path):
  with pytest.raises(ConfigError, match="neither 'char' nor"):
    load_tokenizer(str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match="no tokenizer.json"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text("{}")
  with pytest.raises(ConfigError, match="not a valid tokenizer.json") as e:
    load_tokenizer(str(tmp_path))
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="no {prompt} placeholder"):
    DataConfig(chat_template="Question: ")


def test_pool_tokenisation_error_names_the_problem():
  from paced_jax.data import ListSource, Problem, build_pool

  src = ListSource([Problem("ok", "1+1", "2", "#### 2"), Problem("bad", "2+2", "4", "vier ü")])
  with pytest.raises(DataError, match=r"problem 'bad' reference: character 'ü'"):
    build_pool(src, CharTokenizer(), DataConfig())
