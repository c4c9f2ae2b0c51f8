"""Data pipeline throughput next to the CPU training step it feeds.

  JAX_PLATFORMS=cpu python benchmarks/bench_data.py [--batches 300] [--out FILE]

Measures, in one process:
  1. a JSONL pool of 100k problems written here: load + validate time, tokenise (build_pool)
     time, then examples/s of the frontier pipeline with new sampling probabilities every
     `--refresh` batches (set_round each time, as the trainer does);
  2. the built-in synthetic suite, char-tokenised, same measurement;
  3. a plain jitted forward + backward (cross-entropy) of the cpu-student Decoder at batch
     8 x 128 -- the stand-in for a CPU training step -- and the pipeline's time per batch of 8
     as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def _write_pool(path: str, n: int, rng: np.random.Generator) -> None:
  with open(path, "w") as f:
    for i in range(n):
      a, b = (int(x) for x in rng.integers(10, 10_000, 2))
      f.write(json.dumps({"id": f"q{i}", "question": f"Compute {a} * {b} and explain.",
                          "final": str(a * b), "level": int(rng.integers(1, 6)),
                          "steps": f"{a} * {b} = {a * b}.\n" * int(rng.integers(1, 4))
                          + f"#### {a * b}"}) + "\n")


def _throughput(pipe, n_batches: int, refresh: int, rng) -> float:
  N = len(pipe)
  pipe.set_round(0, rng.uniform(0, 1, N))
  next(pipe)  # start the prefetch thread
  t0 = time.perf_counter()
  examples = 0
  for k in range(n_batches):
    if k and k % refresh == 0:  # new frontier weights: a new round
      probs = rng.uniform(0, 1, N) * (rng.uniform(0, 1, N) > 0.3)
      pipe.set_round(k // refresh, probs)
    examples += len(next(pipe)["index"])
  return examples / (time.perf_counter() - t0)


def _train_step_time(batch: int, seq: int, reps: int) -> float:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from paced_jax.models import Decoder, get_preset

  cfg = get_preset("cpu-student")
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(0), (batch, seq), 0, cfg.vocab_size)

  @jax.jit
  def step(params, tokens):
    def loss(p):
      logits = nnx.merge(graphdef, p)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return jax.value_and_grad(loss)(params)

  jax.block_until_ready(step(params, tokens))
  jax.block_until_ready(step(params, tokens))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, tokens))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--problems", type=int, default=100_000)
  ap.add_argument("--batches", type=int, default=300)
  ap.add_argument("--refresh", type=int, default=50)
  ap.add_argument("--out", default="")
  args = ap.parse_args()

  import jax

  import grain
  from paced_jax.config import DataConfig
  from paced_jax.data import CharTokenizer, FrontierPipeline, build_pool, load_pool

  rng = np.random.default_rng(0)
  tok = CharTokenizer()
  lines = []
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "pool.jsonl")
    _write_pool(path, args.problems, rng)
    base = DataConfig(source="jsonl", path=path, length_buckets=(64, 128, 256),
                      field_map=("prompt=question", "answer=final", "difficulty=level",
                                 "solution=steps"))
    t0 = time.perf_counter()
    src = load_pool(base)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = build_pool(src, tok, base)
    t_tok = time.perf_counter() - t0
    lines.append(f"JSONL pool, {len(src):,} problems: load+validate {t_load:.2f} s, "
                 f"char-tokenise {t_tok:.2f} s")
    for bs in (8, 64):
      cfg = DataConfig(**{**base.__dict__, "batch_size": bs})
      pipe = FrontierPipeline(src, tok, cfg, pool=pool)
      eps = _throughput(pipe, args.batches, args.refresh, rng)
      pipe.close()
      lines.append(f"JSONL pool, batch {bs}, set_round every {args.refresh} batches: "
                   f"{eps:,.0f} examples/s")
      if bs == 8:
        per_batch_8 = 8 / eps

  syn_cfg = DataConfig(source="synthetic", synthetic_size=20_000, batch_size=8)
  t0 = time.perf_counter()
  syn = load_pool(syn_cfg)
  syn_pool = build_pool(syn, tok, syn_cfg)
  t_syn = time.perf_counter() - t0
  pipe = FrontierPipeline(syn, tok, syn_cfg, pool=syn_pool)
  syn_eps = _throughput(pipe, args.batches, args.refresh, rng)
  pipe.close()
  lines.append(f"synthetic suite, {len(syn):,} problems (built + tokenised in {t_syn:.2f} s), "
               f"batch 8: {syn_eps:,.0f} examples/s")

  step = _train_step_time(8, 128, reps=10)
  lines.append(f"cpu-student forward+backward, batch 8 x 128 (jit, median of 10): "
               f"{step * 1e3:.1f} ms/step = {8 / step:,.0f} examples/s")
  lines.append(f"pipeline time per batch of 8 (JSONL pool) / train step time: "
               f"{per_batch_8 / step:.3%}")

  header = (f"machine: {platform.machine()} {os.cpu_count()} cores; python "
            f"{platform.python_version()}, jax {jax.__version__}, grain "
            f"{getattr(grain, '__version__', '?')}, numpy {np.__version__}; "
            f"{time.strftime('%Y-%m-%d')}")
  text = "\n".join([header] + [f"- {l}" for l in lines])
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
