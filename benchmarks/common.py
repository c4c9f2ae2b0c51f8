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
