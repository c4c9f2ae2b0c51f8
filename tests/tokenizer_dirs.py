"""Real byte-level BPE tokenizer directories built offline (the layout of Qwen / Llama-3 ones:
tokenizer.json with special added tokens, tokenizer_config.json, optional chat template and
generation_config.json), loadable by paced_jax and by transformers.AutoTokenizer."""

import json

SENTENCES = ["What is 12 plus 30? The answer is 42.", "Solve for x: 2x + 3 = 11, so x = 4.",
             "Think step by step, then give the final answer.", "café, naïve: ünïcode ∑ 😀"]


def byte_bpe_dir(path, special, config, chat_template_jinja=None, generation_config=None,
                 vocab_size=400):
  """Writes tokenizer.json (BPE trained on SENTENCES, `special` tokens first) and
  tokenizer_config.json (`config` + PreTrainedTokenizerFast) into `path`; returns `path`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(SENTENCES * 20, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(special),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", **config}))
  if chat_template_jinja is not None:
    (path / "chat_template.jinja").write_text(chat_template_jinja)
  if generation_config is not None:
    (path / "generation_config.json").write_text(json.dumps(generation_config))
  return path
