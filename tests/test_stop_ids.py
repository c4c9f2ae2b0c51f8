"""Every stop id ends a rollout: the tokenizer's EOS and each eos_token_id of
generation_config.json (Qwen lists two), else of config.json."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax.config import Config, ConfigError
from paced_jax.data import load_tokenizer
from paced_jax.models import Decoder, get_preset
from paced_jax.sampler import Knobs, generate
from tokenizer_dirs import byte_bpe_dir

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
QWEN_CFG = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
PROMPT = [5, 9, 17]
GREEDY = dict(knobs=Knobs(temperature=0.0, max_new_tokens=12), rng=0, prompt_buckets=(32,),
              budget_buckets=(32,))


def _model():
  cfg = get_preset("tiny-qwen2")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  return nnx.merge(graphdef, jax.tree.map(
      lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape).astype(np.float32)), state))


def test_stop_ids_from_generation_config_and_config(tmp_path):
  tok = load_tokenizer(str(byte_bpe_dir(tmp_path / "a", SPECIAL, QWEN_CFG,
                                        generation_config={"eos_token_id": [2, 0]})))
  assert (tok.eos_id, tok.stop_ids) == (2, (2, 0))
  # No generation_config.json: config.json's eos_token_id, an int here.
  b = byte_bpe_dir(tmp_path / "b", SPECIAL, QWEN_CFG)
  (b / "config.json").write_text(json.dumps({"eos_token_id": 0}))
  assert load_tokenizer(str(b)).stop_ids == (2, 0)
  assert load_tokenizer(str(byte_bpe_dir(tmp_path / "c", SPECIAL, QWEN_CFG))).stop_ids == (2,)
  assert load_tokenizer("char").stop_ids == (load_tokenizer("char").eos_id,)
  # Every stop id is special: decode drops it.
  assert tok.decode(tok.encode("the answer is 42") + [0, 2]) == "the answer is 42"
  bad = byte_bpe_dir(tmp_path / "d", SPECIAL, QWEN_CFG, generation_config={"eos_token_id": "x"})
  with pytest.raises(ConfigError, match=r"generation_config.json: eos_token_id=\['x'\] must be"):
    load_tokenizer(str(bad))


def test_rollout_stops_at_second_listed_id(tmp_path):
  model = _model()
  free = np.asarray(generate(model, [PROMPT], **GREEDY).tokens_BS)[0]
  # The first token that was not generated before it, and not the EOS: listed second, it must
  # end the rollout right there.
  k = next(i for i in range(2, 12) if free[i] not in free[:i] and free[i] != 2 and
           2 not in free[:i])
  d = byte_bpe_dir(tmp_path / "tok", SPECIAL, QWEN_CFG,
                   generation_config={"eos_token_id": [2, int(free[k])]})
  tok = load_tokenizer(str(d))
  assert tok.stop_ids == (2, int(free[k]))
  out = generate(model, [PROMPT], eos_id=tok.stop_ids, **GREEDY)
  assert int(out.lengths_B[0]) == k + 1
  np.testing.assert_array_equal(np.asarray(out.tokens_BS)[0, :k + 1], free[:k + 1])
  assert int(generate(model, [PROMPT], eos_id=tok.eos_id, **GREEDY).lengths_B[0]) > k + 1


def test_estimates_use_every_stop_id(tmp_path, monkeypatch):
  from paced_jax import estimate

  tok = load_tokenizer(str(byte_bpe_dir(tmp_path / "a", SPECIAL, QWEN_CFG,
                                        generation_config={"eos_token_id": [2, 0]})))
  seen = {}
  monkeypatch.setattr(estimate, "estimate_pass_rates", lambda *a, **kw: seen.update(kw))
  estimate.estimate_for_config(None, [], tok, None, Config(), None, rollouts=1, rng=0)
  assert seen["eos_id"] == (2, 0)
