"""The ONE table of divergences and of loss modes, and the questions a loss mode answers.

Pure Python at the bottom of the package (it imports nothing from paced_jax), so config.py can
validate against it: losses.py, fused_loss.py and step.py name or index its divergences, and
the loop, the data pipeline, the FLOP count and the model resolution ask it what a mode's rows
and teacher are instead of testing `loss.mode` each in its own way.

A divergence fixed for the whole run travels by name (host-known: one branch is compiled); one
that switches mid-run (two_stage) travels as a traced index into NAMES.

Functions of `cfg` read only cfg.loss.mode, cfg.loss.divergence, cfg.loss.two_stage_switch,
cfg.loss.teacher, cfg.train.steps and the model sections (any object with those attributes will
do).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Divergence:
  """One token-level divergence (losses.py defines them)."""

  name: str
  teacher: bool  # compares with the teacher's distribution (cross-entropy needs no teacher)
  # loss.teacher_top_k may restrict it to the teacher's top-k tokens. Forward KL only: the
  # student keeps its unrenormalised log-probabilities there, and a sum of q log(q / p) over a
  # support that q does not sum to 1 on is no divergence.
  top_k: bool
  # Defined on reference rows only: cross-entropy's targets are the row's response tokens, and
  # on the student's own rollout they would only teach it what it already samples.
  references_only: bool


DIVERGENCES = (
    Divergence("forward_kl", teacher=True, top_k=True, references_only=False),
    Divergence("reverse_kl", teacher=True, top_k=False, references_only=False),
    Divergence("jsd", teacher=True, top_k=False, references_only=False),
    Divergence("akl", teacher=True, top_k=False, references_only=False),
    Divergence("ce", teacher=False, top_k=False, references_only=True),
)
NAMES = tuple(d.name for d in DIVERGENCES)  # a traced divergence is an index into this
_BY_NAME = {d.name: d for d in DIVERGENCES}


def divergence(name: str) -> Divergence:
  if name not in _BY_NAME:
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(NAMES)}")
  return _BY_NAME[name]


def index(name: str) -> int:
  """The position of `name` in NAMES (what a traced divergence carries)."""
  return NAMES.index(divergence(name).name)


def check_top_k(kind: Any, teacher_top_k: int) -> None:
  """Raises unless teacher top-k can apply to `kind` (a name; a traced index is unknown on the
  host, so top-k cannot be checked, and is refused, there)."""
  if teacher_top_k and not (isinstance(kind, str) and divergence(kind).top_k):
    ok = ", ".join(d.name for d in DIVERGENCES if d.top_k)
    raise ValueError(f"loss.teacher_top_k={teacher_top_k} supports only {ok} (by name), "
                     f"got {kind}")


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stretch of a run with one kind of rows and one divergence."""

  divergence: str  # the stage's own divergence (what loss.divergence="auto" means)
  on_policy: bool  # rows are the student's own rollouts, sampled at their step
  # Rows need the problem's reference response (teacher-forced on it, or shown to the teacher
  # in the privileged prompt of self-distillation).
  reference: bool


@dataclasses.dataclass(frozen=True)
class Mode:
  """One loss.mode."""

  name: str
  # One stage, or two that switch at step int(loss.two_stage_switch * train.steps).
  stages: tuple[Stage, ...]
  # "separate": the config's teacher (train.init_teacher); "student": a frozen copy of the
  # initial student; "none".
  teacher: str
  # Whether loss.divergence replaces the stages' own; when not, only "auto" (or the first
  # stage's own name) is accepted, so a setting is never silently ignored.
  takes_divergence: bool
  summary: str  # what it trains, for messages


