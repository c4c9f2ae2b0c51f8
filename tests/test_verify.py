"""Verifiers: answer extraction, normalisation, math-verify with timeouts, loading, batches."""

import time

import numpy as np
import pytest

from paced_jax import verify as V
from paced_jax.config import ConfigError
from paced_jax.data.schema import Problem


def _p(answer, pid="p0"):
  return Problem(id=pid, prompt="q", answer=answer)


@pytest.mark.parametrize("text,answer,want", [
    ("so x = 4.\n#### 42", "42", True),  # synthetic-suite reference solutions
    ("#### 41\nno wait\n#### 42\n", "42", True),  # the LAST marker wins
    ("#### 42 apples and more", "42", False),
    ("#### 1,234,567", "1234567", True),
    ("#### $12.50", "12.5", True),
    ("#### 3.0", "3", True),
    ("#### 1/2", "0.5", True),
    ("#### 0.5", "\\frac{1}{2}", True),
    ("#### 50%", "0.5", True),
    ("#### -7.", "-7", True),
    ("#### 0.333", "1/3", False),
    ("#### olleh  ", "olleh", True),
    ("#### [1, 2, 3]", "[1, 2, 3]", True),
    ("the answer is \\boxed{\\frac{3}{4}} and then \\boxed{12}", "12", True),
    ("\\boxed{\\{1, \\{2\\}\\}} ", "\\{1, \\{2\\}\\}", True),
    ("\\boxed{x^{2}+{y}} #### 5", "x^{2}+{y}", True),  # boxed beats the marker
    ("\\boxed{3} \\boxed{4", "3", True),  # an unclosed last box falls back to the closed one
    ("I think it is 42", "42", False),  # no marker, no box: no extracted answer
    ("", "42", False),
    ("#### ", "42", False),
    ("\x00\x01 #### {{{{", "42", False),
])
def test_exact_match(text, answer, want):
  assert V.exact_match(text, _p(answer)) is want


def test_other_markers():
  assert V.exact_match("reasoning...\nAnswer: 17\n", _p("17"), marker="Answer:")
  assert not V.exact_match("reasoning...\n#### 17\n", _p("17"), marker="Answer:")
  verifier = V.load_verifier("exact", marker="Answer:")
  assert verifier("Answer: 9\nAnswer: 10", _p("10"))


def test_last_boxed_nested():
  assert V.last_boxed("a \\boxed{1} b \\boxed{\\sqrt{x^{2}}} c") == "\\sqrt{x^{2}}"
  assert V.last_boxed("no box") is None


def test_load_verifier_specs():
  assert V.load_verifier("paced_jax.verify:exact_match") is V.exact_match
  with pytest.raises(ConfigError, match="cannot import") as e:
    V.load_verifier("no_such_pkg.mod:fn")
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="no callable"):
    V.load_verifier("paced_jax.verify:nope")
  with pytest.raises(ConfigError, match="package.module:function"):
    V.load_verifier("fuzzy")


def test_verify_batch_order_and_errors():
  problems = [_p(str(i), f"p{i}") for i in range(50)]
  texts = [f"#### {i if i % 3 else i + 1}" for i in range(50)]
  got = V.verify_batch(texts, problems, V.exact_match, max_workers=4)
  np.testing.assert_array_equal(got, [i % 3 != 0 for i in range(50)])
  with pytest.raises(ValueError, match="2 texts but 1 problems"):
    V.verify_batch(["a", "b"], problems[:1])

  def broken(text, problem):
    raise RuntimeError("bug in user verifier")

  with pytest.raises(RuntimeError, match="bug in user"):
    V.verify_batch(["x"], problems[:1], broken)


def _scripted_checker(text, gold, timeout_s):
  # Runs in the worker process: "sleep" hangs, "crash" raises, anything else is math-verify.
  if gold == "sleep":
    time.sleep(30)
  if gold == "crash":
    raise ZeroDivisionError("sympy blew up")
  return V._math_verify_worker(text, gold, timeout_s)


def test_math_equiv_equivalences_timeout_and_crash():
  math = V.MathEquiv(timeout_s=3.0, workers=1, checker=_scripted_checker)
  try:
    assert math("The result is $\\frac{1}{2}$", _p("0.5"))
    assert math("so \\boxed{2\\sqrt{2}}", _p("\\sqrt{8}"))
    assert not math("\\boxed{3}", _p("4"))
    assert math("\\boxed{1}", _p("crash")) is False
    assert math.counts["math_error"] == 1
    t0 = time.perf_counter()
    assert math("\\boxed{1}", _p("sleep")) is False
    assert time.perf_counter() - t0 < 10  # bounded by the limit, not the checker's 30 s
    assert math.counts["math_timeout"] == 1
    assert math("\\boxed{7}", _p("7"))  # a fresh worker replaces the killed one
  finally:
    math.close()


def test_huge_exponents_cannot_stall_verification():
  # A sampled response ended in "#### 1e999999999"; Fraction would build that integer exactly
  # (hours). It is not a number we compare; it is simply not the answer.
  p = Problem(id="x", prompt="?", answer="1000")
  assert V.as_number("1e999999999") is None and V.as_number("1e" + "9" * 5000) is None
  assert not V.exact_match("#### 1e999999999", p)
  assert V.exact_match("#### 1e3", p) and V.as_number("2.5e-3") == V.as_number("1/400")
