"""Rollouts for estimation, GPU: the continuous-batching engine vs today's static sampler on a
long-tailed workload. qwen2.5-0.5b in bf16, random weights (normal * 0.02, `shard_init`).

Workload (per slot count S, default 64 and 256): N = 2 * S / K prompts of 128 random tokens,
K = 8 rollouts each (so 2 slots' worth of rollouts: the engine refills every slot once),
temperature 1.0, budget 1024 new tokens. Response lengths are drawn once (seed 0) from a
lognormal with median 200 and sigma 1.0, clipped to [16, 1024], and enforced exactly as in
benchmarks/bench_rollouts.py: EOS disabled, rollout r stops after L_r tokens (per-rollout
`Knobs.max_new_tokens`). Both systems keep S rows in flight (engine slots = static batch rows).

  engine  paced_jax.rollouts.Engine(slots=S): one prefill wave of all N prompts, then one
          while-loop that refills a slot as soon as its rollout ends, attention bounded by the
          filled length.
  static  static_rollouts.StaticRollouts(rows=S): sampler.generate on S / K prompts per call;
          a call runs until its longest rollout ends, attending over the whole cache buffer.

Per (S, system), after one warm-up call on the same workload (another seed: it compiles every
program the timed calls use; a compile during a timed call is reported), the median of --rounds
timed calls (wall clock of the whole `sample` call, prefill included):
  useful tok/s      sum of the real lengths / wall time
  wasted            decode slot-steps that produced no token of a live rollout / all slot-steps
  ms/step           wall time / decode iterations (each iteration runs every slot)
  KV read/needed    key slots the system's attention read / key slots the rollouts need (the
                    engine reads whole 32-slot blocks up to the longest live slot; the static
                    sampler reads its whole prompt + budget buffer on every row)
  roofline ms/step  the fastest possible decode iteration on this chip: (weight bytes, the tied
                    embedding once + the KV bytes the live rollouts need at that iteration, i.e.
                    the prompt + tokens so far of every busy slot, averaged over the system's
                    iterations) / bandwidth of a large on-device copy (gpu_sampler.copy_bandwidth)
  roofline frac     roofline ms/step / ms/step
  engine/static     static wall / engine wall (= the engine's useful tok/s over static's)

Imports only jax / flax / numpy and this package's config, models, sampler, rollouts and sharding
modules (no grain / tfds / tunix).

  python benchmarks/gpu_rollouts.py                       # on the GPU machine (~2-3 min on an H200)
  JAX_PLATFORMS=cpu python benchmarks/gpu_rollouts.py --tiny   # seconds, checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np
from flax import nnx

from gpu_sampler import copy_bandwidth  # benchmarks/ is on sys.path when run as a script
from paced_jax.config import MeshConfig, SampleConfig
from paced_jax.models import Decoder, get_preset, param_count
from paced_jax.rollouts import Engine
from static_rollouts import StaticRollouts
from paced_jax.sampler import Knobs, pick_bucket
from paced_jax.sharding import make_mesh, shard_init

_compiles = [0]


def _count_compiles(event, *args, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration":
    _compiles[0] += 1


def needed_key_slots(lengths: np.ndarray, prompt: int) -> int:
  """Key slots the rollouts' decode steps must read: token t (t >= 1; token 0 comes from the
  prefill) attends over the prompt and tokens 0..t-1 plus itself, i.e. prompt + t entries."""
  n = lengths.astype(np.int64) - 1
  return int(np.sum(n * prompt + n * (n + 1) // 2))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny-qwen2 and small shapes (CPU check)")
  ap.add_argument("--slots", type=int, nargs="*", default=None, help="64 256 (tiny: 8 16)")
  ap.add_argument("--rounds", type=int, default=1, help="timed calls per system (median)")
  ap.add_argument("--skip-static", action="store_true")
  args = ap.parse_args()
  K = 8
  if args.tiny:
    cfg, slots, prompt_len, budget, median, lo, copy_mb = (get_preset("tiny-qwen2"), [8, 16], 16,
                                                           64, 16, 4, 16)
  else:
    cfg, slots, prompt_len, budget, median, lo, copy_mb = (get_preset("qwen2.5-0.5b"), [64, 256],
                                                           128, 1024, 200, 16, 2048)
  cfg = dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16")
  slots = args.slots or slots
  dev = jax.devices()[0]
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=[dev])
  model = shard_init(lambda rngs: Decoder(cfg, rngs=rngs), mesh, seed=0)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2  # bf16 K and V
  bw = copy_bandwidth(copy_mb << 20)
  P = pick_bucket(prompt_len, SampleConfig.prompt_buckets, "a prompt", "prompt_buckets")
  print(f"device: {dev.device_kind} ({dev.platform}); jax {jax.__version__}; model "
        f"{'tiny-qwen2' if args.tiny else 'qwen2.5-0.5b'} bf16, {param_count(cfg):,} params, "
        f"{weight_bytes / 2**20:,.0f} MiB; copy bandwidth {bw / 1e9:,.1f} GB/s")
  print(f"prompt {prompt_len}, budget {budget}, K={K}, prompts = 2 * slots / K; lengths "
        f"lognormal(median {median}, sigma 1.0) clipped to [{lo}, {budget}], seed 0; temperature "
        f"1.0, EOS disabled; median of {args.rounds} timed call(s) after a warm-up call on the "
        "same workload\n")
  jax.monitoring.register_event_duration_secs_listener(_count_compiles)

  for S in slots:  # one table and one summary line per slot count, printed as soon as it is done
    N = max(1, 2 * S // K)
    rng = np.random.default_rng(0)
    lengths = np.exp(np.log(float(median)) + 1.0 * rng.standard_normal(N * K))
    lengths = np.clip(np.round(lengths), lo, budget).astype(np.int32)
    prompts = np.random.default_rng(1).integers(1, cfg.vocab_size, (N, prompt_len)).tolist()
    need = needed_key_slots(lengths, prompt_len)
    systems = {"engine": Engine(model, slots=S, mesh=mesh)}
    if not args.skip_static:
      systems["static"] = StaticRollouts(model, rows=S, mesh=mesh)
    print(f"slots {S}: {N} prompts x K={K} = {N * K} rollouts, sum of lengths "
          f"{int(lengths.sum()):,}, longest {int(lengths.max())}\n")
    print("| slots | system | warm-up s | wall s | useful tok/s | decode steps | wasted | ms/step "
          "| KV read/needed | roofline ms/step | roofline frac |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    tok_s = {}
    for name, system in systems.items():
      run = lambda seed: system.sample(prompts, rollouts=K, rng=seed, stop_ids=None,
                                       knobs=Knobs(temperature=1.0, max_new_tokens=lengths))
      t0 = time.perf_counter()
      run(0)  # compiles every program and every output slice the timed calls use
      warm_s = time.perf_counter() - t0
      times, compiles = [], _compiles[0]
      for r in range(args.rounds):
        t0 = time.perf_counter()
        out = run(r + 1)
        times.append(time.perf_counter() - t0)
      recompiled = _compiles[0] - compiles
      assert np.array_equal(out.lengths_B, lengths), "a rollout's length is not its budget"
      wall = statistics.median(times)
      step_s = wall / max(out.steps, 1)
      if name == "engine":
        read = out.slot_attended or out.slots * out.attended
      else:  # every row of a call reads its whole prompt bucket + budget bucket buffer
        read = sum(out.slots * (int(c.max()) - 1)
                   * (P + pick_bucket(int(c.max()), SampleConfig.budget_buckets, "a length",
                                      "budget_buckets"))
                   for c in np.split(lengths, range(out.slots, len(lengths), out.slots)))
      roof_s = (weight_bytes + need / max(out.steps, 1) * kv_per_token) / bw
      tok_s[name] = lengths.sum() / wall
      frac = roof_s / step_s
      if name == "engine":
        engine_frac = frac
      print(f"| {S} | {name} | {warm_s:.1f} | {wall:.2f} | {tok_s[name]:,.0f} | {out.steps:,} | "
            f"{out.wasted_fraction:.0%} | {step_s * 1e3:.2f} | {read / need:.2f} | "
            f"{roof_s * 1e3:.3f} | {frac:.2f} |", flush=True)
      if recompiled:
        print(f"WARNING: {recompiled} compile(s) during the timed call(s) of {name}")
    ratio = (f", engine/static {tok_s['engine'] / tok_s['static']:.2f}x" if "static" in tok_s
             else "")
    print(f"\nrollouts slots={S}: engine {tok_s['engine']:,.0f} useful tok/s, roofline fraction "
          f"{engine_frac:.2f}{ratio}\n", flush=True)


if __name__ == "__main__":
  main()
