"""A tokenizer directory's own chat template, rendered the way transformers renders it.

    tmpl = ChatTemplate.find("/ckpt/Qwen3-0.6B", tokenizer_config, {"eos_token": "<|im_end|>"},
                             ["enable_thinking=false"])
    tmpl.render("What is 2+3?")
    # '<|im_start|>user\\nWhat is 2+3?<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n'

The environment is the one of `transformers.utils.chat_template_utils`: jinja2's
ImmutableSandboxedEnvironment (templates come from model hubs: untrusted code) with trim_blocks and
lstrip_blocks, loop controls, a `tojson` filter that does not HTML-escape, `raise_exception`,
`strftime_now`, and the `{% generation %}` block (rendered as its body). The template sees
messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, tools=None,
documents=None, the special tokens (bos_token, eos_token, ...) as strings and the user's kwargs,
which win over the special tokens (as in `apply_chat_template(..., **kwargs)`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Sequence

from paced_jax.config import ConfigError

_RESERVED = ("messages", "add_generation_prompt", "tools", "documents")


def parse_kwargs(items: Sequence[str], what: str = "data.chat_template_kwargs") -> dict[str, Any]:
  """("enable_thinking=false", 'effort="high"') -> {"enable_thinking": False, "effort": "high"}."""
  out = {}
  for item in items:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
      raise ConfigError(f"{what} entry {item!r} is not of the form name=json_value, e.g. "
                        "enable_thinking=false")
    if key in _RESERVED:
      raise ConfigError(f"{what} entry {item!r}: {key} is set by paced_jax itself")
    try:
      out[key] = json.loads(raw)
    except json.JSONDecodeError:
      raise ConfigError(f"{what} entry {item!r}: {raw.strip()!r} is not a JSON value (a string "
                        f"needs quotes: {key}=\"{raw.strip()}\")") from None
  return out


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  source: str  # the file it came from, for error messages
  text: str
  variables: dict  # special tokens and user kwargs, passed to every render

  @classmethod
  def find(cls, directory: str, tokenizer_config: dict, special_tokens: dict[str, str],
           kwargs: Sequence[str] = ()) -> ChatTemplate | None:
    """chat_template.jinja in `directory`, else tokenizer_config.json's `chat_template` (a
    string, or a list of named templates: "default"); None when there is neither."""
    file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(file):
      with open(file, encoding="utf-8") as f:
        text = f.read()
    else:
      file, text = os.path.join(directory, "tokenizer_config.json"), tokenizer_config.get(
          "chat_template")
      if isinstance(text, list):
        text = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}.get(
            "default")
      if not isinstance(text, str) or not text.strip():
        return None
    tmpl = cls(file, text, {**special_tokens, **parse_kwargs(kwargs)})
    tmpl._compiled()  # a syntax error shows at load time, not at the first prompt
    return tmpl

  def _compiled(self):
    import jinja2

    try:
      return _compile(self.text)
    except jinja2.TemplateSyntaxError as e:
      raise ConfigError(f"chat template in {self.source}, line {e.lineno}: {e.message}") from None

  def render(self, prompt: str) -> str:
    import jinja2

    try:
      return self._compiled().render(
          **self.variables, messages=[{"role": "user", "content": prompt}],
          add_generation_prompt=True, tools=None, documents=None)
    except jinja2.TemplateError as e:
      msg = (str(e) or type(e).__name__).splitlines()[0]
      raise ConfigError(f"chat template in {self.source} failed: {msg}") from None


@functools.lru_cache(maxsize=8)
def _compile(text: str):
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(jinja2.ext.Extension):  # `{% generation %}...{% endgeneration %}`: the body
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(text)
