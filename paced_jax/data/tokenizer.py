"""Tokenizers: one small protocol, a built-in character tokenizer and Hugging Face `tokenizers`.

Protocol (used by the pipeline, the sampler and the verifier):
  encode(text) -> list[int]      no special tokens added
  decode(ids) -> str             special tokens (pad/eos/bos) are dropped
  vocab_size, eos_id, pad_id, bos_id (None when the model has no BOS)
  stop_ids                       every id that ends a rollout, eos_id first (give it to
                                 `generate(eos_id=tok.stop_ids)`)

Prompts go through `encode_prompt(tok, prompt, chat_template)`. A non-empty `chat_template`
(data.chat_template) is an explicit override: BOS (if any) + the template with every `{prompt}`
replaced by the problem text (other braces are literal, so JSON or LaTeX in a template needs no
escaping), e.g. "Q: {prompt}\\nA: ", or "{prompt}" for the raw prompt. Without one, a tokenizer
directory's own chat template (tokenizer_config.json `chat_template` or chat_template.jinja) is
rendered as transformers' `apply_chat_template(messages, add_generation_prompt=True)` renders it
(see chat_template.py; data.chat_template_kwargs such as enable_thinking=false go to the
template), and BOS is whatever the template writes. Otherwise: BOS + the raw prompt.
Special tokens in the text (e.g. `<|im_start|>`) are matched as single tokens.
"""

from __future__ import annotations

import json
import os
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from paced_jax.config import ConfigError
from paced_jax.data.chat_template import ChatTemplate, parse_kwargs
from paced_jax.data.sources import DataError


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int
  pad_id: int
  bos_id: int | None
  stop_ids: tuple[int, ...]

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
  """Printable ASCII (32..126) and newline, one id per character, for the synthetic suite.

  ids: 0 pad, 1 eos, 2 bos, 3.. the 96 characters; 99..127 are reserved and never produced, so
  `vocab_size` is 128 and matches the tiny model presets.
  """

  ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
  pad_id, eos_id, bos_id = 0, 1, 2
  stop_ids = (1,)
  chat_template = None
  vocab_size = 128
  _OFFSET = 3

  def __init__(self):
    lut = np.full(256, -1, np.int32)  # byte -> id; -1 for characters outside the alphabet
    for i, ch in enumerate(self.ALPHABET):
      lut[ord(ch)] = i + self._OFFSET
    self._lut = lut
    self._chars = np.array(list(self.ALPHABET))

  def encode(self, text: str) -> list[int]:
    return self.encode_np(text).tolist()

  def encode_np(self, text: str) -> np.ndarray:
    try:
      raw = np.frombuffer(text.encode("ascii"), np.uint8)
    except UnicodeEncodeError as e:
      bad = text[e.start]
      raise DataError(f"character {bad!r} (U+{ord(bad):04X}) is outside the char tokenizer's "
                       "printable-ASCII alphabet; use a tokenizer.json (data.tokenizer=PATH)"
                       ) from None
    ids = self._lut[raw]
    if (ids < 0).any():
      bad = chr(int(raw[np.argmax(ids < 0)]))
      raise DataError(f"character {bad!r} is outside the char tokenizer's printable-ASCII "
                       "alphabet; use a tokenizer.json (data.tokenizer=PATH)")
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    a = np.asarray(ids, np.int64).reshape(-1) - self._OFFSET
    a = a[(a >= 0) & (a < len(self.ALPHABET))]
    return "".join(self._chars[a].tolist())

  def __repr__(self) -> str:
    return "CharTokenizer(vocab_size=128)"


