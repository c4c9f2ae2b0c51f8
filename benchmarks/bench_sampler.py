"""Sampler, CPU (shared/BENCH_SHAPES.md): cpu-student, batch 16, prompt 32, 64 new tokens.

Compares, in one process and interleaved (median of 5 after warm-up):
  ours     paced_jax.sampler.generate (bucketed prefill + while_loop decode with the KV cache)
  nocache  the same model decoding by full recomputation of the whole sequence at every step
  tunix    tunix.generate.sampler.Sampler over tunix.models.qwen2 (google-tunix==0.1.7), same
           shape, random normal*0.02 weights via tunix.models.dummy_model_creator
and times one call at a new temperature (Tunix makes the temperature static and recompiles).

Tunix is not a dependency: run this file with a venv that has jax 0.10.2, this package and
google-tunix==0.1.7 (see benchmarks/results/sampler.md); without Tunix its column is skipped.

  JAX_PLATFORMS=cpu python benchmarks/bench_sampler.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import paced_jax
from common import random_decoder, timed, tunix_sampler
from paced_jax.models import Decoder, get_preset
from paced_jax.sampler import Knobs, generate

B, PROMPT, NEW = 16, 32, 64


def make_nocache(model: Decoder):
  """Temperature sampling where every step recomputes the full [B, PROMPT + NEW] forward."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params, prompts_BP, key, temperature):
    m = nnx.merge(graphdef, params)
    seq_BT = jnp.zeros((B, PROMPT + NEW), jnp.int32).at[:, :PROMPT].set(prompts_BP)

    def step(t, seq_BT):
      logits_BV = m(seq_BT)[:, PROMPT + t - 1].astype(jnp.float32)
      tok_B = jax.random.categorical(jax.random.fold_in(key, t), logits_BV / temperature)
      return seq_BT.at[:, PROMPT + t].set(tok_B.astype(jnp.int32))

    return jax.lax.fori_loop(0, NEW, step, seq_BT)[:, PROMPT:]

  return lambda prompts, seed, temperature: np.asarray(
      run(params, prompts, jax.random.key(seed), jnp.float32(temperature)))


def make_ours(model: Decoder):
  def call(prompts, seed, temperature):
    out = generate(model, prompts, rng=seed, eos_id=None,
                   knobs=Knobs(temperature=temperature, top_p=1.0, max_new_tokens=NEW))
    return np.asarray(out.tokens_BS)
  return call


def make_tunix(cfg):
  s = tunix_sampler(cfg, PROMPT + NEW)

  def call(prompts, seed, temperature):
    texts = [" ".join(map(str, p)) for p in prompts]
    out = s(texts, max_generation_steps=NEW, max_prompt_length=PROMPT, temperature=temperature,
            top_p=1.0, seed=seed, eos_tokens=[cfg.vocab_size], pad_output=True)
    return out.text
  return call


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--skip", nargs="*", default=[], choices=["nocache", "tunix"])
  args = ap.parse_args()
  cfg = get_preset("cpu-student")
  model = random_decoder(cfg)
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, cfg.vocab_size, (B, PROMPT)).tolist()
  runners = {"ours": make_ours(model)}
  if "nocache" not in args.skip:
    runners["nocache"] = make_nocache(model)
  tunix_version = "skipped"
  if "tunix" not in args.skip:
    try:
      runners["tunix"] = make_tunix(cfg)
      import importlib.metadata as md
      tunix_version = md.version("google-tunix")
    except ImportError as e:
      tunix_version = f"not installed ({e})"
  compile_s = {name: timed(fn, prompts, 0, 1.0) for name, fn in runners.items()}
  times = {name: [] for name in runners}
  for r in range(args.rounds):  # interleaved: machine drift hits every runner alike
    for name, fn in runners.items():
      times[name].append(timed(fn, prompts, r + 1, 1.0))
  new_temp = {name: timed(fn, prompts, 99, 0.7) for name, fn in runners.items()
              if name != "nocache"}

  print(f"# Sampler, CPU — {datetime.date.today()}")
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].platform}; python {platform.python_version()}"
        f", jax {jax.__version__}, flax {nnx.__name__ and __import__('flax').__version__}, "
        f"paced_jax {paced_jax.__version__}, tunix {tunix_version}")
  print(f"shape: cpu-student, batch {B}, prompt {PROMPT}, {NEW} new tokens, temperature 1.0, "
        f"top-p 1.0, EOS disabled; median of {args.rounds} after warm-up\n")
  print("| sampler | first call (compile) s | median s | tokens/s | new temperature s |")
  print("|---|---|---|---|---|")
  med = {name: statistics.median(ts) for name, ts in times.items()}
  for name in runners:
    nt = f"{new_temp[name]:.3f}" if name in new_temp else "-"
    print(f"| {name} | {compile_s[name]:.2f} | {med[name]:.3f} | {B * NEW / med[name]:,.0f} | "
          f"{nt} |")
  for other in ("nocache", "tunix"):
    if other in med:
      print(f"\nours / {other} tokens/s: {med[other] / med['ours']:.2f}x")
  if "tunix" in new_temp:
    print(f"new temperature: ours {new_temp['ours']:.3f}s vs tunix {new_temp['tunix']:.3f}s "
          f"({new_temp['tunix'] / new_temp['ours']:.1f}x)")


if __name__ == "__main__":
  main()
