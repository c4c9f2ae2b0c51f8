"""A tokenizer directory's own chat template: ids equal transformers' apply_chat_template."""

import numpy as np
import pytest

from paced_jax.config import ConfigError, DataConfig, apply_overrides, Config
from paced_jax.data import encode_prompt, load_tokenizer
from paced_jax.data.packing import build_pool
from paced_jax.data.schema import Problem
from paced_jax.preflight import check_run
from tokenizer_dirs import byte_bpe_dir

transformers = pytest.importorskip("transformers")

# Qwen3's template, shortened (no tools, no reasoning history) but with its whitespace control,
# its system-message branch and its enable_thinking switch.
QWEN = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# Llama-3.1's template, shortened: BOS from the template, a dated system header, trim, tojson,
# raise_exception and a namespace.
LLAMA = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- set ns = namespace(system="") %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- tools | tojson(indent=4) }}
{%- endif %}
{{- ns.system }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('roles must be user or assistant') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

PROMPTS = ["What is 12 plus 30?", "  Solve for x: 2x + 3 = 11.\n", "naïve ∑ <|im_end|> 😀"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  return byte_bpe_dir(tmp_path_factory.mktemp("qwen"), ["<|endoftext|>", "<|im_start|>",
                      "<|im_end|>"], {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                      "bos_token": None, "chat_template": QWEN})


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return byte_bpe_dir(tmp_path_factory.mktemp("llama"), [
      "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
      "<|eot_id|>"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
      chat_template_jinja=LLAMA)


def _hf_ids(path, prompt, **kwargs):
  hf = transformers.AutoTokenizer.from_pretrained(str(path))
  out = hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                               tokenize=True, return_dict=False, **kwargs)
  return list(out), hf


@pytest.mark.parametrize("kwargs", [(), ("enable_thinking=false",), ("enable_thinking=true",)])
def test_qwen_template_matches_transformers(qwen_dir, kwargs):
  tok = load_tokenizer(str(qwen_dir), kwargs)
  hf_kwargs = {k: v == "true" for k, v in (kw.split("=") for kw in kwargs)}
  for prompt in PROMPTS:
    want, hf = _hf_ids(qwen_dir, prompt, **hf_kwargs)
    assert encode_prompt(tok, prompt) == want
  ids = encode_prompt(tok, PROMPTS[0])
  start, end = hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
  assert ids[0] == start and ids.count(start) == 2 and end in ids  # special ids, not text
  assert (hf.encode("</think>", add_special_tokens=False)[0] in ids) == bool(
      kwargs == ("enable_thinking=false",))


def test_llama_template_matches_transformers(llama_dir):
  tok = load_tokenizer(str(llama_dir))
  assert tok.bos_id is not None
  for prompt in PROMPTS:
    want, hf = _hf_ids(llama_dir, prompt)
    got = encode_prompt(tok, prompt)
    assert got == want and got.count(tok.bos_id) == 1  # BOS from the template only
  with_date = load_tokenizer(str(llama_dir), ['date_string="1 Jan 2025"'])
  want, _ = _hf_ids(llama_dir, PROMPTS[0], date_string="1 Jan 2025")
  assert encode_prompt(with_date, PROMPTS[0]) == want != encode_prompt(tok, PROMPTS[0])


def test_block_whitespace_matches_transformers(tmp_path):
  # No "-" anywhere: trim_blocks and lstrip_blocks decide every newline and indent here.
  template = ("{% for m in messages %}\n  {% if m.role == 'user' %}\n  [{{ m.content }}]\n"
              "  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n>>\n{% endif %}")
  path = byte_bpe_dir(tmp_path / "ws", ["<|eos|>"], {"eos_token": "<|eos|>",
                                                     "chat_template": template})
  want, hf = _hf_ids(path, PROMPTS[0])
  assert hf.decode(want) == f"  [{PROMPTS[0]}]\n>>\n"
  assert encode_prompt(load_tokenizer(str(path)), PROMPTS[0]) == want


def test_pool_and_override(qwen_dir):
  tok = load_tokenizer(str(qwen_dir))
  problems = [Problem(id=str(i), prompt=p, answer="42", solution="42") for i, p in
              enumerate(PROMPTS)]
  pool = build_pool(problems, tok, DataConfig(max_prompt_len=64))
  for i, p in enumerate(PROMPTS):
    assert pool.prompt(i).tolist() == encode_prompt(tok, p)
  # data.chat_template stays an explicit override; "{prompt}" is the raw prompt.
  assert encode_prompt(tok, "hi", "{prompt}") == tok.encode("hi")
  cfg = DataConfig(chat_template="Q: {prompt}\nA:", max_prompt_len=64)
  assert build_pool(problems, tok, cfg).prompt(0).tolist() == tok.encode(
      f"Q: {PROMPTS[0]}\nA:")


def test_template_kwargs_errors(qwen_dir, tmp_path):
  cfg = apply_overrides(Config(), ["data.chat_template_kwargs=enable_thinking=false"])
  assert cfg.data.chat_template_kwargs == ("enable_thinking=false",)
  for bad, match in [(("enable_thinking",), "not of the form name=json_value"),
                     (("effort=high",), r"not a JSON value \(a string needs quotes: "
                                        r"effort=\"high\"\)"),
                     (("messages=[]",), "set by paced_jax itself")]:
    # Parsed where the tokenizer loads, and by the preflight before any model is built.
    with pytest.raises(ConfigError, match=match):
      load_tokenizer("char", bad)
    with pytest.raises(ConfigError, match=match):
      check_run(Config(data=DataConfig(chat_template_kwargs=bad)))
  with pytest.raises(ConfigError, match="set one of them"):
    DataConfig(chat_template="{prompt}", chat_template_kwargs=("a=1",))
  with pytest.raises(ConfigError, match="has no chat template"):
    load_tokenizer("char", ("a=1",))
  broken = byte_bpe_dir(tmp_path / "broken", ["<|im_end|>"], {
      "eos_token": "<|im_end|>", "chat_template": "{% if %}"})
  with pytest.raises(ConfigError, match=r"^chat template in .*tokenizer_config.json, line 1: "):
    load_tokenizer(str(broken))
  raising = byte_bpe_dir(tmp_path / "raising", ["<|im_end|>"], {
      "eos_token": "<|im_end|>", "chat_template": "{{ raise_exception('no user turns') }}"})
  with pytest.raises(ConfigError, match=r"failed: no user turns$"):
    encode_prompt(load_tokenizer(str(raising)), "hi")
