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
  trials: np.ndarray  # int64 [N], = K for every problem (k0 where screening stopped early)
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
                        progress: bool = True, engine: str | Rollouts = "static",
                        screen: int = 0) -> Estimate:
  """K = `rollouts` samples per problem, each verified; successes and trials per problem.

  `batch_size` counts rows (problems x K) per generate call. `decode` receives each row's
  tokens up to and including the stop token. Determinism: row k of problem i always uses RNG
  stream i * K + k of `rng`, so the draws do not depend on the batch size (up to float rounding
  when a batch lands in a different prompt bucket).

  engine: "static" (sampler.generate, `batch_size` rows per call), "continuous"
  (rollouts.Engine with `batch_size` slots, fed groups of 16 slots' worth of rollouts: a
  finished rollout's slot takes the next one) or any `rollouts.Rollouts` implementation. The
  draws are the same rollouts either way; `flops` counts what the chosen engine computed.

  screen = k0 (0: off; needs an engine other than "static"): k0 rollouts for every problem,
  the other K - k0 only where the first k0 disagree (0 < s < k0); a unanimous problem keeps
  trials = k0. Same RNG streams as without screening, so a screened-out problem's (s, n) is the
  first k0 outcomes of its full-K run. The stopping rule depends only on observed outcomes, so
  the Beta posterior of (s, n) (weighting "paced_posterior") is exactly the posterior given
  the data and stays calibrated (the mean posterior mean equals the mean true p under the
  prior). The plug-in s / n is not unbiased: E[s/n] - p = (K - k0) / K * (p^k0 (1 - p) -
  p (1 - p)^k0), zero at p in {0, 1/2, 1}; tests/test_screening.py checks both by simulation.
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
  if not 0 <= screen < rollouts:
    raise ConfigError(f"paced.screen_rollouts={screen} must be in [0, paced.rollouts) "
                      "(0 is off)")
  if screen and engine == "static":
    raise ConfigError("screening (screen_rollouts > 0) needs the continuous rollout engine")
  if engine != "static":  # one call per group: more rollouts per call, less drain at its end
    per_batch = max(per_batch, 16 * batch_size // rollouts)
  rows = per_batch * rollouts
  key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
  N = len(problems)
  successes, trials = np.zeros((N,), np.int64), np.zeros((N,), np.int64)
  kept: list[tuple[tuple[int, int], Rollout]] = []
  bar = _progress_bar(N, progress)
  n_tokens, n_prompt, t0 = 0, 0, time.perf_counter()
  flops = [0.0]

  def launch(job) -> SampleOutput | RolloutOutput:
    idx, lo, hi = job
    if engine != "static":  # rollout k of problem i is stream i * K + k whatever the job
      streams = (idx[:, None] * rollouts + np.arange(lo, hi)[None]).reshape(-1)
      return engine.sample([prompts[i] for i in idx], rollouts=hi - lo, knobs=knobs, rng=key,
                           stop_ids=eos_id, pad_id=pad_id, streams=streams)
    return generate(model, [prompts[i] for i in idx], rng=key, knobs=knobs,
                    eos_id=eos_id, pad_id=pad_id, mesh=mesh, rollouts=rollouts,
                    strategy=strategy, prompt_buckets=prompt_buckets,
                    budget_buckets=budget_buckets, pad_rows_to=rows,
                    row_offset=int(idx[0]) * rollouts)

  def finish(job, out, pool) -> tuple[int, concurrent.futures.Future, list]:
    idx, lo, hi = job
    tokens, logprobs = to_host(out.tokens_BS), to_host(out.logprobs_BS)
    lengths = to_host(out.lengths_B)
    flops[0] += (out.flops(model.cfg) if isinstance(out, RolloutOutput)
                 else output_flops(model.cfg, out))
    texts = [decode(tokens[r, :lengths[r]].tolist()) for r in range(len(lengths))]
    owners = [problems[i] for i in idx for _ in range(hi - lo)]
    fut = pool.submit(verify_batch, texts, owners, verifier, max_workers=verify_workers)
    extra = (tokens, logprobs, lengths, texts) if keep_rollouts else None
    return int(lengths.sum()), fut, extra

  def collect(job, fut, extra) -> None:
    idx, lo, hi = job
    correct = fut.result()
    successes[idx] += correct.reshape(len(idx), hi - lo).sum(1)
    trials[idx] += hi - lo
    if extra is not None:
      tokens, logprobs, lengths, texts = extra
      for r, ok in enumerate(correct):
        i, k = idx[r // (hi - lo)], lo + r % (hi - lo)
        kept.append(((i, k), Rollout(problems[i].id, k, tokens[r, :lengths[r]].copy(),
                                     logprobs[r, :lengths[r]].copy(), texts[r], bool(ok))))
    if hi == rollouts:
      bar.update(len(idx))

  def run(idx, lo, hi) -> None:
    nonlocal n_tokens, n_prompt
    jobs = [(idx[s:s + per_batch], lo, hi) for s in range(0, len(idx), per_batch)]
    n_prompt += (hi - lo) * sum(len(prompts[i]) for i in idx)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending_out = launch(jobs[0])  # dispatch is asynchronous
      pending_verify = None
      for i, job in enumerate(jobs):
        out = pending_out
        # Host work on job i (readback, decode, verification) overlaps device work on job i+1:
        # generate() dispatches asynchronously, Engine.sample returns when done (so job i's
        # verification is queued first).
        nxt = (lambda i=i: launch(jobs[i + 1]) if i + 1 < len(jobs) else None)
        if engine == "static":
          pending_out = nxt()
        toks, fut, extra = finish(job, out, pool)
        if engine != "static":
          pending_out = nxt()
        if pending_verify is not None:
          collect(*pending_verify)
        pending_verify = (job, fut, extra)
        n_tokens += toks
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(tok_s=f"{n_tokens / dt:,.0f}", refresh=False)
      collect(*pending_verify)

  everyone = np.arange(N)
  if not screen:
    run(everyone, 0, rollouts)
  else:  # k0 rollouts for all; the rest where the first k0 disagree (see the docstring)
    run(everyone, 0, screen)
    undecided = everyone[(successes > 0) & (successes < screen)]
    bar.update(N - len(undecided))
    if len(undecided):
      run(undecided, screen, rollouts)
  bar.close()
  kept.sort(key=lambda x: x[0])  # problem-major, k within a problem
  return Estimate(successes=successes, trials=trials, rollouts=[r for _, r in kept],
                  prompt_tokens=n_prompt,
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
