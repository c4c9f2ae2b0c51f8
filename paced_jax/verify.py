"""Verifiers: `verify(response_text, problem) -> bool`, and batch verification on the host.

Built-ins (pick one with `load_verifier`):
  "exact"  `exact_match`: the final answer (last `\\boxed{...}`, else the text after the last
           answer marker such as `####` or `Answer:`) equals `problem.answer` after
           normalisation; numbers compare as exact rationals, so 3.0 == 3 and 1/2 == 0.5.
  "math"   `MathEquiv`: symbolic equivalence by the `math-verify` package, each call in a worker
           process with a time limit; a hang or crash counts as incorrect and is counted in its
           `VerifyCounts`.
  "pkg.mod:fn"  any importable callable with the same signature, run by `Guarded`: each call
           in a daemon thread bounded by `paced.verify_timeout_s` (a hang counts as wrong and as a
           "timeout", and never blocks Ctrl-C or exit); an exception is one `VerifierError`
           line naming the verifier, problem and exception, or with
           `paced.verifier_errors=wrong` counts as wrong (an "error"). It must return a bool
           or a score in [0, 1] (only 1 passes); anything else is one line (`verdict`).
A run owns its counters: `verifier_from_config(cfg, counts)` with the run's `VerifyCounts`.

Pass rates come from these raw outcomes, never from a shaped reward.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import importlib
import multiprocessing
import numbers
import re
import threading
from fractions import Fraction
from typing import Callable, Protocol, Sequence

import numpy as np

from paced_jax.config import ConfigError
from paced_jax.data.schema import Problem


class Verifier(Protocol):

  def __call__(self, response_text: str, problem: Problem) -> bool:
    ...


class VerifyCounts:
  """Verifier incidents ("timeout", "error", "math_timeout", "math_error"), counted by the
  verifiers that a run builds with it (`verifier_from_config(cfg, counts)`) and read once per
  refresh round; thread-safe (checks run in worker threads)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._all: collections.Counter = collections.Counter()
    self._taken: collections.Counter = collections.Counter()

  def add(self, name: str) -> None:
    with self._lock:
      self._all[name] += 1

  def __getitem__(self, name: str) -> int:
    with self._lock:
      return self._all[name]

  def take(self) -> dict[str, float]:
    """verify/timeouts and verify/errors since the previous call (one refresh round's)."""
    with self._lock:
      new = self._all - self._taken
      self._taken.update(new)
    return {"verify/timeouts": float(new["timeout"] + new["math_timeout"]),
            "verify/errors": float(new["error"] + new["math_error"])}


class VerifierError(ConfigError):
  """A user verifier raised (paced.verifier_errors=error); one line."""


def verdict(value, name: str, problem) -> bool:
  """A verifier's return value as pass/fail: a bool, or a number in [0, 1] (a score; only 1
  passes, so partial credit counts as wrong). Anything else (a string such as "no", None, a
  score outside [0, 1]) is a VerifierError line: truthiness would silently count "no" as
  correct and None as wrong."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Real) and 0 <= value <= 1:
    return float(value) >= 1.0
  raise VerifierError(f"paced.verifier={name!r} returned {value!r} ({type(value).__name__}) on "
                      f"problem {getattr(problem, 'id', '?')!r}; a verifier returns a bool, or a "
                      "score in [0, 1] of which only 1 passes")


class Guarded:
  """A user verifier under a time limit, each call in a daemon thread (a hung call is left
  behind, never joined: it cannot block Ctrl-C, the run or interpreter exit).

  Threads cannot be killed, so hung calls are bounded instead: once `max_stuck` calls are
  still running past their time limit, the next call is a `VerifierError` line (a verifier
  that hangs on most inputs would otherwise pile up threads, and CPU if it spins)."""

  def __init__(self, fn: Callable, name: str, timeout_s: float = 5.0, errors: str = "error",
               max_stuck: int = 16, counts: VerifyCounts | None = None):
    self.fn, self.name, self.timeout_s, self.errors = fn, name, float(timeout_s), errors
    self.max_stuck = max_stuck
    self.counts = VerifyCounts() if counts is None else counts
    self._lock = threading.Lock()
    self._stuck = 0  # calls past their time limit that have not returned yet

  def __call__(self, response_text: str, problem: Problem) -> bool:
    with self._lock:
      stuck = self._stuck
    if stuck >= self.max_stuck:
      raise VerifierError(f"paced.verifier={self.name!r} hangs: {stuck} of its calls are still "
                          f"running past paced.verify_timeout_s={self.timeout_s:g} (the last on "
                          f"problem {getattr(problem, 'id', '?')!r}); fix the verifier, or "
                          "raise paced.verify_timeout_s if it is only slow")
    box: dict = {}
    done = threading.Event()

    def call():
      try:
        box["ok"] = verdict(self.fn(response_text, problem), self.name, problem)
      except BaseException as e:  # noqa: BLE001 -- reported in the caller's thread
        box["error"] = e
      finally:
        with self._lock:
          done.set()
          if box.get("late"):
            self._stuck -= 1

    threading.Thread(target=call, daemon=True, name="paced-verifier").start()
    if not done.wait(self.timeout_s):
      with self._lock:
        if not done.is_set():  # still running: counted until it returns
          box["late"] = True
          self._stuck += 1
      self.counts.add("timeout")
      return False
    if "error" not in box:
      return box["ok"]
    e = box["error"]
    if isinstance(e, VerifierError):  # a bad return value: never counted as an answer
      raise e
    if self.errors == "wrong":
      self.counts.add("error")
      return False
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise VerifierError(f"paced.verifier={self.name!r} raised on problem "
                        f"{getattr(problem, 'id', '?')!r}: {type(e).__name__}: {msg}; fix the "
                        "verifier, or set paced.verifier_errors=wrong to count such responses "
                        "as wrong")


# ----------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced."""
  starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
  for start in reversed(starts):
    depth = 1
    for i in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        return text[start:i]
  return None


