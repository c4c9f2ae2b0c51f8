"""The synthetic reasoning suite: correctness of every problem, determinism, splits, TFDS."""

import collections
import dataclasses
import os
import pickle
import re

import numpy as np
import pytest

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data import synthetic
from paced_jax.data.synthetic import (MARKER, MAX_LEVELS, families, partition, perturb,
                                      synthetic_source)
from paced_jax.verify import exact_match

ALL_LEVELS = DataConfig(synthetic_levels=MAX_LEVELS, synthetic_size=20 * 6 * MAX_LEVELS)


@pytest.fixture(scope="module")
def all_levels():
  """20 train problems of every (family, level), levels 1..8."""
  src = synthetic_source(ALL_LEVELS, "train", seed=1)
  return [src[i] for i in range(len(src))]


def _oracle(problem):
  """The answer computed from the prompt alone, independently of the generator."""
  prompt = problem.prompt.rstrip("\n")
  family = problem.metadata["family"]
  if family in ("add", "mul", "expr", "mod"):
    expr = prompt.removesuffix("=?")
    assert re.fullmatch(r"[0-9+*%-]+", expr), expr
    return str(eval(expr))  # digits and + - * % only, checked above
  if family == "sort":
    return ",".join(sorted(prompt.removeprefix("sort ").split(",")))
  letter, text = re.fullmatch(r"count (\w) in (\w+)", prompt).groups()
  return str(text.count(letter))


def _column_chain(steps, top, factor=None):
  """Column steps "d+e+c=s" / "d*e+c=s": digits right to left, carry = previous s // 10, and
  the answer is the last sum followed by the earlier units digits."""
  carry, sums = 0, []
  for k, step in enumerate(steps):
    digit, other, c, total = map(int, re.fullmatch(r"(\d)[+*](\d+)\+(\d)=(\d+)", step).groups())
    assert (digit, c) == (int(top[-1 - k]), carry), steps
    if factor is not None:
      assert other == factor, steps
    carry = total // 10
    sums.append(total)
  return str(sums[-1]) + "".join(str(t % 10) for t in reversed(sums[:-1]))


def _check_chain(problem, steps):
  """The steps connect: each one uses the result of the one before, as the format says."""
  prompt, family = problem.prompt.rstrip("=?\n"), problem.metadata["family"]
  if family == "add":
    a, b = prompt.split("+")
    assert [int(s.split("+")[1]) for s in steps] == [int(d) for d in reversed(b)]
    assert _column_chain(steps, a) == problem.answer
  elif family == "mul":
    a, b = prompt.split("*")
    if len(b) == 1:
      assert _column_chain(steps, a, factor=int(b)) == problem.answer
    else:
      multipliers = [int(d) * 10**k for k, d in enumerate(reversed(b))]
      assert [s.split("=")[0] for s in steps[:-1]] == [f"{a}*{m}" for m in multipliers]
      partials = [s.split("=")[1] for s in steps[:-1]]
      assert steps[-1] == "+".join(partials) + f"={problem.answer}"
  elif family == "mod":
    number, m = prompt.split("%")
    r = 0
    for digit, step in zip(number, steps, strict=True):
      assert step.startswith(f"{r * 10 + int(digit)}%{m}="), steps
      r = int(step.split("=")[1])
    assert str(r) == problem.answer
  elif family == "expr":  # one reduction a line: one operator fewer each time
    ops = [len(re.findall(r"(?<=\d)[+*-]", line)) for line in (prompt, *steps)]
    assert ops == list(range(ops[0], 0, -1)), (prompt, steps)


def _check_scratchpad(problem):
  """Every intermediate step of the reference solution is itself correct."""
  *steps, last = problem.solution.split("\n")
  assert last == f"{MARKER} {problem.answer}"
  family = problem.metadata["family"]
  _check_chain(problem, steps)
  for step in steps:
    if family in ("add", "mul", "mod"):
      lhs, rhs = step.split("=")
      assert re.fullmatch(r"[0-9+*%]+", lhs), step
      assert eval(lhs) == int(rhs), (problem.prompt, step)
    elif family == "expr":  # each rewrite keeps the value of the expression
      assert eval(step) == int(problem.answer), (problem.prompt, step)
    elif family == "sort":
      digits = problem.prompt.split()[1].split(",")
      assert step == " ".join(f"{d}x{digits.count(d)}" for d in sorted(set(digits)))
    else:
      letter, text = problem.prompt.split()[1], problem.prompt.split()[3]
      assert step == "".join(str(text[:k + 1].count(letter)) for k in range(len(text)))


def test_every_reference_solution_is_correct_and_verified(all_levels):
  seen = collections.Counter()
  for p in all_levels:
    seen[p.metadata["family"], p.difficulty] += 1
    assert p.answer == _oracle(p), p
    _check_scratchpad(p)
    assert exact_match(p.solution, p, marker=MARKER), p
    wrong = perturb(p.metadata["family"], p.answer)
    assert wrong != p.answer and wrong != _oracle(p)
    bad_solution = p.solution.rsplit(MARKER, 1)[0] + f"{MARKER} {wrong}"
    assert not exact_match(bad_solution, p, marker=MARKER), (p, wrong)
  assert set(seen) == {(f, lv) for f in families() for lv in range(1, MAX_LEVELS + 1)}


def test_sort_answers_are_not_read_as_numbers():
  # "0,0,5" must not equal "5": a dropped digit is a wrong sort.
  p = dataclasses.replace(synthetic_source(DataConfig(), "train")[20], answer="0,0,5")
  assert p.metadata["family"] == "sort"
  assert not exact_match(f"{MARKER} 5", p)
  assert exact_match(f"{MARKER} 0,0,5", p)


