"""Pass-rate estimation of a student on a pool of problems, and its histogram plots.

    est = estimate_pass_rates(model_or_engine, problems, encode_prompt=tok.encode_prompt,
                              decode=tok.decode, verifier=load_verifier("exact"), rollouts=8,
                              knobs=Knobs(temperature=1.0, max_new_tokens=256), rng=0,
                              mesh=mesh, eos_id=tok.eos_id, pad_id=tok.pad_id, batch_size=64)
    table.update([p.id for p in problems], est.successes, est.trials, step=step)

Rollouts come from one `rollouts.Rollouts` engine (the run's, or one built for a Decoder); a
host thread decodes and verifies group g while the engine samples group g + 1.
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

from paced_jax.config import Config, ConfigError, SampleConfig
from paced_jax.data.schema import Problem
from paced_jax.data.tokenizer import encode_prompt
from paced_jax.distributed import to_host
from paced_jax.models.transformer import Decoder
from paced_jax.rollouts import Engine, Rollouts, RolloutOutput, make_engine
from paced_jax.sampler import Knobs, Sample, Strategy
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


def estimate_pass_rates(engine: Rollouts | Decoder, problems: Sequence[Problem],
                        encode_prompt: Callable[[Problem], list[int]],
                        decode: Callable[[list[int]], str], verifier: Verifier, *,
                        rollouts: int, knobs: Knobs, rng: int | jax.Array,
                        mesh: Mesh | None = None, eos_id: int | Sequence[int] | None,
                        pad_id: int, batch_size: int, strategy: Strategy = Sample(),
                        prompt_buckets: Sequence[int] = SampleConfig.prompt_buckets,
                        budget_buckets: Sequence[int] = SampleConfig.budget_buckets,
                        verify_workers: int = 4, keep_rollouts: bool = True,
                        progress: bool = True, screen: int = 0, desc: str = "estimate"
                        ) -> Estimate:
  """K = `rollouts` samples per problem, each verified; successes and trials per problem.

  engine: any `rollouts.Rollouts` (the run's engine, an external server), or a `Decoder`, for
  which a `rollouts.Engine` with `batch_size` slots is built from `strategy`, `mesh` and the
  buckets (those four arguments are ignored for an engine). Rollouts are requested in groups of
  16 * batch_size rows (a finished rollout's slot takes the next one; fewer drains), and the
  host decodes and verifies group g while the engine samples group g + 1. `decode` receives
  each row's tokens up to and including the stop token; `desc` labels the progress bar.
  Determinism: rollout k of problem i always uses RNG stream
  i * K + k of `rng`, so the draws depend neither on the grouping nor on the engine's slots.

  screen = k0 (0: off): k0 rollouts for every problem, the other K - k0 only where the first
  k0 disagree (0 < s < k0); a unanimous problem keeps trials = k0. Same RNG streams as without
  screening, so a screened-out problem's (s, n) is the first k0 outcomes of its full-K run. The
  stopping rule depends only on observed outcomes, so the Beta posterior of (s, n) (weighting
  "paced_posterior") is exactly the posterior given the data and stays calibrated (the mean
  posterior mean equals the mean true p under the prior). The plug-in s / n is not unbiased:
  E[s/n] - p = (K - k0) / K * (p^k0 (1 - p) - p (1 - p)^k0), zero at p in {0, 1/2, 1};
  tests/test_screening.py checks both by simulation.
  """
  problems = list(problems)
  if not problems:
    raise ConfigError("estimate_pass_rates got an empty problem pool")
  if rollouts < 1:
    raise ConfigError(f"paced.rollouts={rollouts} must be >= 1")
  if batch_size < rollouts:
    raise ConfigError(f"sample.batch_size={batch_size} rows cannot hold the {rollouts} rollouts "
                      "of one problem; raise sample.batch_size or lower paced.rollouts")
  if not 0 <= screen < rollouts:
    raise ConfigError(f"paced.screen_rollouts={screen} must be in [0, paced.rollouts) "
                      "(0 is off)")
  prompts = [list(encode_prompt(p)) for p in problems]
  limit = max(prompt_buckets)
  for p, toks in zip(problems, prompts):
    if not 1 <= len(toks) <= limit:
      raise ConfigError(f"problem {p.id!r} has a prompt of {len(toks)} tokens; prompts need "
                        f"1..{limit} tokens (the largest of sample.prompt_buckets)")
  if isinstance(engine, Decoder):
    engine = Engine(engine, slots=batch_size, strategy=strategy, mesh=mesh,
                    prompt_buckets=prompt_buckets, budget_buckets=budget_buckets)
  elif not callable(getattr(engine, "sample", None)):
    raise ConfigError(f"rollout engine {engine!r} is neither a Decoder nor a Rollouts")
  per_group = max(1, 16 * batch_size // rollouts)  # problems per engine call
  key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
  N = len(problems)
  successes, trials = np.zeros((N,), np.int64), np.zeros((N,), np.int64)
  kept: list[tuple[tuple[int, int], Rollout]] = []
  bar = _progress_bar(N, progress, desc)
  n_tokens, n_prompt, t0 = 0, 0, time.perf_counter()
  flops = 0.0

  def launch(job) -> RolloutOutput:
    idx, lo, hi = job  # rollout k of problem i is stream i * K + k whatever the job
    streams = (idx[:, None] * rollouts + np.arange(lo, hi)[None]).reshape(-1)
    return engine.sample([prompts[i] for i in idx], rollouts=hi - lo, knobs=knobs, rng=key,
                         stop_ids=eos_id, pad_id=pad_id, streams=streams)

  def finish(job, out: RolloutOutput, pool):
    idx, lo, hi = job
    tokens, logprobs = to_host(out.tokens_BS), to_host(out.logprobs_BS)
    lengths = to_host(out.lengths_B)
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
    nonlocal n_tokens, n_prompt, flops
    jobs = [(idx[s:s + per_group], lo, hi) for s in range(0, len(idx), per_group)]
    n_prompt += (hi - lo) * sum(len(prompts[i]) for i in idx)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = None
      for job in jobs:
        out = launch(job)
        flops += out.flops()
        # Job g's verification is queued before job g + 1 is sampled: the host checks while
        # the engine runs.
        toks, fut, extra = finish(job, out, pool)
        if pending is not None:
          collect(*pending)
        pending = (job, fut, extra)
        n_tokens += toks
        bar.set_postfix(tok_s=f"{n_tokens / max(time.perf_counter() - t0, 1e-9):,.0f}",
                        refresh=False)
      collect(*pending)

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
                  prompt_tokens=n_prompt, generated_tokens=n_tokens, flops=flops)


def estimate_for_config(engine: Rollouts | Decoder, problems, tokenizer, verifier, cfg: Config,
                        mesh, *, rollouts: int, rng, knobs: Knobs | None = None,
                        batch_size: int | None = None, progress: bool = False,
                        screen: int = 0, keep_rollouts: bool = False,
                        desc: str = "estimate") -> Estimate:
  """`estimate_pass_rates` with the prompt encoding, stop/pad ids, buckets and workers a run's
  config implies (training refreshes, `paced estimate` and evaluation). `engine`: the run's
  (`rollouts.make_engine`), or a Decoder to sample with a fresh one. `screen`:
  paced.screen_rollouts for pass-rate estimates; evaluation (avg@k) never screens."""
  if isinstance(engine, Decoder):
    engine = make_engine(cfg, engine, mesh, slots=batch_size)
  return estimate_pass_rates(
      engine, problems, lambda p: encode_prompt(tokenizer, p.prompt, cfg.data.chat_template),
      tokenizer.decode, verifier, rollouts=rollouts,
      knobs=Knobs.from_config(cfg.sample) if knobs is None else knobs, rng=rng,
      eos_id=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
      batch_size=cfg.sample.batch_size if batch_size is None else batch_size,
      prompt_buckets=cfg.sample.prompt_buckets, keep_rollouts=keep_rollouts,
      verify_workers=cfg.paced.verify_workers, progress=progress, screen=screen, desc=desc)


def _progress_bar(total: int, enabled: bool, desc: str):
  from tqdm.auto import tqdm

  # leave=None: a bar of its own stays on screen; one under the train bar (a refresh or an
  # evaluation inside the loop) shows its progress there and is cleared when it ends.
  return tqdm(total=total, unit="problem", desc=desc, disable=not enabled,
              dynamic_ncols=True, leave=None)


def plot_frontier(path: str | Path, pass_rates, weights, bins: int = 20,
                  title: str = "", trials=None) -> Path:
  """Writes a PNG with histograms of the pass rates (NaN: unestimated, skipped) and weights.
  Pass rates get one bar per value s/K that `trials` allow (frontier.pass_rate_levels): `bins`
  fixed-width bins would leave empty bands between them. Without `trials`, one bar per
  distinct value (at most frontier.MAX_LEVELS, else `bins` bins)."""
  import matplotlib

  matplotlib.use("Agg")  # no display on TPU VMs and CI
  import matplotlib.pyplot as plt

  from paced_jax.frontier import MAX_LEVELS, level_counts, pass_rate_levels

  p = np.asarray(pass_rates, np.float64)
  w = np.asarray(weights, np.float64)
  fig, (ax_p, ax_w) = plt.subplots(1, 2, figsize=(10, 3.6))
  seen = ~np.isnan(p)
  if trials is not None:
    n = np.where(seen, np.asarray(trials, np.int64), 0)
    levels = pass_rate_levels(n)
    counts = level_counts(np.rint(np.where(seen, p, 0) * n), n, levels)
  else:
    levels = np.unique(p[seen])
    levels = levels if len(levels) <= MAX_LEVELS else None
    counts = None if levels is None else level_counts(p[seen], np.ones(seen.sum()), levels)
  if levels is not None and len(levels):
    gap = np.diff(levels).min() if len(levels) > 1 else 1.0
    ax_p.bar(levels, counts, width=0.8 * gap, color="tab:blue")
    if len(levels) <= 11:
      ax_p.set_xticks(levels, [f"{v:.2g}" for v in levels])
    ax_p.set_xlabel("pass rate p (one bar per value s/K)")
  else:
    ax_p.hist(p[seen], bins=bins, range=(0, 1), color="tab:blue")
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
