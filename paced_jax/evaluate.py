"""Evaluation: accuracy avg@k per difficulty bucket, and forgetting on a mastered probe set.

avg@k of a problem is the fraction of k sampled responses that verify; a split's accuracy is
the mean over its problems, reported overall and per `Problem.difficulty`. Forgetting is the
probe split's accuracy before distillation minus after (positive = forgot).
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import jax
import numpy as np

from paced_jax.config import Config
from paced_jax.data.sources import has_split, load_pool
from paced_jax.estimate import estimate_for_config
from paced_jax.sampler import Knobs

log = logging.getLogger("paced_jax.eval")


@dataclasses.dataclass
class EvalSet:
  name: str  # "test" or "probe"
  problems: list
  contaminated: int = 0  # problems whose id or prompt is also in the training pool


def eval_off_reason(cfg: Config) -> str | None:
  """Why a run has no evaluation (one line), or None when it has a held-out set."""
  if cfg.eval.max_problems <= 0:
    return "eval.max_problems=0"
  if cfg.generate.source:
    return None if cfg.generate.heldout_per_cell else "generate.heldout_per_cell=0"
  if not has_split(cfg.data, "test") and not has_split(cfg.data, "probe"):
    what = ("data.tfds_eval_split / data.tfds_probe_split" if cfg.data.source == "tfds" else
            "data.eval_path / data.probe_path")
    return f"no held-out set: set {what} (problems not in the training pool)"
  return None


def load_eval_sets(cfg: Config, splits=("test", "probe"), train=None) -> list[EvalSet]:
  """The held-out splits the config names (`data.eval_path`, `data.probe_path`, the TFDS split
  settings, the synthetic suite's own), each capped at `eval.max_problems` (evenly strided, so
  every difficulty stays represented when the split is ordered by difficulty). With `train`
  (the training problems), problems whose id or prompt is also in it are counted
  (`EvalSet.contaminated`) and a warning line says so."""
  out = []
  for split in splits:
    if cfg.generate.source:  # generated runs: held-out problems of every cell
      from paced_jax.synthesis import heldout_problems, make_generator

      source = heldout_problems(make_generator(cfg.generate), cfg, split)
    elif not has_split(cfg.data, split):
      continue
    else:
      source = load_pool(cfg.data, split, seed=cfg.seed)
    n = len(source)
    idx = np.linspace(0, n - 1, min(n, cfg.eval.max_problems)).round().astype(int)
    out.append(EvalSet(split, [source[int(i)] for i in np.unique(idx)]))
  if train is not None:
    ids, prompts = {p.id for p in train}, {p.prompt.strip() for p in train}
    for es in out:
      es.contaminated = sum(p.id in ids or p.prompt.strip() in prompts for p in es.problems)
      if es.contaminated:
        log.warning("eval %s: %d of %d problems also appear in the training pool (same id or "
                    "prompt); its accuracy is not held-out", es.name, es.contaminated,
                    len(es.problems))
  return out


def accuracy(engine, problems, tokenizer, verifier, cfg: Config, mesh, *, rng: int = 0,
             progress: bool = False, desc: str = "eval") -> dict[str, float]:
  """{"overall": acc, "level_1": acc, ...} with acc = mean avg@k (k = eval.samples). `engine`:
  the run's rollout engine holding the model to evaluate, or a Decoder."""
  knobs = dataclasses.replace(Knobs.from_config(cfg.sample), temperature=cfg.eval.temperature)
  est = estimate_for_config(engine, problems, tokenizer, verifier, cfg, mesh,
                            rollouts=cfg.eval.samples, knobs=knobs, rng=jax.random.key(rng),
                            batch_size=max(cfg.sample.batch_size, cfg.eval.samples),
                            progress=progress, desc=desc)
  per = est.successes / np.maximum(est.trials, 1)
  out = {"overall": float(per.mean())}
  groups = collections.defaultdict(list)
  cells = collections.defaultdict(list)  # generated problems: per task and per cell too
  for p, a in zip(problems, per):
    if p.difficulty is not None:
      groups[int(p.difficulty)].append(a)
    if "cell" in p.metadata:
      cells[p.metadata["task"]].append(a)
      cells[p.metadata["cell"]].append(a)
  for level in sorted(groups):
    out[f"level_{level}"] = float(np.mean(groups[level]))
  for name in sorted(cells):
    out[name] = float(np.mean(cells[name]))
  return out


def evaluate(engine, eval_sets, tokenizer, verifier, cfg: Config, mesh, *,
             progress: bool = False) -> dict[str, float]:
  """Flat metrics `eval/<split>/<bucket>` for every eval set (`engine`: as for `accuracy`)."""
  metrics = {}
  for es in eval_sets:
    acc = accuracy(engine, es.problems, tokenizer, verifier, cfg, mesh, rng=cfg.seed + 17,
                   progress=progress, desc=f"eval {es.name}")
    metrics.update({f"eval/{es.name}/{k}": v for k, v in acc.items()})
    metrics[f"eval_contaminated/{es.name}"] = float(es.contaminated)
  return metrics


def summary_table(before: dict, after: dict) -> str:
  """A plain-text table of accuracy per bucket before and after, and forgetting."""
  keys = sorted({k for k in list(before) + list(after) if k.startswith("eval/")},
                key=lambda k: (k.split("/")[1], k.split("/")[2] != "overall", k))
  lines = [f"{'split/bucket':<24}{'before':>10}{'after':>10}{'change':>10}"]
  for k in keys:
    b, a = before.get(k, float("nan")), after.get(k, float("nan"))
    lines.append(f"{k[5:]:<24}{b:>10.3f}{a:>10.3f}{a - b:>+10.3f}")
  dirty = {k.split("/")[1]: int(v) for k, v in after.items()
           if k.startswith("eval_contaminated/") and v}
  if dirty:
    lines.append("also in the training pool (not held out): " +
                 ", ".join(f"{k} {v} problems" for k, v in sorted(dirty.items())))
  if "eval/probe/overall" in before and "eval/probe/overall" in after:
    lines.append(f"forgetting on the mastered probe: "
                 f"{before['eval/probe/overall'] - after['eval/probe/overall']:+.3f}")
  return "\n".join(lines)
