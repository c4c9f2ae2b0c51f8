"""The reasoning-gym generator (paced_jax/data/gym.py): levels, problems, scoring, errors."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

rg = pytest.importorskip("reasoning_gym")
import reasoning_gym.factory  # noqa: E402

from paced_jax.config import ConfigError, GenerateConfig  # noqa: E402
from paced_jax.data.generators import Cell, problem_id  # noqa: E402
from paced_jax.synthesis import make_generator  # noqa: E402
from paced_jax.data.gym import GymGenerator, extract_marked, jsonable  # noqa: E402

TASKS = ("chain_sum", "leg_counting", "basic_arithmetic")


@pytest.fixture(scope="module")
def gen():
  return GymGenerator(TASKS)


def top(gen, task):
  return max(c.level for c in gen.cells() if c.task == task)


def one_line(e):
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


def test_levels_follow_each_curriculum(gen):
  for task in TASKS:
    attrs = reasoning_gym.factory.create_curriculum(task).attributes.values()
    want = max(len(a.levels) for a in attrs)
    assert [c.level for c in gen.cells() if c.task == task] == list(range(1, want + 1))
  assert gen.cells() == tuple(sorted(gen.cells(), key=lambda c: (TASKS.index(c.task), c.level)))
  two = GymGenerator(TASKS, levels=(1, 3))
  assert two.cells() == tuple(Cell(t, lv) for t in TASKS for lv in (1, 3))
  assert gen.has_solutions() is False and gen.name == "gym"


def test_make_generator_builds_it():
  g = make_generator(GenerateConfig(source="gym", tasks=("chain_sum",), levels=(2,)))
  assert isinstance(g, GymGenerator) and g.cells() == (Cell("chain_sum", 2),)


def test_problems_hold_question_instruction_and_answer(gen):
  for task in TASKS:
    for level in (1, top(gen, task)):
      cell = Cell(task, level)
      problems = gen.make(cell, seed=0, start=0, n=3)
      assert len(problems) == 3
      for i, p in enumerate(problems):
        entry = p.metadata["gym_entry"]
        assert entry["question"].strip() in p.prompt
        assert "#### <answer>" in p.prompt.splitlines()[-1]
        assert p.answer and p.answer == str(entry["answer"])
        assert p.solution is None and p.difficulty == level
        assert p.id == problem_id(cell, "train", 0, i)
        assert {k: p.metadata[k] for k in ("task", "level", "cell")} == {
            "task": task, "level": level, "cell": cell.name}
        assert json.loads(json.dumps(p.metadata)) == p.metadata  # plain JSON types


def test_problem_is_the_task_entry_of_its_seed(gen):
  """The cached, reseeded dataset makes exactly what create_dataset(seed=s, size=1) makes."""
  for task in TASKS:
    cell = Cell(task, 2)
    for p in gen.make(cell, seed=5, start=7, n=3, split="test"):
      s = p.metadata["gym_seed"]
      assert s == GymGenerator.gym_seed(cell, "test", 5, int(p.id.rsplit("/", 1)[1]))
      entry = rg.create_dataset(task, seed=s, size=1, **gen.level_kwargs(cell))[0]
      assert p.metadata["gym_entry"] == jsonable(entry)
      assert p.metadata["gym_config"] == jsonable(gen.level_kwargs(cell))


def test_deterministic_and_seeded(gen):
  other = GymGenerator(TASKS)  # a fresh instance: nothing cached
  for task in TASKS:
    cell = Cell(task, 3)
    a = gen.make(cell, seed=1, start=0, n=6)
    assert a == other.make(cell, seed=1, start=0, n=6)
    b = gen.make(cell, seed=2, start=0, n=6)
    assert [p.prompt for p in a] != [p.prompt for p in b]
    assert len({p.prompt for p in a}) > 1  # a stream, not one problem repeated


def test_random_access(gen):
  for task in TASKS:
    cell = Cell(task, 2)
    assert gen.make(cell, 3, 2, 3) == gen.make(cell, 3, 0, 5)[2:]
    assert gen.make(cell, 3, 4, 1, "probe") == gen.make(cell, 3, 0, 5, "probe")[4:]


def test_splits_use_disjoint_seeds(gen):
  for task in TASKS:
    cell = Cell(task, 4)
    by_split = {s: gen.make(cell, 0, 0, 8, s) for s in ("train", "test", "probe")}
    for code, (split, problems) in enumerate(by_split.items()):
      assert {p.metadata["gym_seed"] % 4 for p in problems} == {code}
      assert all(f"/{split}/" in p.id for p in problems)
    assert [p.prompt for p in by_split["train"]] != [p.prompt for p in by_split["test"]]
    assert [p.prompt for p in by_split["test"]] != [p.prompt for p in by_split["probe"]]
  with pytest.raises(ValueError, match="split"):
    gen.make(Cell("chain_sum", 1), 0, 0, 1, "dev")


def test_levels_change_the_task_config(gen):
  low, high = Cell("chain_sum", 1), Cell("chain_sum", top(gen, "chain_sum"))
  lo_cfg, hi_cfg = gen.level_kwargs(low), gen.level_kwargs(high)
  assert (lo_cfg["min_terms"], lo_cfg["max_terms"]) == (2, 2)
  assert hi_cfg["min_terms"] == hi_cfg["max_terms"] == 12 and hi_cfg["max_digits"] == 10
  for cell, terms in ((low, 2), (high, 12)):
    for p in gen.make(cell, 0, 0, 4):
      expression = p.metadata["gym_entry"]["metadata"]["expression"]
      assert len(re.findall(r"\d+", expression)) == terms  # the question has that many terms
      assert p.metadata["gym_config"]["max_terms"] == terms
  legs = [gen.level_kwargs(Cell("leg_counting", lv))["max_animals"] for lv in (1, 2, 36)]
  assert legs == [1, 2, 36]


def test_scores_with_the_tasks_own_scorer(gen):
  for task in TASKS:
    p = gen.make(Cell(task, 3), 0, 0, 1)[0]
    assert gen.score(p, f"Let me think.\n#### {p.answer}") == 1.0
    assert gen.score(p, f"#### 1\n... no, wait.\n#### {p.answer}\n") == 1.0  # the last marker
    wrong = str(int(p.answer) + 1)
    assert gen.score(p, f"#### {wrong}") < 1.0
    assert gen.score(p, f"#### {p.answer}\n#### {wrong}") < 1.0
    assert gen.score(p, f"The answer is {p.answer}.") == 0.0  # no marker
    assert gen.score(p, "") == 0.0
  # the task's scorer called directly, on the entry create_dataset makes: a partial score
  p = gen.make(Cell("leg_counting", 5), 0, 0, 1)[0]
  entry = rg.create_dataset("leg_counting", seed=p.metadata["gym_seed"], size=1,
                            **gen.level_kwargs(Cell("leg_counting", 5)))[0]
  direct = rg.get_score_answer_fn("leg_counting")(answer=f"{p.answer} legs", entry=entry)
  assert 0.0 < direct < 1.0
  assert gen.score(p, f"So: #### {p.answer} legs") == direct
  assert gen.score(p, f"#### {p.answer}") == rg.get_score_answer_fn("leg_counting")(
      answer=p.answer, entry=entry) == 1.0


def test_score_leaves_other_problems_to_the_verifier(gen):
  p = gen.make(Cell("chain_sum", 1), 0, 0, 1)[0]
  assert gen.score(dataclasses.replace(p, metadata={"task": "add"}), "#### 1") is None


def test_extract_marked():
  assert extract_marked("a #### 12 \nmore") == "12"
  assert extract_marked("#### 1\n#### 2") == "2"
  assert extract_marked("####\n  7\n") == "7"
  assert extract_marked("no marker") is None
  assert extract_marked("#### 1 2\n3 4\n", multiline=True) == "1 2\n3 4"


def test_jsonable():
  out = jsonable({"t": (1, 2), "s": {3, 1}, (1, 2): "k", "a": np.arange(3), "f": np.float32(0.5),
                  "n": float("nan"), "o": object})
  assert out["t"] == [1, 2] and out["s"] == [1, 3] and out["(1, 2)"] == "k"
  assert out["a"] == [0, 1, 2] and out["f"] == 0.5 and out["n"] == "nan"
  json.dumps(out)


def test_config_errors_are_one_line():
  with pytest.raises(ConfigError) as e:
    GymGenerator([])
  assert "generate.tasks must name reasoning-gym tasks" in one_line(e)
  assert "chain_sum,leg_counting,basic_arithmetic" in one_line(e)
  with pytest.raises(ConfigError) as e:
    GymGenerator(["chain_sum", "chainsum"])
  msg = one_line(e)
  assert "'chainsum'" in msg and "chain_sum" in msg and "leg_counting" in msg
  with pytest.raises(ConfigError) as e:
    GymGenerator(["chain_sum", "basic_arithmetic"], levels=(2, 6))
  msg = one_line(e)
  assert "6" in msg and "basic_arithmetic" in msg and "1..5" in msg
  with pytest.raises(ConfigError) as e:
    GymGenerator(["chain_sum"], levels=(0,))
  assert "0" in one_line(e) and "1..11" in one_line(e)


class _Fake(rg.dataset.ProceduralDataset):
  """A task that fails: always making (fail="make"), on a quarter of its seeds ("some") or
  scoring ("score"); or makes its problems when built ("pregen")."""

  def __init__(self, config):
    super().__init__(config=config, seed=config.seed, size=config.size)
    # fail="pregen": made when built, as acre and gsm_symbolic do (reseeding a copy can't work)
    self.made = [self.seed * 7 + j for j in range(self.size)] if config.fail == "pregen" else None

  def __getitem__(self, idx):
    if self.config.fail == "make" or (self.config.fail == "some" and self.seed // 4 % 4 == 0):
      raise RuntimeError("boom\nsecond line")
    x = self.config.n if self.made is None else self.made[idx]
    return {"question": f"{x} + 1 =", "answer": str(x + 1),
            "metadata": {"seed": self.seed, "pair": (x, 1)}}

  def score_answer(self, answer, entry):
    """1.0 for the answer, on the entry as made; 0.5 on its JSON copy (pair a list)."""
    if self.config.fail == "score":
      raise KeyError("missing")
    if answer != entry["answer"]:
      return 0.0
    return 1.0 if isinstance(entry["metadata"]["pair"], tuple) else 0.5


class _FakeCurriculum(rg.coaching.BaseCurriculum):
  """Levels n = 1, 2, 3, 4; the config rejects n = 3 (as caesar_cipher's top rotation)."""

  def __init__(self):
    super().__init__("FakeCurriculum", _FakeConfig)
    self._define_attributes(rg.coaching.attributes.ScalarAttributeDefinition(
        name="n", field_name="n", levels=[1, 2, 3, 4]))


@dataclasses.dataclass
class _FakeConfig:
  n: int = 1
  fail: str = ""
  seed: int | None = None
  size: int = 500

  def validate(self):
    assert self.n != 3, "n must not be 3"


def _fake_task(monkeypatch, fail, curriculum=False, levels=()):
  config = type("FakeConfig", (_FakeConfig,), {"__annotations__": {"fail": str}, "fail": fail})
  config = dataclasses.dataclass(config)
  monkeypatch.setitem(reasoning_gym.factory.DATASETS, "fake_task", (_Fake, config))
  if curriculum:
    monkeypatch.setitem(reasoning_gym.factory.CURRICULA, "fake_task", _FakeCurriculum)
  else:
    monkeypatch.delitem(reasoning_gym.factory.CURRICULA, "fake_task", raising=False)
  return GymGenerator(["fake_task"], levels)


def test_task_failures_are_one_line(monkeypatch):
  g = _fake_task(monkeypatch, "make")
  assert g.cells() == (Cell("fake_task", 1),)  # no curriculum: one level
  with pytest.raises(ConfigError) as e:
    g.make(Cell("fake_task", 1), 0, 0, 2)
  assert one_line(e) == ("reasoning-gym task 'fake_task' level 1 failed to generate a problem "
                         "(RuntimeError: boom second line)")
  with pytest.raises(ConfigError) as e:
    _fake_task(monkeypatch, "make", levels=(2,))
  assert "fake_task" in one_line(e) and "2" in one_line(e) and "one level, 1" in one_line(e)
  g = _fake_task(monkeypatch, "score")
  p = g.make(Cell("fake_task", 1), 0, 0, 1)[0]
  with pytest.raises(ConfigError) as e:
    g.score(p, "#### 2")
  assert "'fake_task'" in one_line(e) and "level 1" in one_line(e) and "KeyError" in one_line(e)


def test_a_seed_that_fails_gets_the_next(monkeypatch):
  g = _fake_task(monkeypatch, "some")
  cell = Cell("fake_task", 1)
  problems = g.make(cell, 0, 0, 12)
  seeds = [p.metadata["gym_seed"] for p in problems]
  assert all(s // 4 % 4 != 0 and s % 4 == 0 for s in seeds)
  retried = [s != GymGenerator.gym_seed(cell, "train", 0, i) for i, s in enumerate(seeds)]
  assert any(retried) and not all(retried)
  assert problems == g.make(cell, 0, 0, 12)
  assert all(g.score(p, f"#### {p.answer}") == 1.0 for p in problems)


def test_levels_with_an_invalid_config_are_left_out(monkeypatch):
  g = _fake_task(monkeypatch, "", curriculum=True)
  assert [c.level for c in g.cells()] == [1, 2, 4]
  assert [g.make(Cell("fake_task", lv), 0, 0, 1)[0].answer for lv in (1, 2, 4)] == ["2", "3", "5"]
  with pytest.raises(ConfigError) as e:
    _fake_task(monkeypatch, "", curriculum=True, levels=(1, 3))
  msg = one_line(e)
  assert "3" in msg and "'fake_task'" in msg and "levels 1..2, 4" in msg
  assert "n must not be 3" in msg


def test_missing_extra_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if not installed
  with pytest.raises(ConfigError) as e:
    GymGenerator(["chain_sum"])
  assert 'pip install -e ".[gym]"' in one_line(e)


def test_module_imports_without_the_extra():
  code = ("import sys; sys.modules['reasoning_gym'] = None\n"
          "import paced_jax.data.gym as g\n"
          "try:\n  g.GymGenerator(['chain_sum'])\n"
          "except g.ConfigError as e:\n  print('ERR', e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ERR ") and 'pip install -e ".[gym]"' in out.stdout


def test_same_problems_in_another_process(gen):
  """A resumed run remakes the same problems: nothing depends on the process (hash seeds)."""
  code = ("import json\nfrom paced_jax.data.gym import GymGenerator\n"
          "from paced_jax.data.generators import Cell\n"
          f"g = GymGenerator({list(TASKS)!r})\n"
          "print(json.dumps([[p.prompt, p.answer, p.metadata['gym_seed']] for t in g.tasks "
          "for p in g.make(Cell(t, 3), 9, 0, 4, 'test')]))\n")
  want = [[p.prompt, p.answer, p.metadata["gym_seed"]] for t in TASKS
          for p in gen.make(Cell(t, 3), 9, 0, 4, "test")]
  for hash_seed in ("1", "2"):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == want


def test_scores_on_the_entry_as_the_task_made_it(monkeypatch):
  """Scorers may need the entry's own types (tuples): score remakes it from gym_seed; a
  problem it can't remake (another reasoning-gym version) is scored on the saved JSON copy."""
  g = _fake_task(monkeypatch, "")
  p = g.make(Cell("fake_task", 1), 0, 0, 1)[0]
  assert p.metadata["gym_entry"]["metadata"]["pair"] == [1, 1]
  assert g.score(p, "#### 2") == 1.0
  saved = {k: v for k, v in p.metadata.items() if k != "gym_seed"}
  assert g.score(dataclasses.replace(p, metadata=saved), "#### 2") == 0.5


def test_a_task_made_when_built_gets_a_fresh_dataset_per_problem(monkeypatch):
  g = _fake_task(monkeypatch, "pregen")
  cell = Cell("fake_task", 1)
  problems = g.make(cell, 0, 0, 6)
  assert len({p.prompt for p in problems}) == 6
  for p in problems:
    s = p.metadata["gym_seed"]
    assert p.answer == str(s * 7 + 1) == reasoning_gym.factory.create_dataset(
        "fake_task", seed=s, size=1)[0]["answer"]
