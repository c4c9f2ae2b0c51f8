"""Sampler, GPU (shared/BENCH_SHAPES.md): qwen2.5-0.5b in bf16, random weights, prompt 128,
128 new tokens, batch 64 and 256, EOS disabled. Prints decode ms/step, tokens/s and the fraction
of the memory roofline.

Decode time per step = (time(generate 128 new) - time(generate 1 new)) / 127, which removes
the prefill. Roofline: a decode step must read every weight once (the tied embedding included:
it is the unembedding) and the KV entries of the tokens so far (prompt + t for step t; the mean
over the run is used); divided by the bandwidth of a large on-device copy, that is the fastest
possible step. fraction = roofline step time / measured step time.

  python benchmarks/gpu_sampler.py            # on the GPU machine
  JAX_PLATFORMS=cpu python benchmarks/gpu_sampler.py --tiny   # seconds, checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax.config import MeshConfig
from paced_jax.models import Decoder, get_preset, param_count
from paced_jax.sampler import Knobs, generate
from paced_jax.sharding import make_mesh, shard_init


def copy_bandwidth(n_bytes: int, rounds: int = 5) -> float:
  """Bytes/s of a device-to-device copy (read + write both counted)."""
  x = jnp.ones((n_bytes // 2,), jnp.bfloat16)
  copy = jax.jit(lambda a: a + jnp.bfloat16(1))
  copy(x).block_until_ready()
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    copy(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n_bytes / statistics.median(times)


def timed_generate(model, prompts, new: int, budget: int, mesh, rounds: int) -> float:
  # One budget bucket for the 1-token and the full run: same program, same cache size.
  knobs = Knobs(temperature=1.0, top_p=1.0, max_new_tokens=new)
  run = lambda seed: np.asarray(generate(model, prompts, rng=seed, knobs=knobs, eos_id=None,
                                         mesh=mesh, budget_buckets=(budget,)).tokens_BS)
  run(0)  # compile
  times = []
  for r in range(rounds):
    t0 = time.perf_counter()
    run(r + 1)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny-qwen2 and small shapes (CPU check)")
  ap.add_argument("--batches", type=int, nargs="*", default=None)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args()
  if args.tiny:
    cfg, batches, prompt_len, new, copy_mb = get_preset("tiny-qwen2"), [4, 8], 16, 16, 16
  else:
    cfg, batches, prompt_len, new, copy_mb = get_preset("qwen2.5-0.5b"), [64, 256], 128, 128, 2048
  cfg = dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16")
  batches = args.batches or batches
  dev = jax.devices()[0]
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=[dev])
  model = shard_init(lambda rngs: Decoder(cfg, rngs=rngs), mesh, seed=0)
  n_params = param_count(cfg)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  bw = copy_bandwidth(copy_mb << 20)
  print(f"device: {dev.device_kind} ({dev.platform}); jax {jax.__version__}; model "
        f"{'tiny-qwen2' if args.tiny else 'qwen2.5-0.5b'} bf16, {n_params:,} params, "
        f"{weight_bytes / 2**20:,.0f} MiB; copy bandwidth {bw / 1e9:,.1f} GB/s")
  print(f"prompt {prompt_len}, {new} new tokens, temperature 1.0, EOS disabled, median of "
        f"{args.rounds}\n")
  print("| batch | generate s | decode ms/step | tokens/s (whole call) | decode tokens/s | "
        "roofline ms/step | fraction of roofline |")
  print("|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2  # bf16 K and V
  for B in batches:
    prompts = rng.integers(1, cfg.vocab_size, (B, prompt_len)).tolist()
    t_full = timed_generate(model, prompts, new, new, mesh, args.rounds)
    t_one = timed_generate(model, prompts, 1, new, mesh, args.rounds)
    step_s = max(t_full - t_one, 1e-9) / (new - 1)
    mean_ctx = prompt_len + new / 2
    need_bytes = weight_bytes + B * mean_ctx * kv_per_token
    roof_s = need_bytes / bw
    print(f"| {B} | {t_full:.3f} | {step_s * 1e3:.2f} | {B * new / t_full:,.0f} | "
          f"{B / step_s:,.0f} | {roof_s * 1e3:.2f} | {roof_s / step_s:.2f} |")


if __name__ == "__main__":
  main()