def _token_text(v) -> str | None:
  if isinstance(v, dict):  # {"content": "<|im_end|>", "lstrip": false, ...}
    v = v.get("content")
  return v if isinstance(v, str) and v else None


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json; special tokens from tokenizer_config.json.

  `path` is a tokenizer.json file or a model directory holding one. eos/bos/pad come from
  tokenizer_config.json next to it when present (`eos_token`, `bos_token`, `pad_token`,
  `add_bos_token`); otherwise EOS is the first of <|endoftext|>, </s>, <|end_of_text|>, <eos>
  found in the vocabulary and there is no BOS. pad defaults to EOS (pad tokens are masked out
  everywhere, so sharing the id is safe). Stop ids: EOS and every `eos_token_id` (an int or a
  list) of `generation_config.json` next to it, else of `config.json` (as transformers does);
  Qwen2.5-Instruct lists <|im_end|> and <|endoftext|>, Llama-3.1-Instruct three ids.
  """

  _EOS_GUESSES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
  # The special tokens a chat template sees as variables (bos_token, ...).
  _SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")

  def __init__(self, path: str, chat_template_kwargs: Sequence[str] = ()):
    from tokenizers import Tokenizer as _HF

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise ConfigError(f"data.tokenizer={path!r}: no tokenizer.json there; give 'char', a "
                        "tokenizer.json file or a Hugging Face model directory")
    try:
      self._tok = _HF.from_file(file)
    except Exception as e:
      raise ConfigError(f"{file}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    self.path = file
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    cfg = {}
    cfg_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.isfile(cfg_file):
      with open(cfg_file, encoding="utf-8") as f:
        cfg = json.load(f)
    eos = _token_text(cfg.get("eos_token"))
    if eos is None:
      eos = next((t for t in self._EOS_GUESSES if self._tok.token_to_id(t) is not None), None)
    if eos is None:
      raise ConfigError(f"{file}: cannot tell the EOS token; add a tokenizer_config.json with "
                        "\"eos_token\" next to it")
    self.eos_id = self._id(eos, "eos_token")
    bos = _token_text(cfg.get("bos_token"))
    self.bos_id = self._id(bos, "bos_token") if bos and cfg.get("add_bos_token", True) else None
    pad = _token_text(cfg.get("pad_token"))
    self.pad_id = self._id(pad, "pad_token") if pad else self.eos_id
    self.stop_ids = tuple(dict.fromkeys([self.eos_id, *_listed_stop_ids(os.path.dirname(file))]))
    self._special = {i for i in (self.bos_id, self.pad_id, *self.stop_ids) if i is not None}
    specials = {k: t for k in self._SPECIAL_KEYS if (t := _token_text(cfg.get(k)))}
    self.chat_template = ChatTemplate.find(os.path.dirname(file), cfg, specials,
                                           chat_template_kwargs)

  def _id(self, token: str, what: str) -> int:
    i = self._tok.token_to_id(token)
    if i is None:
      raise ConfigError(f"{self.path}: {what} {token!r} from tokenizer_config.json is not in "
                        "the vocabulary")
    return i

  def encode(self, text: str) -> list[int]:
    # add_special_tokens=False: BOS is added once by encode_prompt, never by post-processors.
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids if int(i) not in self._special],
                            skip_special_tokens=False)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def _listed_stop_ids(d: str) -> list[int]:
  """`eos_token_id` of generation_config.json in `d`, else of config.json; [] when neither."""
  for name in ("generation_config.json", "config.json"):
    f = os.path.join(d, name)
    if not os.path.isfile(f):
      continue
    try:
      with open(f, encoding="utf-8") as fh:
        ids = json.load(fh).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError):
      raise ConfigError(f"{f} is not a JSON object") from None
    ids = [] if ids is None else ids if isinstance(ids, list) else [ids]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
      raise ConfigError(f"{f}: eos_token_id={ids!r} must be a token id or a list of them")
    return ids
  return []


def load_tokenizer(spec: str, chat_template_kwargs: Sequence[str] = ()) -> Tokenizer:
  """"char" -> CharTokenizer; a tokenizer.json file or model directory -> HFTokenizer.

  `chat_template_kwargs` ("key=json_value", data.chat_template_kwargs) go to the directory's
  own chat template; a malformed entry, or giving them without such a template, is an error.
  """
  parse_kwargs(chat_template_kwargs)  # any tokenizer: a bad entry is named before the files
  if spec == "char":
    tok = CharTokenizer()
  elif not spec or not os.path.exists(spec):
    raise ConfigError(f"data.tokenizer={spec!r} is neither 'char' nor an existing "
                      "tokenizer.json file or model directory")
  else:
    tok = HFTokenizer(spec, chat_template_kwargs)
  if chat_template_kwargs and tok.chat_template is None:
    raise ConfigError(f"data.chat_template_kwargs={tuple(chat_template_kwargs)} but tokenizer "
                      f"{spec!r} has no chat template (tokenizer_config.json chat_template or "
                      "chat_template.jinja) to give them to")
  return tok


def apply_chat_template(template: str, prompt: str) -> str:
  return template.replace("{prompt}", prompt) if template else prompt


def prompt_text(tok: Tokenizer, prompt: str, chat_template: str = "") -> str:
  """The text the model reads for `prompt` (before `prompt_prefix`): the explicit
  `chat_template` with {prompt} filled in, else the tokenizer's own template, else `prompt`."""
  own = getattr(tok, "chat_template", None)
  if chat_template or own is None:
    return apply_chat_template(chat_template, prompt)
  return own.render(prompt)


def prompt_prefix(tok: Tokenizer, chat_template: str = "") -> list[int]:
  """[BOS] before every prompt, or [] when there is no BOS or the tokenizer's own chat template
  writes it (transformers encodes a rendered chat without adding special tokens)."""
  own = not chat_template and getattr(tok, "chat_template", None) is not None
  return [] if own or tok.bos_id is None else [tok.bos_id]


def encode_prompt(tok: Tokenizer, prompt: str, chat_template: str = "") -> list[int]:
  """prompt_prefix + encode(prompt_text): the prompt's token ids."""
  return prompt_prefix(tok, chat_template) + tok.encode(prompt_text(tok, prompt, chat_template))


def encode_many(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  """encode() over many texts as int32 arrays; batched (Rust threads) for HF tokenizers."""
  if isinstance(tok, CharTokenizer):
    # One lookup over all texts joined (ASCII: one byte per character), then split.
    ids = tok.encode_np("".join(texts))
    return np.split(ids, np.cumsum([len(t) for t in texts])[:-1]) if texts else []
  if hasattr(tok, "encode_batch"):
    return [np.asarray(ids, np.int32) for ids in tok.encode_batch(texts)]
  return [np.asarray(tok.encode(t), np.int32) for t in texts]
