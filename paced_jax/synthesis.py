"""Frontier synthesis: every round trains on fresh problems made inside the band.

With `generate.source` set, the run has no fixed pool. Each refresh round r:

  1. probes: `generate.probes_per_cell` fresh problems of every cell (task x level) are
     sampled `paced.rollouts` times each and verified (the task's own scorer where it has
     one);
  2. the cell table pools them per cell as Beta counts with decay d (`generate.decay`):
         s_c <- d * s_c + successes_c(r),   n_c <- d * n_c + trials_c(r)
     so a round's evidence weighs d^age (d = 0 keeps only the latest round; counts are
     fractional, and the posterior weights read them as such);
  3. each cell's frontier weight is `paced.weighting`'s, on the cell's pooled counts
     (p(1-p) on p_c = s_c / n_c for "paced", E[w(p)] under Beta(s_c + a0, n_c - s_c + b0)
     for "paced_posterior", and so on; `frontier.frontier_weights`);
  4. `generate.per_round` fresh problems are made across cells in proportion to the weights,
     after a floor of `generate.min_task_share` of the round per task (spread over the task's
     cells by weight, evenly where all its weights are 0), so every task stays in the round.
     A round in which no cell has weight > 0 is uniform over cells, said in one warning line.

The round's problems then form the pool the data pipeline draws from (uniformly, or by each
problem's own estimated pass rate with `generate.within_round=estimated`). No problem is made
twice in a run (a digest of every prompt made so far is kept) and no train problem equals a
held-out one (eval and probe sets are made first; their prompts are excluded). The cell table,
each cell's stream position, the digests and the round's problems ride in the checkpoint, so a
resumed run makes exactly the problems an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import jax
import numpy as np

from paced_jax.config import Config, ConfigError
from paced_jax.data.generators import Cell, Generator, SyntheticGenerator, prompt_digest
from paced_jax.data.schema import Problem
from paced_jax.estimate import estimate_for_config
from paced_jax.frontier import frontier_weights

log = logging.getLogger("paced_jax.train")

__all__ = ["CellTable", "RoundMaker", "ScoredVerifier", "Synthesis", "allocate", "cell_round",
           "diversity", "heldout_problems", "make_generator"]


def make_generator(gen_cfg) -> Generator:
  """The generator `generate.source` names ("synthetic" or "gym"), checked: unknown tasks and
  levels outside a task's range are one line each."""
  if gen_cfg.source == "synthetic":
    return SyntheticGenerator(gen_cfg.tasks, gen_cfg.levels)
  if gen_cfg.source == "gym":
    from paced_jax.data.gym import GymGenerator

    return GymGenerator(gen_cfg.tasks, gen_cfg.levels)
  raise ConfigError(f"generate.source={gen_cfg.source!r} must be 'synthetic' or 'gym' "
                    "(empty: no generator, the run trains on its pool)")


class CellTable:
  """Pooled, decayed Beta counts per cell (see the module docstring, step 2)."""

  def __init__(self, names: Sequence[str]):
    self.names = list(names)
    self.successes = np.zeros(len(names))
    self.trials = np.zeros(len(names))
    self.rounds = 0  # rounds pooled so far

  def update(self, successes, trials, decay: float) -> None:
    self.successes = decay * self.successes + np.asarray(successes, np.float64)
    self.trials = decay * self.trials + np.asarray(trials, np.float64)
    self.rounds += 1

  def pass_rates(self) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(self.trials > 0, self.successes / np.maximum(self.trials, 1e-300), np.nan)

  def state(self) -> dict:
    return {"names": self.names, "successes": self.successes.tolist(),
            "trials": self.trials.tolist(), "rounds": self.rounds}

  @classmethod
  def from_state(cls, state: dict) -> CellTable:
    t = cls(state["names"])
    t.successes = np.asarray(state["successes"], np.float64)
    t.trials = np.asarray(state["trials"], np.float64)
    t.rounds = int(state["rounds"])
    return t


