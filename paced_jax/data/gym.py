"""reasoning-gym (PyPI `reasoning-gym`) tasks as a problem generator: `generate.source=gym`.

Needs the optional extra: `pip install -e ".[gym]"`. This module imports reasoning_gym only
inside its functions, so `import paced_jax.data.gym` works without it.

    gen = GymGenerator(["chain_sum", "leg_counting"])     # every level of each task
    gen.cells()        # (Cell("chain_sum", 1), ..., Cell("chain_sum", 11), Cell("leg_counting", 1),
                       #  ..., Cell("leg_counting", 36))
    gen.make(Cell("chain_sum", 3), seed=0, start=0, n=4)  # 4 problems, a pure function of the args
    gen.score(problem, "... #### 214")                     # the task's own score, 1.0 a pass

Levels come from the task's curriculum (`reasoning_gym.factory.create_curriculum`): level L
(1-based) sets every curriculum attribute to its level L - 1, clamped to that attribute's last
level (`set_global_level(L - 1)`), and `generate_configuration` turns it into the task's config
in `upper_bound` range mode, so a level is that level's knob values only (chain_sum L3: exactly
4 terms of 3 digits), not the span from level 1 up to it (the library's `inclusive` default):
each cell is one difficulty, and its pass rate is that difficulty's. A task has as many levels
as its longest attribute, less trailing levels whose config repeats the one before and levels
whose config fails the task's own checks (caesar_cipher L3: rotation 50 > 25, so its levels are
1..2); a task without a curriculum has one level, its default config. chain_sum has levels
1..11, leg_counting 1..36, basic_arithmetic 1..5 (reasoning-gym 0.1.25).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import threading
from typing import Any, Sequence

from paced_jax.config import ConfigError
from paced_jax.data.generators import SPLIT_CODES, Cell, problem_id
from paced_jax.data.schema import Problem
from paced_jax.data.synthetic_families import MARKER

__all__ = ["GymGenerator", "INSTALL_HINT", "extract_marked", "jsonable"]

INSTALL_HINT = 'pip install -e ".[gym]"'
EXAMPLE_TASKS = "chain_sum,leg_counting,basic_arithmetic"
INSTRUCTION = (f"End your response with a final line `{MARKER} <answer>` giving only your final "
               "answer, in the form the task asks for.")
RANGE_MODE = "upper_bound"  # reasoning_gym.coaching.RangeAttributeMode (see the module docstring)
NOT_TASKS = ("composite",)  # registered, but a mixture of other tasks with its own config
ATTEMPTS = 4  # seeds tried for one problem (some tasks fail on some seeds) before a ConfigError
PROBE_SEEDS = (1, 2**31 + 7, 12345, 3**19)  # seeds that check reseeding a cell's dataset


def _one_line(e: BaseException, limit: int = 200) -> str:
  msg = " ".join(str(e).split())
  if len(msg) > limit:
    msg = msg[:limit - 3] + "..."
  return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _gym():
  """reasoning_gym, or the one-line install hint."""
  try:
    import reasoning_gym
    import reasoning_gym.factory
  except ImportError as e:
    raise ConfigError(f"generate.source=gym needs the reasoning-gym package: {INSTALL_HINT} "
                      f"(or pip install reasoning-gym); importing it failed ({_one_line(e)})"
                      ) from None
  return reasoning_gym


def jsonable(x: Any) -> Any:
  """`x` as plain JSON types: tuples and lists -> lists, sets -> sorted lists, numpy scalars and
  arrays -> numbers and lists, dataclasses -> dicts, non-string keys -> strings, non-finite
  floats and anything else -> repr."""
  if x is None:
    return None
  for plain in (bool, int, str):  # subclasses (enums) as the plain type
    if isinstance(x, plain):
      return plain(x)
  if isinstance(x, float):
    return float(x) if math.isfinite(x) else repr(x)
  if isinstance(x, dict):
    return {(k if isinstance(k, str) else str(k)): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (set, frozenset)):
    return sorted((jsonable(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return jsonable({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
  tolist = getattr(x, "tolist", None)  # numpy arrays and scalars
  if callable(tolist):
    try:
      return jsonable(tolist())
    except Exception:  # noqa: BLE001 - anything odd falls through to repr
      pass
  return repr(x)


def extract_marked(text: str, multiline: bool = False) -> str | None:
  """The answer after the LAST `####` of a response, stripped: its first line, or with
  `multiline` all the rest (for tasks whose answers span lines: grids, boards). None: no
  marker."""
  at = text.rfind(MARKER)
  if at < 0:
    return None
  rest = text[at + len(MARKER):].strip()
  return rest if multiline else rest.split("\n", 1)[0].strip()


@dataclasses.dataclass
class _CellState:
  """What making and scoring one cell's problems needs, built once per cell."""

  kwargs: dict  # the level's config kwargs (no seed, size)
  template: Any = None  # a dataset of the level's config; problems reseed copies of it
  reseedable: bool = True  # False: a fresh dataset per problem (reseeding changed the problem)


