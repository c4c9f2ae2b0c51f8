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
import contextlib
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
from paced_jax.frontier import posterior_weight_sd
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
  trials: np.ndarray  # int64 [N], = K for every problem (fewer where screening/adaptive stopped)
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
                        progress: bool = True, screen: int = 0, adaptive: int = 0,
                        adaptive_sd: float = 0.07,
                        kernel: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                        split: bool = False, prior=None,
                        desc: str = "estimate") -> Estimate:
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

  adaptive = k0 (0: off; not with `screen`): rollouts in stages of k0 (the last one shorter if
  k0 does not divide K); after each stage a problem stops once the posterior sd of its frontier
  weight is below `adaptive_sd`: sd[w(p)] < adaptive_sd for w(p) = p^alpha (1-p)^beta and
  p ~ Beta(s + a0, n - s + b0), (alpha, beta, a0, b0) = `kernel` (frontier.posterior_weight_sd).
  It stops where more rollouts would hardly move the weight: in the middle, where w is flat
  (1 of 2 right: sd 0.053 at the defaults), and unanimous problems once n is large enough to
  pin w near 0 (6 of 6 wrong: sd 0.068 < 0.07; 2 of 2: 0.078 goes on). Same RNG streams as
  full K, and the rule reads only observed outcomes, so the posterior stays calibrated as
  under screening; benchmarks/adaptive_k.py measures the plug-in bias of E[w] and the rollouts
  spent at fixed p (at p = 0.1, K = 8, k0 = 2: E[w] = 0.095 against w = 0.090, 4.9 rollouts;
  screening k0 = 3: 0.041, 4.4 rollouts).

  prior = (s0, n0) (adaptive only; None: zeros): per problem, the evidence the table already
  holds and will merge this estimate into (paced.merge=decay: the discounted counts g^(t -
  t_last) s, g^(t - t_last) n; accumulate: s, n). The stopping rule then reads the posterior the
  merged weight will have, Beta(s0 + s + a0, n0 + n - s + b0): a problem whose old evidence
  already pins its weight stops after the first stage. Still a rule on observed outcomes only,
  so the merged posterior stays calibrated; the returned counts are the new rollouts' alone.

  split (paced.reuse_split): successes and trials count only the rollouts with even k, and the
  stopping rules read only those (screening: the even ones among the first k0, so k0 >= 3);
  the odd ones are sampled and returned in `rollouts` all the same, to be reused as training
  rows whose outcomes decided neither the weight nor how many of them there are.
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
  if not 0 <= adaptive < rollouts or (adaptive and screen):
    raise ConfigError(f"paced.adaptive_rollouts={adaptive} must be in [0, paced.rollouts) "
                      "(0 is off) and 0 with paced.screen_rollouts")
  if prior is not None:
    if not adaptive:
      raise ConfigError("estimate_pass_rates(prior=...) is read by the adaptive rule only")
    s0, n0 = (np.asarray(x, np.float64) for x in prior)
    if s0.shape != (len(problems),) or n0.shape != s0.shape:
      raise ValueError(f"prior needs one (successes, trials) pair per problem: got {s0.shape}, "
                       f"{n0.shape} for {len(problems)} problems")
  if split and 0 < screen < 3:
    raise ConfigError(f"paced.screen_rollouts={screen} with paced.reuse_split reads the even "
                      "rollouts among the first k0 only: k0 must be >= 3 (two of them)")
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
    counted = np.ones(hi - lo, bool) if not split else np.arange(lo, hi) % 2 == 0
    successes[idx] += (correct.reshape(len(idx), hi - lo) & counted).sum(1)
    trials[idx] += int(counted.sum())
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
    # About 16 x batch_size rows per engine call whatever the stage's width, so a stage of k0 <
    # K rollouts fills the engine's slots as a full-K call does (its tail, the last rows
    # finishing while the other slots idle, is paid once per call).
    per_call = max(1, 16 * batch_size // (hi - lo))
    jobs = [(idx[s:s + per_call], lo, hi) for s in range(0, len(idx), per_call)]
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
  # Stages sample the same prompts in several engine calls: an engine with a prompt cache
  # (rollouts.Engine.prompt_cache) prefills each once.
  keep = getattr(engine, "prompt_cache", None)
  with keep() if callable(keep) and (adaptive or screen) else contextlib.nullcontext():
    if adaptive:  # stages of k0 until the weight's posterior is settled (see the docstring)
      live = everyone
      for lo in range(0, rollouts, adaptive):
        hi = min(lo + adaptive, rollouts)
        run(live, lo, hi)
        if hi < rollouts:
          s_all, n_all = successes[live].astype(np.float64), trials[live].astype(np.float64)
          if prior is not None:
            s_all, n_all = s_all + s0[live], n_all + n0[live]
          go = posterior_weight_sd(s_all, n_all, *kernel) >= adaptive_sd
          bar.update(int((~go).sum()))
          live = live[go]
          if not len(live):
            break
    elif not screen:
      run(everyone, 0, rollouts)
    else:  # k0 rollouts for all; the rest where the first k0 disagree (see the docstring)
      run(everyone, 0, screen)
      undecided = everyone[(successes > 0) & (successes < trials)]
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
                        screen: int = 0, adaptive: int = 0, keep_rollouts: bool = False,
                        split: bool = False, prior=None,
                        desc: str = "estimate") -> Estimate:
  """`estimate_pass_rates` with the prompt encoding, stop/pad ids, buckets and workers a run's
  config implies (training refreshes, `paced estimate` and evaluation). `engine`: the run's
  (`rollouts.make_engine`), or a Decoder to sample with a fresh one. `screen`, `adaptive`:
  paced.screen_rollouts, paced.adaptive_rollouts for pass-rate estimates (the adaptive rule's
  threshold, kernel and Beta prior from cfg.paced; `prior`: the table's counts the estimate
  merges into, see `estimate_pass_rates`); evaluation (avg@k) never stops early."""
  if isinstance(engine, Decoder):
    engine = make_engine(cfg, engine, mesh, slots=batch_size)
  return estimate_pass_rates(
      engine, problems, lambda p: encode_prompt(tokenizer, p.prompt, cfg.data.chat_template),
      tokenizer.decode, verifier, rollouts=rollouts,
      knobs=Knobs.from_config(cfg.sample) if knobs is None else knobs, rng=rng,
      eos_id=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
      batch_size=cfg.sample.batch_size if batch_size is None else batch_size,
      prompt_buckets=cfg.sample.prompt_buckets, keep_rollouts=keep_rollouts,
      verify_workers=cfg.paced.verify_workers, progress=progress, screen=screen,
      adaptive=adaptive, adaptive_sd=cfg.paced.adaptive_sd, split=split, prior=prior,
      kernel=(cfg.paced.alpha, cfg.paced.beta, cfg.paced.prior_a0, cfg.paced.prior_b0),
      desc=desc)


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