MODES = {m.name: m for m in (
    Mode("distill", (Stage("forward_kl", on_policy=False, reference=True),), "separate", True,
         "forward KL on reference responses"),
    Mode("on_policy", (Stage("reverse_kl", on_policy=True, reference=False),), "separate", True,
         "reverse KL on the student's own rollouts"),
    Mode("two_stage", (Stage("forward_kl", on_policy=False, reference=True),
                       Stage("reverse_kl", on_policy=True, reference=False)), "separate", False,
         "forward KL on references, then reverse KL on the student's rollouts"),
    Mode("self_distill", (Stage("reverse_kl", on_policy=True, reference=True),), "student", True,
         "reverse KL on the student's rollouts against itself shown the reference solution"),
    Mode("sft", (Stage("ce", on_policy=False, reference=True),), "none", False,
         "cross-entropy on reference responses"),
)}


def mode(name: str) -> Mode:
  if name not in MODES:
    raise ValueError(f"unknown loss mode {name!r}; choose one of {', '.join(MODES)}")
  return MODES[name]


def resolve(mode_name: str, divergence_name: str, stage: int = 0) -> str:
  """The divergence of stage `stage`: loss.divergence where the mode takes one (and it is not
  "auto"), else the stage's own."""
  m = mode(mode_name)
  if m.takes_divergence and divergence_name != "auto":
    return divergence_name
  return m.stages[stage].divergence


def stages(mode_name: str, divergence_name: str) -> list[tuple[Stage, Divergence]]:
  """Every stage of the mode with the divergence it trains (for validation)."""
  return [(st, divergence(resolve(mode_name, divergence_name, i)))
          for i, st in enumerate(mode(mode_name).stages)]


def switch_step(cfg) -> int | None:
  """The first step of the second stage; None for a one-stage mode."""
  if len(mode(cfg.loss.mode).stages) < 2:
    return None
  return int(cfg.loss.two_stage_switch * cfg.train.steps)


def _stage_index(cfg, step: int) -> int:
  switch = switch_step(cfg)
  return 0 if switch is None or step < switch else 1


def stage_of(cfg, step: int) -> str:
  """The divergence the step `step` trains."""
  return resolve(cfg.loss.mode, cfg.loss.divergence, _stage_index(cfg, step))


def fixed_divergence(cfg) -> str | None:
  """The run's one divergence, or None when it switches mid-run (two_stage)."""
  return stage_of(cfg, 0) if switch_step(cfg) is None else None


def on_policy(cfg, step: int) -> bool:
  """Whether the rows of `step` are the student's own rollouts (sampled at the step)."""
  return mode(cfg.loss.mode).stages[_stage_index(cfg, step)].on_policy


def needs_reference(cfg, step: int) -> bool:
  """Whether the rows of `step` need reference responses (False when the student's own
  rollouts replace them: on_policy, and the reverse-KL stage of two_stage)."""
  return mode(cfg.loss.mode).stages[_stage_index(cfg, step)].reference


def trains_on_rollouts(mode_name: str) -> bool:
  """Whether some stage trains on the student's own rollouts."""
  return any(st.on_policy for st in mode(mode_name).stages)


def prompts_only(mode_name: str) -> bool:
  """Whether no stage needs a reference: problems without one can be drawn too."""
  return not any(st.reference for st in mode(mode_name).stages)


def needs_teacher(mode_name: str) -> bool:
  """Whether the mode needs a separate teacher model (the config's teacher)."""
  return mode(mode_name).teacher == "separate"


def teacher_is_student(mode_name: str) -> bool:
  """Whether the teacher is a frozen copy of the initial student (self-distillation: it sees
  the reference solution in a privileged prompt)."""
  return mode(mode_name).teacher == "student"


def offline(cfg) -> bool:
  """Whether the teacher's logits are read from disk (loss.teacher="offline:DIR"): no teacher
  model is loaded or run in the step."""
  return str(getattr(cfg.loss, "teacher", "")).startswith("offline:")


def teacher_of(cfg):
  """The model config the step runs as teacher: the config's teacher (None if unset), the
  student's own, or None when the mode has no teacher or the teacher is offline (its logits
  stored: the step runs no teacher forward)."""
  if offline(cfg):
    return None
  who = mode(cfg.loss.mode).teacher
  return cfg.teacher if who == "separate" else cfg.model if who == "student" else None