def allocate(weights, tasks: Sequence[str], total: int, min_task_share: float,
             tie_seed=None) -> tuple[np.ndarray, bool]:
  """(problems per cell [C] summing to `total`, whether the round fell back to uniform).
  First each task gets a floor of round(min_task_share * total) problems (at most an equal
  share of the round), apportioned over its cells by weight (evenly if they are all 0); then
  the rest goes to all cells by weight. Each stage apportions whole problems by largest
  remainder; equal remainders are ordered by a permutation drawn from `tie_seed` (the run's
  seed and round: a round too small for every cell does not always favour the same ones;
  None: cell order)."""
  w = np.asarray(weights, np.float64)
  fallback = not w.sum() > 0
  if fallback:
    w = np.ones_like(w)
  order = (np.arange(len(w)) if tie_seed is None
           else np.random.default_rng(tie_seed).permutation(len(w)))
  names = list(dict.fromkeys(tasks))
  task_of = np.asarray([names.index(t) for t in tasks])
  floor = min(int(round(min_task_share * total)), total // len(names))
  counts = np.zeros(len(w), np.int64)
  for k in range(len(names)):
    sel = np.flatnonzero(task_of == k)
    ws = w[sel] if w[sel].sum() > 0 else np.ones(len(sel))
    counts[sel] += _apportion(ws, floor, order[sel])
  counts += _apportion(w, total - int(counts.sum()), order)
  return counts, fallback


def _apportion(w: np.ndarray, total: int, rank: np.ndarray) -> np.ndarray:
  """`total` whole units in proportion to `w` (largest remainder; ties by `rank`)."""
  share = total * w / w.sum()
  counts = np.floor(share + 1e-9).astype(np.int64)
  rem = np.round(share - counts, 9)
  left = total - int(counts.sum())
  if left > 0:
    counts[np.lexsort((rank, -rem))[:left]] += 1
  return counts


def diversity(cells: Sequence[str], tasks: Sequence[str], levels: Sequence[int]) -> dict:
  """Shares of each task and level among `cells` (one entry per trained or made problem),
  the entropy of the cell distribution (nats) and its fraction of the maximum log(#cells)."""
  out: dict[str, float] = {}
  n = max(len(cells), 1)
  for key, values in (("task_share", tasks), ("level_share", [f"L{lv}" for lv in levels])):
    u, c = np.unique(np.asarray(values, object).astype(str), return_counts=True)
    out.update({f"generate/{key}/{a}": float(b) / n for a, b in zip(u, c)})
  _, c = np.unique(np.asarray(cells, object).astype(str), return_counts=True)
  p = c / n
  out["generate/entropy"] = float(-(p * np.log(p)).sum())
  return out


class RoundMaker:
  """Fresh train problems of each cell, never one made before in the run nor a held-out one.
  Its state (each cell's stream position, the digests) rides in the checkpoint."""

  def __init__(self, generator: Generator, seed: int, heldout: Sequence[Problem] = ()):
    self.gen, self.seed = generator, seed
    self.cells = generator.cells()
    self.position = {c.name: 0 for c in self.cells}
    self.seen: set[str] = set()
    self.heldout = {prompt_digest(p.prompt) for p in heldout}
    self.repeats = 0  # problems skipped (made before, or held out) since the last `take_repeats`

  def fresh(self, cell: Cell, n: int) -> list[Problem]:
    """The next `n` problems of `cell`'s stream that are new to the run. Small cells run out
    (level 1 of some families has ~1000 prompts): after 20 n draws the cell gives what it has."""
    out: list[Problem] = []
    tries = 0
    while len(out) < n and tries < 20 * n:
      want = n - len(out)
      batch = self.gen.make(cell, self.seed, self.position[cell.name], want)
      self.position[cell.name] += want
      tries += want
      for p in batch:
        d = prompt_digest(p.prompt)
        if d in self.seen or d in self.heldout:
          self.repeats += 1
          continue
        self.seen.add(d)
        out.append(p)
    return out

  def state(self) -> dict:
    return {"position": self.position, "seen": sorted(self.seen)}

  def restore(self, state: dict) -> None:
    unknown = set(state["position"]) - set(self.position)
    if unknown:
      raise ConfigError(f"the checkpoint's generator has cells this config's has not "
                        f"({sorted(unknown)[:3]}); resume with the generate.* it was written with")
    self.position.update(state["position"])
    self.seen = set(state["seen"])


class ScoredVerifier:
  """The run's verifier, except on problems whose generator scores them itself (reasoning-gym
  tasks): there the task's score decides, and only a score of 1.0 passes."""

  def __init__(self, generator: Generator, verifier):
    self.gen, self.verifier = generator, verifier

  def __call__(self, response_text: str, problem: Problem) -> bool:
    score = self.gen.score(problem, response_text)
    if score is None:
      return self.verifier(response_text, problem)
    return float(score) >= 1.0

  def __getattr__(self, name):  # close(), counters of the wrapped verifier
    return getattr(self.verifier, name)


def heldout_problems(generator: Generator, cfg: Config, split: str) -> list[Problem]:
  """The generated eval set: `generate.heldout_per_cell` problems per cell of split "test",
  or per cell of the two lowest levels of each task for "probe" (the cells a student masters
  first: forgetting is measured there). The synthetic suite uses its own held-out splits."""
  n = cfg.generate.heldout_per_cell
  if generator.name == "synthetic":
    return _synthetic_heldout(generator, cfg, split)
  cells = generator.cells()
  if split == "probe":
    lowest = {}
    for c in cells:
      lowest.setdefault(c.task, []).append(c.level)
    keep = {t: sorted(lv)[:2] for t, lv in lowest.items()}
    cells = tuple(c for c in cells if c.level in keep[c.task])
  return [p for c in cells for p in generator.make(c, cfg.seed, 0, n, split)]


class Synthesis:
  """A generated run's problem source: the generator, its round maker and the cell table."""

  def __init__(self, generator: Generator, maker: RoundMaker):
    self.generator, self.maker = generator, maker
    self.table = CellTable([c.name for c in maker.cells])
    self.started = 0  # the step at which the current round began


  def state(self, problems: Sequence[Problem]) -> dict:
    """What the checkpoint keeps (JSON): the cell table, the maker and the round's problems."""
    return {"table": self.table.state(), "maker": self.maker.state(), "started": self.started,
            "problems": [dataclasses.asdict(p) for p in problems]}

  def restore(self, state: dict) -> list[Problem]:
    """Restores the table and the maker; returns the round's problems."""
    table = CellTable.from_state(state["table"])
    if table.names != self.table.names:
      raise ConfigError("the checkpoint's cell table has other cells than this config's "
                        "generator; resume with the generate.* it was written with")
    self.table = table
    self.maker.restore(state["maker"])
    self.started = int(state["started"])
    return [Problem(**d) for d in state["problems"]]


def _synthetic_heldout(generator, cfg: Config, split: str) -> list[Problem]:
  """The synthetic suite's own held-out split (`synthetic.synthetic_source`) for the
  generator's families and levels, `generate.heldout_per_cell` problems per cell: the same
  problems a fixed synthetic pool of those families evaluates on, so generated and pool runs
  compare on one test set. Tagged with their cell like generated problems."""
  from paced_jax.data.synthetic import synthetic_source

  data = dataclasses.replace(cfg.data, source="synthetic", synthetic_families=generator.tasks,
                             synthetic_levels=max(generator.levels), synthetic_level_weights=(),
                             synthetic_heldout_per_cell=cfg.generate.heldout_per_cell)
  src = synthetic_source(data, split, seed=cfg.seed)
  out = []
  for i in range(len(src)):
    p = src[i]
    if p.difficulty in generator.levels:
      task = p.metadata["family"]
      out.append(dataclasses.replace(p, metadata={**p.metadata, "task": task,
                                                  "level": p.difficulty,
                                                  "cell": f"{task}/L{p.difficulty}"}))
  return out


@dataclasses.dataclass
class CellRound:
  problems: list[Problem]  # the round's training problems
  metrics: dict[str, float]
  flops: float  # rollout FLOPs of the probes


def cell_round(engine, maker: RoundMaker, table: CellTable, tokenizer, verifier, cfg: Config,
               mesh, round_: int, *, progress: bool = False) -> CellRound:
  """Steps 1-4 of the module docstring for round `round_`. With paced.weighting=uniform the
  cells are uniform and nothing is estimated (the weights could not depend on it)."""
  gc = cfg.generate
  cells = maker.cells
  t0 = time.perf_counter()
  probes = ([p for c in cells for p in maker.fresh(c, gc.probes_per_cell)]
            if cfg.paced.weighting != "uniform" else [])
  make_s = time.perf_counter() - t0
  by_cell = np.asarray([[c.name for c in cells].index(p.metadata["cell"]) for p in probes])
  s_new, n_new = np.zeros(len(cells)), np.zeros(len(cells))
  flops = 0.0
  if probes:
    est = estimate_for_config(
        engine, probes, tokenizer, verifier, cfg, mesh, rollouts=cfg.paced.rollouts,
        rng=jax.random.fold_in(jax.random.key(cfg.seed + 5), round_), progress=progress,
        desc="estimate cells")
    np.add.at(s_new, by_cell, est.successes)
    np.add.at(n_new, by_cell, est.trials)
    flops = est.flops
  table.update(s_new, n_new, gc.decay)
  w = frontier_weights(table.successes, table.trials, cfg.paced)
  counts, fallback = allocate(w, [c.task for c in cells], gc.per_round, gc.min_task_share,
                              tie_seed=[cfg.seed, round_, 13])
  if fallback:
    log.warning("round %d: every cell has frontier weight 0 (pooled pass rates in {0, 1}); "
                "this round makes problems uniformly over the %d cells", round_, len(cells))
  requested = int(counts.sum())
  t0 = time.perf_counter()
  problems = [p for c, k in zip(cells, counts) for p in maker.fresh(c, int(k))]
  make_s += time.perf_counter() - t0
  if not problems:
    raise ConfigError(f"round {round_}: the generator made no new problem (every cell has run "
                      "out of problems not made before); use more cells or levels")
  p_cell = table.pass_rates()
  metrics: dict[str, float] = {"generate/fallback_uniform": float(fallback),
                               "generate/made": float(len(problems)),
                               "generate/fresh_rate": len(problems) / max(requested, 1),
                               "generate/repeats_skipped": float(maker.repeats),
                               "generate/make_seconds": make_s}
  maker.repeats = 0
  for c, k, pc, wc in zip(cells, counts, p_cell, w):
    metrics[f"generate_mass/{c.name}"] = float(k) / max(requested, 1)
    if math.isfinite(pc):
      metrics[f"generate_p/{c.name}"] = float(pc)
  metrics.update(diversity([p.metadata["cell"] for p in problems],
                           [p.metadata["task"] for p in problems],
                           [p.metadata["level"] for p in problems]))
  return CellRound(problems, metrics, flops)
