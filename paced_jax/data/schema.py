"""The problem schema shared by every source, the verifier and the frontier table."""

from __future__ import annotations

import dataclasses
from typing import Any


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