def extract_answer(text: str, marker: str = "####") -> str | None:
  """The final answer of a response: last boxed content, else the rest of the line after the
  LAST `marker`; None when neither is present."""
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed
  if marker:
    at = text.rfind(marker)
    if at >= 0:
      return text[at + len(marker):].split("\n", 1)[0]
  return None


_FRAC = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize_answer(text: str) -> str:
  """Whitespace, `$`, `\\text{}`, `\\left/\\right`, thousands commas and a trailing period."""
  s = text.strip()
  s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
  s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ")
  s = re.sub(r"\s+", " ", s).strip()
  s = _THOUSANDS.sub("", s)
  while s.endswith(".") and not s.endswith(".."):
    s = s[:-1].rstrip()
  return s


MAX_EXPONENT = 400


def as_number(s: str) -> Fraction | None:
  """Exact rational value of an integer, decimal, `a/b`, `\\frac{a}{b}` or percentage string."""
  s = s.replace(" ", "")
  m = _FRAC.match(s)
  if m:
    s = f"{m.group(1)}/{m.group(2)}"
  scale = Fraction(1)
  if s.endswith("%") or s.endswith("\\%"):
    s, scale = s.rstrip("%").rstrip("\\"), Fraction(1, 100)
  m = re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE]([+-]?\d+))?(/[+-]?\d+(\.\d*)?)?", s)
  if not m:
    return None
  # Fraction("1e999999999") builds that integer exactly, which takes hours: a sampled
  # response must not be able to stall verification. No answer we compare needs |exp| > 400.
  exp = m.group(4)
  if exp is not None and (len(exp.lstrip("+-")) > 4 or abs(int(exp)) > MAX_EXPONENT):
    return None
  try:
    return Fraction(s) * scale
  except (ValueError, ZeroDivisionError):
    return None


def answers_equal(pred: str, gold: str) -> bool:
  a, b = normalize_answer(pred), normalize_answer(gold)
  if a == b:
    return True
  x, y = as_number(a), as_number(b)
  return x is not None and y is not None and x == y


def exact_match(response_text: str, problem: Problem, marker: str = "####") -> bool:
  """True when the response's final answer equals `problem.answer` (see module docstring)."""
  pred = extract_answer(response_text, marker)
  return pred is not None and answers_equal(pred, problem.answer)


# ----------------------------------------------------------------------------- math-verify


def _math_verify_worker(response_text: str, gold: str, timeout_s: int) -> bool:
  # Runs in a worker process's main thread, where math-verify's signal-based timeouts work.
  from math_verify import parse, verify

  gold_parsed = parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$",
                      parsing_timeout=timeout_s)
  return bool(verify(gold_parsed, parse(response_text, parsing_timeout=timeout_s),
                     timeout_seconds=timeout_s))


def _warm_up(_):
  _math_verify_worker("$1$", "1", 5)  # imports sympy and builds the LaTeX parser once


