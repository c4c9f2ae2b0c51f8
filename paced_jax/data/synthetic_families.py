"""The problem families of the synthetic reasoning suite.

Each family turns `(rng, level)` into `(prompt, answer, solution)`. Prompts are one line ending in
a newline, so the response starts on the next line. Solutions are short scratchpads of small, local
steps (one column, one reduction, one remainder per line), which a ~1M-parameter character model
can learn at the easy levels; the number and size of the steps grow with the level, and so does
the chance of one slip. Every solution ends with the final-answer line `#### <answer>`.

  family  level L                                 prompt             first scratch line
  add     two (L+1)-digit numbers                 "4729+3810=?"      "9+0+0=9" (digit+digit+carry)
  mul     digits of (a, b): (2,1) (3,1) (2,2)     "347*26=?"         "347*6=2082" (partials);
          (3,2) (4,2) (5,2) (4,3) (5,3)                              b of one digit: "7*8+0=56"
  expr    L+1 operations (+ - *) on digits 1..9   "3+4*2-5=?"        "3+8-5" (one reduction)
  mod     (L+2)-digit number % m; m in 2..9,      "4729%7=?"         "4%7=4" (remainder so far)
          m in 11..19 from level 4
  sort    L+2 digits                              "sort 5,3,8,1,3"   "1x1 3x2 5x1 8x1" (counts)
  count   a letter of abcde in 3L+4 letters       "count a in abca"  "1112" (running count)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

MARKER = "####"
MAX_LEVELS = 8  # the tables below define levels 1..8; level 5 is the default's hardest
MAX_SOLUTION_CHARS = 120  # fits the default 128-token response budget with an end token

Generated = tuple[str, str, str]  # (prompt, answer, solution)


@dataclasses.dataclass(frozen=True)
class Family:
  """One family: `make(rng, level)` draws a problem; `perturb(answer)` returns a wrong answer
  of the same shape (used to check that the verifier rejects it)."""

  name: str
  make: Callable[[np.random.Generator, int], Generated]
  perturb: Callable[[str], str]


def _finish(prompt: str, answer: str, steps: list[str]) -> Generated:
  return prompt + "\n", answer, "\n".join([*steps, f"{MARKER} {answer}"])


def _number(rng: np.random.Generator, digits: int) -> int:
  """A number with exactly `digits` digits (no leading zero)."""
  return int(rng.integers(10 ** (digits - 1), 10**digits))


def _add(rng: np.random.Generator, level: int) -> Generated:
  a, b = _number(rng, level + 1), _number(rng, level + 1)
  steps, carry = [], 0
  for da, db in zip(reversed(str(a)), reversed(str(b))):
    total = int(da) + int(db) + carry
    steps.append(f"{da}+{db}+{carry}={total}")
    carry = total // 10
  return _finish(f"{a}+{b}=?", str(a + b), steps)


_MUL_DIGITS = ((2, 1), (3, 1), (2, 2), (3, 2), (4, 2), (5, 2), (4, 3), (5, 3))


def _mul(rng: np.random.Generator, level: int) -> Generated:
  da, db = _MUL_DIGITS[level - 1]
  a = _number(rng, da)
  # Multiplier digits are 1..9: a zero digit would give a degenerate "a*0=0" partial product.
  b = int("".join(map(str, rng.integers(1, 10, size=db).tolist())))
  steps = []
  if db == 1:
    carry = 0
    for d in reversed(str(a)):
      total = int(d) * b + carry
      steps.append(f"{d}*{b}+{carry}={total}")
      carry = total // 10
  else:
    partials = []
    for k, d in enumerate(reversed(str(b))):
      m = int(d) * 10**k
      partials.append(a * m)
      steps.append(f"{a}*{m}={a * m}")
    steps.append("+".join(map(str, partials)) + f"={a * b}")
  return _finish(f"{a}*{b}=?", str(a * b), steps)


def _expr(rng: np.random.Generator, level: int) -> Generated:
  while True:  # long products can overflow the response budget at levels 7-8: redraw those
    drawn = _expr_once(rng, level)
    if len(drawn[2]) <= MAX_SOLUTION_CHARS:
      return drawn


def _expr_once(rng: np.random.Generator, level: int) -> Generated:
  operands = rng.integers(1, 10, size=level + 2).tolist()
  ops = ["+-*"[k] for k in rng.integers(3, size=level + 1).tolist()]
  tokens: list[int | str] = [operands[0]]
  for op, x in zip(ops, operands[1:]):
    tokens += [op, x]
  prompt = "".join(map(str, tokens))
  # Rewrite rule: the leftmost '*' first, then the leftmost '+'/'-' (standard precedence, left
  # to right). Operands are positive, so a negative value can only ever stand first: no "--".
  steps = []
  while len(tokens) > 1:
    i = tokens.index("*") if "*" in tokens else 1
    x, op, y = tokens[i - 1], tokens[i], tokens[i + 1]
    value = x * y if op == "*" else x + y if op == "+" else x - y
    tokens[i - 1:i + 2] = [value]
    steps.append("".join(map(str, tokens)))
  return _finish(f"{prompt}=?", steps[-1], steps[:-1])  # the last reduction is the answer


def _mod(rng: np.random.Generator, level: int) -> Generated:
  a = _number(rng, level + 2)
  m = int(rng.integers(2, 10) if level <= 3 else rng.integers(11, 20))
  steps, r = [], 0
  for d in str(a):
    x = r * 10 + int(d)
    r = x % m
    steps.append(f"{x}%{m}={r}")
  return _finish(f"{a}%{m}=?", str(r), steps)


def _sort(rng: np.random.Generator, level: int) -> Generated:
  digits = rng.integers(0, 10, size=level + 2).tolist()
  counts = " ".join(f"{d}x{digits.count(d)}" for d in sorted(set(digits)))
  # Commas, not spaces: a verifier that drops spaces to read numbers would take "0 1 3" for 13
  # and accept "1 3"; "0,1,3" is never read as a number.
  answer = ",".join(map(str, sorted(digits)))
  return _finish("sort " + ",".join(map(str, digits)), answer, [counts])


_LETTERS = "abcde"


def _count(rng: np.random.Generator, level: int) -> Generated:
  target = _LETTERS[int(rng.integers(len(_LETTERS)))]
  while True:  # the running count is written one digit per character, so keep counts <= 9
    picks = rng.integers(len(_LETTERS), size=3 * level + 4).tolist()
    text = "".join(_LETTERS[k] for k in picks)
    if text.count(target) <= 9:
      break
  running, n = [], 0
  for ch in text:
    n += ch == target
    running.append(str(n))
  return _finish(f"count {target} in {text}", str(n), ["".join(running)])


def bump_last_digit(answer: str) -> str:
  """A different number of the same length: the last digit d becomes (d + 1) % 10."""
  i = max(i for i, ch in enumerate(answer) if ch.isdigit())
  return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]


def _unsort(answer: str) -> str:
  """Swaps the first adjacent unequal pair: same digits, no longer sorted."""
  items = answer.split(",")
  for i in range(len(items) - 1):
    if items[i] != items[i + 1]:
      items[i], items[i + 1] = items[i + 1], items[i]
      return ",".join(items)
  return bump_last_digit(answer)  # all digits equal


FAMILIES: dict[str, Family] = {
    f.name: f for f in (
        Family("add", _add, bump_last_digit),
        Family("mul", _mul, bump_last_digit),
        Family("expr", _expr, bump_last_digit),
        Family("mod", _mod, bump_last_digit),
        Family("sort", _sort, _unsort),
        Family("count", _count, bump_last_digit),
    )
}
