"""Pass-rate estimation of a student on a pool of problems, and its histogram plots.

    est = estimate_pass_rates(model, problems, encode_prompt=tok.encode_prompt, decode=tok.decode,
                              verifier=load_verifier("exact"), rollouts=8,
                              knobs=Knobs(temperature=1.0, max_new_tokens=256), rng=0,
                              mesh=mesh, eos_id=tok.eos_id, pad_id=tok.pad_id, batch_size=64)
    table.update([p.id for p in problems], est.successes, est.trials, step=step)

The device samples batch i+1 while a host thread pool decodes and verifies batch i; every batch
has the same row count (the last one is padded), so the whole pool runs on one compiled program
per prompt bucket.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from paced_jax.config import ConfigError, SampleConfig
from paced_jax.data.schema import Problem
from paced_jax.flops import output_flops
from paced_jax.models.transformer import Decoder
from paced_jax.rollouts import Engine, Rollouts, RolloutOutput
from paced_jax.sampler import Knobs, Sample, Strategy, SampleOutput, generate
from paced_jax.distributed import to_host
from paced_jax.verify import Verifier, verify_batch


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One verified student response; kept so it can serve as on-policy training data."""

  problem_id: str
  index: int  # k in 0..K-1
  tokens: np.ndarray  # int32 generated tokens, stop token included, no padding
  logprobs: np.ndarray  # float32 sampling log-probs of `tokens`
  text: str
  correct: bool


class Estimate(NamedTuple):
  successes: np.ndarray  # int64 [N]
  trials: np.ndarray  # int64 [N], = K for every problem
  rollouts: list[Rollout]  # N * K, problem-major; empty when keep_rollouts=False
  prompt_tokens: int = 0  # summed over the N * K rows
  generated_tokens: int = 0
  flops: float = 0.0  # what the sampler computed (flops.generate_flops, padding included)