class MathEquiv:
  """math-verify equivalence, each call in a spawned worker process bounded by `timeout_s`.

  A call that overruns (a sympy blow-up) or crashes returns False and counts
  "math_timeout" / "math_error" in `counts`; after a timeout the worker pool is
  replaced so the runaway process is killed rather than left burning a core.
  """

  def __init__(self, timeout_s: float = 5.0, workers: int = 2,
               checker: Callable[[str, str, int], bool] = _math_verify_worker,
               counts: VerifyCounts | None = None):
    try:
      import math_verify  # noqa: F401
    except ImportError:
      raise ConfigError("verifier 'math' needs the math-verify package: pip install "
                        "'math-verify[antlr4_13_2]'") from None
    # checker(response_text, gold_answer, inner_timeout_s) must be a module-level function (it
    # is pickled to the workers); the default wraps math_verify.parse/verify.
    self.timeout_s, self.workers, self.checker = float(timeout_s), workers, checker
    self.counts = VerifyCounts() if counts is None else counts
    self._pool = None
    self._lock = threading.Lock()

  def _get_pool(self):
    with self._lock:
      if self._pool is None:
        # spawn, not fork: the parent runs JAX threads that a fork would copy mid-flight.
        pool = multiprocessing.get_context("spawn").Pool(self.workers)
        # Import sympy/math-verify in every worker now, so the time limit measures checking only.
        pool.map(_warm_up, range(self.workers))
        self._pool = pool
      return self._pool

  def _reset(self, pool) -> None:
    with self._lock:
      if self._pool is pool:
        self._pool = None
    pool.terminate()

  def __call__(self, response_text: str, problem: Problem) -> bool:
    pool = self._get_pool()
    inner = max(1, int(self.timeout_s / 2))  # parse and verify each get half
    res = pool.apply_async(self.checker, (response_text, problem.answer, inner))
    try:
      return res.get(timeout=self.timeout_s)
    except multiprocessing.TimeoutError:
      self.counts.add("math_timeout")
      self._reset(pool)
      return False
    except Exception:  # noqa: BLE001 -- malformed math is "incorrect", not a crash of the run
      self.counts.add("math_error")
      return False

  def close(self) -> None:
    with self._lock:
      pool, self._pool = self._pool, None
    if pool is not None:
      pool.terminate()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 -- interpreter shutdown
      pass


# ----------------------------------------------------------------------------- loading, batches


def load_verifier(spec: str, marker: str = "####", timeout: float = 5.0,
                  workers: int = 2, errors: str = "error",
                  counts: VerifyCounts | None = None) -> Verifier:
  """A verifier for "exact", "math" or "package.module:function" (`Guarded`: time limit
  `timeout`, exceptions per `errors`); incidents go to `counts`; a bad spec -> ConfigError."""
  if spec == "exact":
    return functools.partial(exact_match, marker=marker)
  if spec == "math":
    return MathEquiv(timeout, workers, counts=counts)
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ConfigError(f"paced.verifier={spec!r} is not 'exact', 'math' or "
                      "'package.module:function'")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # any failure of the user's module (ImportError, SyntaxError, ...)
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise ConfigError(f"paced.verifier={spec!r}: cannot import {module_name!r} "
                      f"({type(e).__name__}: {first})") from None
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise ConfigError(f"paced.verifier={spec!r}: {module_name} has no callable {attr!r}")
  if getattr(fn, "__module__", None) == __name__:  # this module's own: trusted, unguarded
    return fn
  return Guarded(fn, spec, timeout, errors, counts=counts)


def verifier_from_config(cfg, counts: VerifyCounts | None = None) -> Verifier:
  """The verifier a run's `PacedConfig` names (marker, timeout and workers included); its
  incidents are counted in `counts` (the run's)."""
  return load_verifier(cfg.verifier, cfg.answer_marker, cfg.verify_timeout_s,
                       workers=cfg.verify_workers, errors=cfg.verifier_errors, counts=counts)


def verify_batch(texts: Sequence[str], problems: Sequence[Problem],
                 verifier: Verifier | Callable = exact_match, *,
                 executor: concurrent.futures.Executor | None = None,
                 max_workers: int = 4) -> np.ndarray:
  """bool[len(texts)]: verifier(texts[i], problems[i]) for every i, in a thread pool.

  Threads overlap the host work with device sampling (JAX releases the GIL while it runs) and
  let `MathEquiv` keep several worker processes busy. Exceptions from a user verifier propagate:
  a buggy verifier must not silently read as "every answer wrong".
  """
  if len(texts) != len(problems):
    raise ValueError(f"verify_batch got {len(texts)} texts but {len(problems)} problems")
  if executor is None:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers)
    try:
      return verify_batch(texts, problems, verifier, executor=pool)
    finally:  # on an error or Ctrl-C, queued checks are dropped, not run to the end
      pool.shutdown(wait=False, cancel_futures=True)
  return np.fromiter(executor.map(lambda tp: bool(verifier(*tp)), zip(texts, problems)), bool,
                     count=len(texts))
