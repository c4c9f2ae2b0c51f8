"""The problem schema shared by every source, the verifier and the frontier table."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
  """One training / evaluation problem with a verifiable answer.

  id: stable across runs (the PassRateTable is keyed by it).
  prompt: the question text, before any chat template.
  answer: what the verifier compares against (e.g. "42").
  solution: optional reference solution (step by step, ending with the answer marker).
  difficulty: optional integer level or bucket used for per-difficulty reports.
  """

  id: str
  prompt: str
  answer: str
  solution: str | None = None
  difficulty: int | None = None
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def problem_digests(problems: Sequence[Problem]) -> dict[str, str]:
  """id -> a short hash of what decides a problem's pass rate and training rows (prompt,
  answer, solution): a checkpoint's pool is recognised by content, not by its file's path."""
  return {p.id: hashlib.sha1(json.dumps([p.prompt, p.answer, p.solution]).encode()).hexdigest()[:16]
          for p in problems}


def pool_changes(saved: dict[str, str], now: dict[str, str]) -> str | None:
  """What changed between two `problem_digests` (None: the same problems, any order)."""
  added = [i for i in now if i not in saved]
  removed = [i for i in saved if i not in now]
  edited = [i for i in now if i in saved and now[i] != saved[i]]
  parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in
           (("ids added", added), ("ids removed", removed),
            ("problems edited (prompt, answer or solution)", edited)) if v]
  return "; ".join(parts) or None