def estimate_pass_rates(model: Decoder, problems: Sequence[Problem],
                        encode_prompt: Callable[[Problem], list[int]],
                        decode: Callable[[list[int]], str], verifier: Verifier, *,
                        rollouts: int, knobs: Knobs, rng: int | jax.Array,
                        mesh: Mesh | None = None, eos_id: int | Sequence[int] | None,
                        pad_id: int, batch_size: int, strategy: Strategy = Sample(),
                        prompt_buckets: Sequence[int] = SampleConfig.prompt_buckets,
                        budget_buckets: Sequence[int] = SampleConfig.budget_buckets,
                        verify_workers: int = 4, keep_rollouts: bool = True,
                        progress: bool = True, engine: str | Rollouts = "static") -> Estimate:
  """K = `rollouts` samples per problem, each verified; successes and trials per problem.

  `batch_size` counts rows (problems x K) per generate call. `decode` receives each row's
  tokens up to and including the stop token. Determinism: row k of problem i always uses RNG
  stream i * K + k of `rng`, so the draws do not depend on the batch size (up to float rounding
  when a batch lands in a different prompt bucket).

  engine: "static" (sampler.generate, `batch_size` rows per call), "continuous"
  (rollouts.Engine with `batch_size` slots, fed groups of 16 slots' worth of rollouts: a
  finished rollout's slot takes the next one) or any `rollouts.Rollouts` implementation. The
  draws are the same rollouts either way; `flops` counts what the chosen engine computed.
  """
  problems = list(problems)
  if not problems:
    raise ConfigError("estimate_pass_rates got an empty problem pool")
  if rollouts < 1:
    raise ConfigError(f"paced.rollouts={rollouts} must be >= 1")
  if batch_size < rollouts:
    raise ConfigError(f"sample.batch_size={batch_size} rows cannot hold the {rollouts} rollouts "
                      "of one problem; raise sample.batch_size or lower paced.rollouts")
  prompts = [list(encode_prompt(p)) for p in problems]
  limit = max(prompt_buckets)
  for p, toks in zip(problems, prompts):
    if not 1 <= len(toks) <= limit:
      raise ConfigError(f"problem {p.id!r} has a prompt of {len(toks)} tokens; prompts need "
                        f"1..{limit} tokens (the largest of sample.prompt_buckets)")
  per_batch = batch_size // rollouts
  if engine == "continuous":
    engine = Engine(model, slots=batch_size, strategy=strategy, mesh=mesh,
                    prompt_buckets=prompt_buckets, budget_buckets=budget_buckets)
  elif engine != "static" and not hasattr(engine, "sample"):
    raise ConfigError(f"rollout engine {engine!r} is not 'static', 'continuous' or a Rollouts")
  if engine != "static":  # one call per group: more rollouts per call, less drain at its end
    per_batch = max(per_batch, 16 * batch_size // rollouts)
  rows = per_batch * rollouts
  key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
  N = len(problems)
  successes = np.zeros((N,), np.int64)
  kept: list[Rollout] = []
  bar = _progress_bar(N, progress)
  n_tokens, t0 = 0, time.perf_counter()
  flops = [0.0]

  def launch(start: int) -> SampleOutput | RolloutOutput:
    if engine != "static":
      return engine.sample(prompts[start:start + per_batch], rollouts=rollouts, knobs=knobs,
                           rng=key, stop_ids=eos_id, pad_id=pad_id, row_offset=start * rollouts)
    return generate(model, prompts[start:start + per_batch], rng=key, knobs=knobs,
                    eos_id=eos_id, pad_id=pad_id, mesh=mesh, rollouts=rollouts,
                    strategy=strategy, prompt_buckets=prompt_buckets,
                    budget_buckets=budget_buckets, pad_rows_to=rows, row_offset=start * rollouts)

  def finish(start: int, out, pool) -> tuple[int, concurrent.futures.Future, list]:
    tokens, logprobs = to_host(out.tokens_BS), to_host(out.logprobs_BS)
    lengths = to_host(out.lengths_B)
    flops[0] += (out.flops(model.cfg) if isinstance(out, RolloutOutput)
                 else output_flops(model.cfg, out))
    batch = problems[start:start + per_batch]
    texts = [decode(tokens[r, :lengths[r]].tolist()) for r in range(len(lengths))]
    owners = [p for p in batch for _ in range(rollouts)]
    fut = pool.submit(verify_batch, texts, owners, verifier, max_workers=verify_workers)
    extra = (tokens, logprobs, lengths, texts) if keep_rollouts else None
    return int(lengths.sum()), fut, extra

  def collect(start: int, fut, extra) -> None:
    correct = fut.result()
    batch = problems[start:start + per_batch]
    successes[start:start + len(batch)] = correct.reshape(len(batch), rollouts).sum(1)
    if extra is not None:
      tokens, logprobs, lengths, texts = extra
      for r, ok in enumerate(correct):
        kept.append(Rollout(batch[r // rollouts].id, r % rollouts, tokens[r, :lengths[r]].copy(),
                            logprobs[r, :lengths[r]].copy(), texts[r], bool(ok)))
    bar.update(len(batch))

  starts = list(range(0, N, per_batch))
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending_out = launch(starts[0])  # dispatch is asynchronous
    pending_verify = None
    for i, start in enumerate(starts):
      out = pending_out
      # Host work on batch i (readback, decode, verification) overlaps device work on batch i+1.
      pending_out = launch(starts[i + 1]) if i + 1 < len(starts) else None
      toks, fut, extra = finish(start, out, pool)
      if pending_verify is not None:
        collect(*pending_verify)
      pending_verify = (start, fut, extra)
      n_tokens += toks
      dt = max(time.perf_counter() - t0, 1e-9)
      bar.set_postfix(tok_s=f"{n_tokens / dt:,.0f}", refresh=False)
    collect(*pending_verify)
  bar.close()
  return Estimate(successes=successes, trials=np.full((N,), rollouts, np.int64), rollouts=kept,
                  prompt_tokens=rollouts * sum(len(p) for p in prompts),
                  generated_tokens=n_tokens, flops=flops[0])


def _progress_bar(total: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, unit="problem", desc="estimate", disable=not enabled,
              dynamic_ncols=True)


def plot_frontier(path: str | Path, pass_rates, weights, bins: int = 20,
                  title: str = "") -> Path:
  """Writes a PNG with histograms of the pass rates (NaN: unestimated, skipped) and weights."""
  import matplotlib

  matplotlib.use("Agg")  # no display on TPU VMs and CI
  import matplotlib.pyplot as plt

  p = np.asarray(pass_rates, np.float64)
  w = np.asarray(weights, np.float64)
  fig, (ax_p, ax_w) = plt.subplots(1, 2, figsize=(10, 3.6))
  ax_p.hist(p[~np.isnan(p)], bins=bins, range=(0, 1), color="tab:blue")
  ax_p.set_xlabel("pass rate p")
  ax_p.set_ylabel("problems")
  ax_p.set_title(f"pass rates ({int(np.sum(~np.isnan(p)))} of {p.size} estimated)")
  ax_w.hist(w, bins=bins, color="tab:orange")
  ax_w.set_xlabel("frontier weight w")
  ax_w.set_title("weights")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