class GymGenerator:
  """reasoning-gym tasks at their curriculum levels (see the module docstring).

  Problem i of (cell, split, seed) is `reasoning_gym.create_dataset(task, seed=s, size=1,
  **level_kwargs)[0]` with s from a hash of (seed, task, level, i) in its high bits and the
  split code (train 0, test 1, probe 2) in its low two, so held-out problems come from seeds
  no train problem uses. Each cell keeps one dataset and makes a problem by reseeding a copy
  of it (the same entry: checked per cell on two seeds, else a fresh dataset per problem), so
  tasks that load files when built (arc_agi, codeio) stay fast.

  A task that raises making a problem gets the next seeds of `gym_seed(..., attempt)` (up to
  ATTEMPTS in all; some tasks fail on some seeds at their top levels, e.g. countdown) before
  it is a ConfigError line; `metadata["gym_seed"]` is the seed that made the problem, and
  `create_dataset(task, seed=metadata["gym_seed"], size=1, **metadata["gym_config"])[0]`
  remakes its entry (`metadata["gym_entry"]`, as plain JSON types). A task whose answer is
  None (many right answers: graph_color, rubiks_cube) has answer "": only its scorer decides.

  Prompt: the task's question and one line asking for a final `#### <answer>` line.
  reasoning-gym has no worked solutions (`has_solutions()` is False; `solution` is None).

  `score` extracts the answer after the last `####` (its line; all the rest when the task's
  answers span lines, e.g. sudoku grids; no marker: 0.0) and returns the task's own
  `score_answer` (of the cell's dataset, on the entry as the task made it). Only a score of
  1.0 counts as a pass: a partial score (many tasks give len(answer) / len(response) when the
  answer is inside a longer one: "214 legs" scores 0.375 for 214) counts as a failure; the
  score itself is returned so that a caller can log it.
  """

  name = "gym"

  def __init__(self, tasks: Sequence[str], levels: Sequence[int] = ()):
    tasks, levels = tuple(tasks), tuple(levels)
    if not tasks:
      raise ConfigError("generate.tasks must name reasoning-gym tasks for generate.source=gym, "
                        f"e.g. generate.tasks={EXAMPLE_TASKS}")
    rg = _gym()
    registry = [t for t in sorted(rg.factory.DATASETS) if t not in NOT_TASKS]
    for t in tasks:
      if t not in registry:
        near = difflib.get_close_matches(t, registry, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ConfigError(f"generate.tasks has {t!r}, not a reasoning-gym task; {hint}valid "
                          f"names include {EXAMPLE_TASKS.replace(',', ', ')} "
                          f"({len(registry)} tasks: reasoning_gym.factory.DATASETS)")
    self.tasks = tasks
    self._levels: dict[str, dict[int, dict]] = {}  # task -> {level: its config kwargs}
    self._invalid: dict[str, dict[int, str]] = {}  # task -> {level: why it has no config}
    for t in tasks:
      self._levels[t], self._invalid[t] = self._task_levels(t)
      if not self._levels[t]:
        level, why = next(iter(self._invalid[t].items()))
        raise ConfigError(f"reasoning-gym task {t!r} has no level with a valid config (level "
                          f"{level}: {why}); drop it from generate.tasks")
    for t in tasks:
      for lv in levels:
        if lv not in self._levels[t]:
          raise ConfigError(f"generate.levels has {lv}, outside the range of reasoning-gym "
                            f"task {t!r}, which has {self._span(t)}")
    self.levels = levels
    self._cells = tuple(Cell(t, lv) for t in tasks for lv in (levels or sorted(self._levels[t])))
    self._state: dict[Cell, _CellState] = {}
    self._lock = threading.Lock()

  # -- levels ------------------------------------------------------------------------------

  @staticmethod
  def _task_levels(task: str) -> tuple[dict[int, dict], dict[int, str]]:
    """The config kwargs (no seed, size) of each level of `task` whose config is valid, and
    why each other level has none (a curriculum's top value can break its config's own
    checks: caesar_cipher's rotation 50 > 25)."""
    rg = _gym()
    from reasoning_gym.coaching.base_curriculum import (DefaultCurriculumContext,
                                                        RangeAttributeMode)

    if not rg.factory.has_curriculum(task):
      return {1: {}}, {}
    context = DefaultCurriculumContext(mode=RangeAttributeMode(RANGE_MODE))
    n = max((len(a.levels) for a in rg.factory.create_curriculum(task).attributes.values()),
            default=1)
    configs: list[Any] = []
    for lv in range(n):
      curriculum = rg.factory.create_curriculum(task)
      try:
        curriculum.set_global_level(lv)
        configs.append(curriculum.generate_configuration(context=context))
      except Exception as e:  # noqa: BLE001 - the library's curriculum gives no config
        configs.append(e)
    while len(configs) > 1 and repr(configs[-1]) == repr(configs[-2]):
      configs.pop()  # a clamped range repeats the last level
    valid, invalid = {}, {}
    for level, config in enumerate(configs, 1):
      if not isinstance(config, Exception):
        try:
          if callable(getattr(config, "validate", None)):
            config.validate()
          kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                    if f.name not in ("seed", "size")}
        except Exception as e:  # noqa: BLE001
          config = e
      if isinstance(config, Exception):
        invalid[level] = _one_line(config, 120)
      else:
        valid[level] = kwargs
    return valid, invalid

  def _span(self, task: str) -> str:
    """A task's levels in words: "levels 1..5", "one level, 1 (no curriculum)"."""
    have = sorted(self._levels[task])
    runs: list[list[int]] = []
    for lv in have:
      if runs and lv == runs[-1][-1] + 1:
        runs[-1].append(lv)
      else:
        runs.append([lv])
    words = ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    if have == [1] and not self._invalid[task]:
      return "one level, 1 (no curriculum)"
    out = f"levels {words}"
    if self._invalid[task]:
      bad = sorted(self._invalid[task])
      out += (f" (its curriculum's level {bad[0]} has no valid config: "
              f"{self._invalid[task][bad[0]]})")
    return out

  def level_kwargs(self, cell: Cell) -> dict:
    """The config kwargs of a cell (those `create_dataset` gets besides seed and size)."""
    return dict(self._cell(cell).kwargs)

  def _cell(self, cell: Cell) -> _CellState:
    state = self._state.get(cell)
    if state is not None:
      return state
    with self._lock:
      if cell not in self._state:
        if cell.task not in self._levels:  # scoring another generator's problem
          if cell.task not in _gym().factory.DATASETS:
            raise ConfigError(f"reasoning-gym task {cell.task!r} level {cell.level} is not a "
                              "task of the installed reasoning-gym")
          self._levels[cell.task], self._invalid[cell.task] = self._task_levels(cell.task)
        if cell.level not in self._levels[cell.task]:
          raise ConfigError(f"reasoning-gym task {cell.task!r} has no level {cell.level}: it "
                            f"has {self._span(cell.task)}")
        self._state[cell] = _CellState(kwargs=self._levels[cell.task][cell.level])
      return self._state[cell]

  # -- making problems ---------------------------------------------------------------------

  @staticmethod
  def gym_seed(cell: Cell, split: str, seed: int, i: int, attempt: int = 0) -> int:
    """The reasoning-gym seed of problem i of (cell, split, seed): in [0, 2**32) (numpy's
    legacy seeding, which some tasks use, takes no more), split code in the low two bits.
    `attempt` > 0: the seeds tried when the task fails on the ones before."""
    key = f"paced-gym/{seed}/{cell.task}/{cell.level}/{i}" + (f"/{attempt}" if attempt else "")
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h % 2**30 * 4 + SPLIT_CODES[split]

  def _fresh(self, cell: Cell, state: _CellState, s: int) -> dict:
    return _gym().create_dataset(cell.task, seed=s, size=1, **state.kwargs)[0]

  def _template(self, cell: Cell) -> _CellState:
    """The cell's state with its dataset built (and whether reseeding it is exact checked)."""
    state = self._cell(cell)
    if state.template is None:
      with self._lock:
        if state.template is None:
          try:
            template = _gym().create_dataset(cell.task, seed=0, size=1, **state.kwargs)
          except Exception as e:  # noqa: BLE001 - any task bug is one line naming the cell
            raise _failed(cell, e) from None
          state.reseedable = self._reseeding_is_exact(cell, state, template)
          state.template = template
    return state

  def _reseeding_is_exact(self, cell: Cell, state: _CellState, template) -> bool:
    """Whether a reseeded copy of `template` makes what `create_dataset` with that seed makes:
    checked on probe seeds until two agree (a seed where both raise is skipped); False (a
    fresh dataset per problem) when they differ or too few probes made a problem."""
    agreed = 0
    for probe in PROBE_SEEDS:
      made = []
      for how in (lambda: self._reseeded(template, probe), lambda: self._fresh(cell, state, probe)):
        try:
          made.append(how())
        except Exception:  # noqa: BLE001 - a task may fail on some seeds
          made.append(None)
      if (made[0] is None) != (made[1] is None):
        return False
      if made[0] is not None:
        if not _same(*made):
          return False
        agreed += 1
        if agreed == 2:
          return True
    return False

  def _entry(self, cell: Cell, s: int) -> dict:
    """The entry `create_dataset(task, seed=s, size=1, **kwargs)[0]` (raises what it raises)."""
    state = self._template(cell)
    if state.reseedable:
      return self._reseeded(state.template, s)
    return self._fresh(cell, state, s)

  @staticmethod
  def _reseeded(template, s: int) -> dict:
    ds = copy.copy(template)
    ds.seed = s
    if dataclasses.is_dataclass(template.config):
      ds.config = copy.copy(template.config)
      if hasattr(ds.config, "seed"):
        ds.config.seed = s
    return ds[0]

  def cells(self) -> tuple[Cell, ...]:
    return self._cells

  def make(self, cell: Cell, seed: int, start: int, n: int, split: str = "train"
           ) -> list[Problem]:
    if split not in SPLIT_CODES:
      raise ValueError(f"split {split!r} is not one of {', '.join(SPLIT_CODES)}")
    config = jsonable(self._template(cell).kwargs)
    out = []
    for i in range(start, start + n):
      for attempt in range(ATTEMPTS):
        s = self.gym_seed(cell, split, seed, i, attempt)
        try:
          entry = jsonable(self._entry(cell, s))
          question = str(entry["question"]).rstrip()
          break
        except Exception as e:  # noqa: BLE001 - any task bug is one line naming the cell
          error = e
      else:
        raise _failed(cell, error) from None
      answer = entry.get("answer")
      out.append(Problem(
          id=problem_id(cell, split, seed, i),
          prompt=f"{question}\n\n{INSTRUCTION}\n",
          # None: the task has many right answers and only its scorer can tell
          answer="" if answer is None else str(answer),
          solution=None, difficulty=cell.level,
          metadata={"task": cell.task, "level": cell.level, "cell": cell.name,
                    "gym_seed": s, "gym_config": config, "gym_entry": entry}))
    return out

  # -- scoring -----------------------------------------------------------------------------

  def score(self, problem: Problem, response_text: str) -> float | None:
    """The task's score of the response's answer (see the class docstring); None for a
    problem this generator did not make (no reasoning-gym entry in its metadata)."""
    md = problem.metadata or {}
    if "gym_entry" not in md or "task" not in md:
      return None
    cell = Cell(md["task"], int(md["level"]))
    saved = md["gym_entry"]
    multiline = "\n" in str(saved.get("answer") or "").strip()
    answer = extract_marked(response_text, multiline)
    if answer is None:
      return 0.0
    state = self._template(cell)
    entry = saved
    if "gym_seed" in md:  # the entry as the task made it (tuples, sets intact): some scorers
      # need its own types; a different reasoning-gym version keeps the saved one
      try:
        made = self._entry(cell, int(md["gym_seed"]))
      except Exception:  # noqa: BLE001 - it made this problem before; keep the saved entry
        made = {}
      if jsonable([made.get("question"), made.get("answer")]) == [saved.get("question"),
                                                                   saved.get("answer")]:
        entry = made  # (a task whose output varies run to run, e.g. codeio's, keeps the saved)
    try:
      return float(state.template.score_answer(answer=answer, entry=entry))
    except Exception as e:  # noqa: BLE001
      raise ConfigError(f"reasoning-gym task {cell.task!r} level {cell.level} failed to score "
                        f"a response ({_one_line(e)})") from None

  def has_solutions(self) -> bool:
    return False


def _failed(cell: Cell, e: BaseException) -> ConfigError:
  return ConfigError(f"reasoning-gym task {cell.task!r} level {cell.level} failed to generate "
                     f"a problem ({_one_line(e)})")


def _same(a: dict, b: dict) -> bool:
  return json.dumps(jsonable(a), sort_keys=True) == json.dumps(jsonable(b), sort_keys=True)
