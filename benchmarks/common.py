"""Helpers shared by the side-by-side benchmarks (run as `python benchmarks/NAME.py`)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax.models import Decoder


def random_decoder(cfg, seed=0) -> Decoder:
  """Every weight normal * 0.02 (norm scales 1), filled from numpy: no per-shape RNG compiles."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def timed(fn, *args) -> float:
  t0 = time.perf_counter()
  fn(*args)
  return time.perf_counter() - t0


def step_runner(compiled, state, teacher_params, batch):
  """run(n): n steps of a compiled train step from the state left by the last call (the state is
  donated, so each call continues where the previous one stopped); waits for the last loss."""
  box = {"state": state}

  def run(n):
    s = box["state"]
    for _ in range(n):
      s, metrics = compiled(s, teacher_params, batch)
    jax.block_until_ready(metrics["loss"])
    box["state"] = s

  return run


def tunix_sampler(cfg, cache_size: int):
  """Tunix 0.1.7's `Sampler` over a `tunix.models.qwen2` model of `cfg`'s shape (random weights
  from its dummy_model_creator). Prompts travel as space-separated ids; EOS is the out-of-
  vocabulary id cfg.vocab_size (disabled); no BOS (bos_id 0 is falsy)."""
  from tunix.generate import sampler as tsampler
  from tunix.models import dummy_model_creator
  from tunix.models.qwen2 import model as qwen2

  tcfg = qwen2.ModelConfig(num_layers=cfg.num_layers, vocab_size=cfg.vocab_size,
                           embed_dim=cfg.hidden, hidden_dim=cfg.mlp_dim, num_heads=cfg.num_heads,
                           head_dim=cfg.head_dim, num_kv_heads=cfg.num_kv_heads,
                           rope_theta=int(cfg.rope_theta), norm_eps=cfg.rms_eps,
                           use_tied_embedding=True)
  model = dummy_model_creator.create_dummy_model(qwen2.Qwen2, tcfg, scale=0.02)

  class IdTokenizer:
    def encode(self, text, **kw):
      return [int(t) for t in text.split()]

    def decode(self, ids, **kw):
      return " ".join(map(str, ids))

    def bos_id(self):
      return 0

    def eos_id(self):
      return cfg.vocab_size

    def pad_id(self):
      return 0

  return tsampler.Sampler(model, IdTokenizer(), tsampler.CacheConfig(
      cache_size=cache_size, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim))
