"""Problem generators: procedural task families with difficulty knobs, as a problem source.

A generator has *cells*, (task, level) pairs, each level a concrete setting of the task's
difficulty knobs, and makes fresh, verifiable problems of a cell on demand:

    gen = synthesis.make_generator(cfg.generate)       # "synthetic" or "gym"
    gen.cells()                                        # (Cell("add", 1), Cell("add", 2), ...)
    gen.make(Cell("add", 3), seed=0, start=0, n=4)     # 4 problems, a pure function of the args

`make(cell, seed, start, n, split)` returns problems start .. start + n - 1 of the cell's stream
for (seed, split): the same arguments give the same problems, and every problem's id names its
inputs (`gen/<task>/L<level>/<split>/s<seed>/<i>`). Problem metadata holds "task", "level" and
"cell" (`Cell.name`); `difficulty` is the level. Splits: "train" problems are what a run trains
on and estimates; "test" and "probe" are held out. The synthetic suite keeps them apart by its
prompt hash (`synthetic.partition`), reasoning-gym by disjoint seeds and by dropping any train
problem whose prompt is a held-out one (`synthesis.RoundMaker` does, and never repeats a
problem within a run).

A generator may *score* its own problems (`score(problem, response_text) -> float | None`,
1.0 a pass): reasoning-gym tasks score with the task's own `score_answer`. `None` leaves the
verdict to the run's verifier (the synthetic suite: answers after the marker, exact match).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol, Sequence

import numpy as np

from paced_jax.config import ConfigError
from paced_jax.data.schema import Problem

__all__ = ["Cell", "Generator", "SPLIT_CODES", "SyntheticGenerator", "problem_id", "prompt_digest"]


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
  """One task at one difficulty level."""

  task: str
  level: int

  @property
  def name(self) -> str:
    return f"{self.task}/L{self.level}"


class Generator(Protocol):
  """What a run needs of a problem generator (see the module docstring)."""

  name: str  # "synthetic", "gym": recorded with the run

  def cells(self) -> tuple[Cell, ...]:
    ...

  def make(self, cell: Cell, seed: int, start: int, n: int, split: str = "train"
           ) -> list[Problem]:
    ...

  def score(self, problem: Problem, response_text: str) -> float | None:
    ...

  def has_solutions(self) -> bool:
    """Whether problems carry a worked reference solution (a training target for off-policy
    distillation without sampling the teacher)."""
    ...


def prompt_digest(prompt: str) -> str:
  """The key by which a run recognises a problem it has made before (16 hex digits)."""
  return hashlib.blake2b(prompt.strip().encode(), digest_size=8).hexdigest()


def problem_id(cell: Cell, split: str, seed: int, i: int) -> str:
  return f"gen/{cell.task}/L{cell.level}/{split}/s{seed}/{i}"


SPLIT_CODES = {"train": 0, "test": 1, "probe": 2}


class SyntheticGenerator:
  """The built-in synthetic suite (`synthetic_families.py`) as a generator: every family at
  levels 1..8 (the default pools stop at 5; levels 6-8 go beyond what the strong student can
  solve, so a generated round can hold hopeless problems). Problem i of a cell and split is
  drawn from `default_rng([seed, 100 + split code, family index, level, i])`, redrawn until
  its prompt lies in the split's partition, so train problems never equal a held-out one of
  any synthetic pool or generated eval set."""

  name = "synthetic"

  def __init__(self, tasks: Sequence[str] = (), levels: Sequence[int] = ()):
    from paced_jax.data.synthetic_families import FAMILIES, MAX_LEVELS

    self._families = FAMILIES
    names = tuple(tasks) or tuple(FAMILIES)
    unknown = [t for t in names if t not in FAMILIES]
    if unknown:
      raise ConfigError(f"generate.tasks has unknown synthetic task(s) "
                        f"{', '.join(map(repr, unknown))}; choose from {', '.join(FAMILIES)}")
    levels = tuple(levels) or tuple(range(1, MAX_LEVELS + 1))
    bad = [lv for lv in levels if not 1 <= lv <= MAX_LEVELS]
    if bad:
      raise ConfigError(f"generate.levels has {bad[0]}, outside the synthetic suite's levels "
                        f"1..{MAX_LEVELS}")
    self.tasks, self.levels = names, levels
    self._index = {t: list(FAMILIES).index(t) for t in names}

  def cells(self) -> tuple[Cell, ...]:
    return tuple(Cell(t, lv) for t in self.tasks for lv in self.levels)

  def make(self, cell: Cell, seed: int, start: int, n: int, split: str = "train"
           ) -> list[Problem]:
    from paced_jax.data.synthetic import partition

    if split not in SPLIT_CODES:
      raise ValueError(f"split {split!r} is not one of {', '.join(SPLIT_CODES)}")
    family = self._families[cell.task]
    out = []
    for i in range(start, start + n):
      rng = np.random.default_rng([seed, 100 + SPLIT_CODES[split], self._index[cell.task],
                                   cell.level, i])
      for _ in range(100_000):
        prompt, answer, solution = family.make(rng, cell.level)
        if partition(prompt) == split:
          break
      else:  # a partition holds 1/16 or 14/16 of the prompts: this never binds
        raise RuntimeError(f"no {split} prompt for {cell.name} in 100000 draws")
      out.append(Problem(id=problem_id(cell, split, seed, i), prompt=prompt, answer=answer,
                         solution=solution, difficulty=cell.level,
                         metadata={"task": cell.task, "level": cell.level, "cell": cell.name}))
    return out

  def score(self, problem: Problem, response_text: str) -> float | None:
    return None  # the run's verifier (exact match after the marker)

  def has_solutions(self) -> bool:
    return True