def test_characters_and_length_bounds(all_levels):
  for p in all_levels:
    assert all(32 <= ord(c) < 127 or c == "\n" for c in p.prompt + p.solution), p
    assert p.prompt.endswith("\n") and p.prompt.count("\n") == 1
    assert len(p.prompt) <= 48, p
    assert len(p.solution) <= (96 if p.difficulty <= 5 else 120), p


def test_difficulty_grows_with_level(all_levels):
  lengths = collections.defaultdict(list)
  for p in all_levels:
    lengths[p.metadata["family"], p.difficulty].append(len(p.solution))
  for f in families():
    means = [np.mean(lengths[f, lv]) for lv in range(1, MAX_LEVELS + 1)]
    assert all(a < b for a, b in zip(means, means[1:])), (f, means)


def test_deterministic_random_access():
  cfg = DataConfig(synthetic_size=300)
  a, b = synthetic_source(cfg, "train", seed=0), synthetic_source(cfg, "train", seed=0)
  order = [257, 3, 99, 3, 0, 299]
  assert [a[i] for i in order] == [b[i] for i in reversed(order)][::-1]
  assert a[-1] == a[299] and pickle.loads(pickle.dumps(a))[42] == a[42]
  with pytest.raises(IndexError):
    a[300]
  other = synthetic_source(cfg, "train", seed=1)
  prompts = [a[i].prompt for i in range(60)]
  assert sum(p != other[i].prompt for i, p in enumerate(prompts)) >= 55
  ids = [a[i].id for i in range(len(a))]
  assert len(set(ids)) == len(ids) and ids[7] == "mul3/train/s0/7"


def test_round_robin_mixing_and_split_sizes():
  cfg = DataConfig(synthetic_size=95, synthetic_levels=3, synthetic_families=("mod", "count"))
  train = synthetic_source(cfg, "train", seed=2)
  cells = [(p.metadata["family"], p.difficulty) for p in (train[i] for i in range(6))]
  assert cells == [("mod", 1), ("mod", 2), ("mod", 3), ("count", 1), ("count", 2), ("count", 3)]
  assert len(train) == 95
  test = synthetic_source(cfg, "test", seed=2)
  counts = collections.Counter((p.metadata["family"], p.difficulty)
                               for p in (test[i] for i in range(len(test))))
  assert counts == {(f, lv): synthetic.TEST_PER_CELL for f in ("mod", "count") for lv in (1, 2, 3)}
  probe = synthetic_source(cfg, "probe", seed=2)
  assert len(probe) == synthetic.PROBE_PER_CELL * 2 * synthetic.PROBE_LEVELS
  assert {probe[i].difficulty for i in range(len(probe))} == {1, 2}


def test_held_out_splits_never_contain_a_train_prompt():
  cfg = DataConfig()  # the default pool: 2000 problems, 6 families, 5 levels
  train = {synthetic_source(cfg, "train")[i].prompt for i in range(cfg.synthetic_size)}
  assert all(partition(p) == "train" for p in train)
  for split in ("test", "probe"):
    src = synthetic_source(cfg, split, seed=7)  # any seed: the partition is seed-free
    held = {src[i].prompt for i in range(0, len(src), 2)}
    assert all(partition(p) == split for p in held)
    assert not held & train
  # The rule holds where collisions are most likely: the smallest cell (mul level 1, ~810
  # prompts) drawn far beyond its size.
  small = DataConfig(synthetic_families=("mul",), synthetic_levels=1, synthetic_size=3000)
  train_small = {synthetic_source(small, "train")[i].prompt for i in range(3000)}
  test_small = synthetic_source(small, "test")
  assert not {test_small[i].prompt for i in range(len(test_small))} & train_small


@pytest.mark.parametrize("change, message", [
    ({"synthetic_families": ("add", "division")}, "unknown 'division'"),
    ({"synthetic_families": ("add", "add")}, "twice"),
    ({"synthetic_levels": 0}, "synthetic_levels=0"),
    ({"synthetic_levels": MAX_LEVELS + 1}, f"synthetic_levels={MAX_LEVELS + 1}"),
    ({"synthetic_size": 0}, "synthetic_size=0"),
])
def test_bad_config_is_one_line_error(change, message):
  with pytest.raises(ConfigError, match=message) as e:
    synthetic_source(dataclasses.replace(DataConfig(), **change))
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="'validation'"):
    synthetic_source(DataConfig(), split="validation")


def test_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds

  cfg = DataConfig(synthetic_size=24, synthetic_levels=2, synthetic_families=("add", "sort"))
  name = synthetic.prepare_synthetic(str(tmp_path), cfg, seed=3)
  assert name == "paced_synthetic/n24_l2_s3_add-sort"
  sources = tfds.data_source(name, data_dir=str(tmp_path))
  assert set(sources) == {"train", "test", "probe"}
  files = [f for _, _, fs in os.walk(tmp_path) for f in fs]
  assert any(".array_record" in f for f in files) and not any("tfrecord" in f for f in files)
  for split, records in sources.items():
    src = synthetic_source(cfg, split, seed=3)
    assert len(records) == len(src)
    for i in range(0, len(src), 7):
      r, p = records[i], src[i]
      text = {k: r[k].decode() for k in ("id", "prompt", "answer", "solution", "family")}
      assert text == {"id": p.id, "prompt": p.prompt, "answer": p.answer,
                      "solution": p.solution, "family": p.metadata["family"]}
      assert int(r["difficulty"]) == p.difficulty
  assert synthetic.PacedSynthetic.name == "paced_synthetic"
  assert str(synthetic.PacedSynthetic.VERSION) == "1.0.0"
