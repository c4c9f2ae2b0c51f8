"""Evaluation: accuracy avg@k per difficulty bucket, and forgetting on a mastered probe set.

avg@k of a problem is the fraction of k sampled responses that verify; a split's accuracy is
the mean over its problems, reported overall and per `Problem.difficulty`. Forgetting is the
probe split's accuracy before distillation minus after (positive = forgot).
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import numpy as np

from paced_jax.config import Config
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import encode_prompt
from paced_jax.estimate import estimate_pass_rates
from paced_jax.sampler import Knobs, Sample


@dataclasses.dataclass
class EvalSet:
  name: str  # "test" or "probe"
  problems: list


def load_eval_sets(cfg: Config, splits=("test", "probe")) -> list[EvalSet]:
  """The held-out splits, each capped at `eval.max_problems` (evenly strided, so every
  difficulty stays represented when the split is ordered by difficulty)."""
  out = []
  for split in splits:
    try:
      source = load_pool(cfg.data, split, seed=cfg.seed)
    except Exception as e:  # a pool without that split (e.g. a single JSONL file)
      if split == "test":
        raise
      del e
      continue
    n = len(source)
    idx = np.linspace(0, n - 1, min(n, cfg.eval.max_problems)).round().astype(int)
    out.append(EvalSet(split, [source[int(i)] for i in np.unique(idx)]))
  return out


def estimate_for_config(model, problems, tokenizer, verifier, cfg: Config, mesh, *,
                        rollouts: int, rng, knobs: Knobs | None = None,
                        batch_size: int | None = None, progress: bool = False):
  """`estimate_pass_rates` with the prompt encoding, stop/pad ids, buckets and workers a run's
  config implies (shared by training refreshes, `paced estimate` and evaluation)."""
  return estimate_pass_rates(
      model, problems, lambda p: encode_prompt(tokenizer, p.prompt, cfg.data.chat_template),
      tokenizer.decode, verifier, rollouts=rollouts, engine="continuous",
      knobs=Knobs.from_config(cfg.sample) if knobs is None else knobs, rng=rng, mesh=mesh,
      eos_id=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
      batch_size=cfg.sample.batch_size if batch_size is None else batch_size,
      prompt_buckets=cfg.sample.prompt_buckets, budget_buckets=cfg.sample.budget_buckets,
      keep_rollouts=False, verify_workers=cfg.paced.verify_workers, progress=progress,
      strategy=Sample(cfg.loss.vocab_limit))  # padding ids (loss.vocab_limit) never drawn


def accuracy(model, problems, tokenizer, verifier, cfg: Config, mesh, *, rng: int = 0,
             progress: bool = False) -> dict[str, float]:
  """{"overall": acc, "level_1": acc, ...} with acc = mean avg@k (k = eval.samples)."""
  knobs = dataclasses.replace(Knobs.from_config(cfg.sample), temperature=cfg.eval.temperature)
  est = estimate_for_config(model, problems, tokenizer, verifier, cfg, mesh,
                            rollouts=cfg.eval.samples, knobs=knobs, rng=jax.random.key(rng),
                            batch_size=max(cfg.sample.batch_size, cfg.eval.samples),
                            progress=progress)
  per = est.successes / np.maximum(est.trials, 1)
  out = {"overall": float(per.mean())}
  groups = collections.defaultdict(list)
  for p, a in zip(problems, per):
    if p.difficulty is not None:
      groups[int(p.difficulty)].append(a)
  for level in sorted(groups):
    out[f"level_{level}"] = float(np.mean(groups[level]))
  return out


def evaluate(model, eval_sets, tokenizer, verifier, cfg: Config, mesh, *,
             progress: bool = False) -> dict[str, float]:
  """Flat metrics `eval/<split>/<bucket>` for every eval set."""
  metrics = {}
  for es in eval_sets:
    acc = accuracy(model, es.problems, tokenizer, verifier, cfg, mesh, rng=cfg.seed + 17,
                   progress=progress)
    metrics.update({f"eval/{es.name}/{k}": v for k, v in acc.items()})
  return metrics


def summary_table(before: dict, after: dict) -> str:
  """A plain-text table of accuracy per bucket before and after, and forgetting."""
  keys = sorted({k for k in list(before) + list(after) if k.startswith("eval/")},
                key=lambda k: (k.split("/")[1], k.split("/")[2] != "overall", k))
  lines = [f"{'split/bucket':<24}{'before':>10}{'after':>10}{'change':>10}"]
  for k in keys:
    b, a = before.get(k, float("nan")), after.get(k, float("nan"))
    lines.append(f"{k[5:]:<24}{b:>10.3f}{a:>10.3f}{a - b:>+10.3f}")
  if "eval/probe/overall" in before and "eval/probe/overall" in after:
    lines.append(f"forgetting on the mastered probe: "
                 f"{before['eval/probe/overall'] - after['eval/probe/overall']:+.3f}")
  return "\n".join(lines)
