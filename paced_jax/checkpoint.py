"""One Orbax checkpoint per saved step: everything needed to continue exactly.

Layout of `<workdir>/checkpoints/<step>/` (an Orbax CheckpointManager step):
  params/        the student's parameters (nnx.State), restored straight onto the mesh
  opt_state/     optax state
  passrates/     PassRateTable arrays (successes, trials, last_step) as a numpy dict
  meta/          JSON: step, round, the host RNG state, the data-iterator state, and the
                 student's model config (so `paced_jax.models.io.load_model` can read a step)
The teacher is frozen and never checkpointed. Saves are asynchronous and atomic (Orbax writes a
temporary directory and renames it), so a crash or a failing run never leaves a half-written
step behind and never touches earlier steps; `max_to_keep` prunes only after a save committed
(this module rotates, not Orbax). A write failure is one `CheckpointError` line; an unreadable
newest step is set aside (kept, in `<workdir>/checkpoints_unreadable/`) and the run resumes
from the newest intact one.

A save that fails part-way (a disk that fills inside it) leaves Orbax's background machinery to
print on its own: TensorStore completes the abandoned writes on an event loop Orbax already
closed (`RuntimeError: Event loop is closed`, through `sys.unraisablehook`), and the sibling
write tasks that nobody awaited log `Task exception was never retrieved` when collected. While
a writing manager is open such output is held; once a save is known to have failed (its one
CheckpointError line is on its way) it is dropped, and a manager that closes cleanly prints what
was held. Nothing else is filtered (see `paced_jax.orbax_noise`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from paced_jax import orbax_noise
from paced_jax.config import ConfigError
from paced_jax.models.io import error_reason, incomplete


def fuse_filesystem(path: str | Path, mounts: str | Path = "/proc/mounts") -> str | None:
  """The FUSE type (e.g. "fuse.gcsfuse") of the mount holding `path`, or None (not FUSE, or no
  /proc/mounts). The longest matching mount point wins."""
  try:
    lines = Path(mounts).read_text().splitlines()
  except OSError:
    return None
  path, best, kind = str(Path(path).absolute()), "", None
  for line in lines:
    parts = line.split()
    if len(parts) < 3:
      continue
    point = parts[1].replace("\\040", " ")
    inside = path == point or path.startswith(point.rstrip("/") + "/")
    if inside and len(point) > len(best):
      best, kind = point, parts[2]
  return kind if kind and kind.startswith("fuse") else None


def _commit_file_path_class():
  """Orbax's commit-file atomicity (a finished step is marked by a file, not by renaming its
  temporary directory): renames on a bucket mounted with gcsfuse are copies, not atomic."""
  try:
    from orbax.checkpoint._src.path.atomicity import CommitFileTemporaryPath
  except ImportError:  # older or reorganised Orbax: keep its default
    return None
  return CommitFileTemporaryPath


class CheckpointError(ConfigError):
  """A checkpoint could not be written or read; one line naming the step and what to do."""


def manager(directory: str | Path, max_to_keep: int = 3, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax manager that never deletes anything itself: `save` rotates (keeps the
  `max_to_keep` newest) only after the previous save is confirmed committed. Orbax's own
  rotation runs even when a save fails, deleting a good checkpoint for a bad one."""
  if max_to_keep < 1:
    raise ConfigError(f"train.max_to_keep={max_to_keep} must be >= 1")
  directory = Path(directory).absolute()
  extra = {}
  if fuse_filesystem(directory) and _commit_file_path_class() is not None:
    extra["temporary_path_class"] = _commit_file_path_class()
  options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only,
                                         enable_async_checkpointing=async_save,
                                         read_only=read_only, **extra)
  mgr = ocp.CheckpointManager(directory, options=options,
                              item_names=("params", "opt_state", "passrates", "meta"))
  mgr.paced_keep = max_to_keep
  if not read_only:
    orbax_noise.NOISE.opened(mgr)
  return mgr


def wait(mgr: ocp.CheckpointManager) -> None:
  """Waits for the save in flight; a failed write becomes one CheckpointError (earlier steps
  are intact: Orbax writes a temporary directory and this module rotates only after commits)."""
  try:
    mgr.wait_until_finished()
    mgr.check_for_errors()
  except Exception as e:  # noqa: BLE001 -- Orbax raises many types from its threads
    orbax_noise.NOISE.failed()
    latest = committed_steps(mgr.directory)
    raise CheckpointError(
        f"a checkpoint could not be written to {mgr.directory} ({error_reason(e)}); earlier "
        f"checkpoints are intact (latest: {latest[-1] if latest else 'none'}): fix the "
        "directory (space, permissions, mount) and run the same command to resume") from None


def close(mgr: ocp.CheckpointManager) -> None:
  """Closes without raising (used while another error is already on its way out). After a
  failed save Orbax's `close` re-raises that failure before closing anything (its checkpointer,
  metadata stores and deleter keep their threads): those are closed one by one here."""
  try:
    mgr.close()
  except Exception:  # noqa: BLE001
    orbax_noise.NOISE.failed()
    for part in ("_checkpointer", "_non_blocking_metadata_store", "_blocking_metadata_store",
                 "_checkpoint_deleter"):
      try:
        getattr(mgr, part).close()
      except Exception:  # noqa: BLE001 -- private parts of another Orbax version, or failing
        pass
  finally:
    orbax_noise.NOISE.closed(mgr)


def write_failed() -> bool:
  """Whether a checkpoint write of this process failed (its CheckpointError was raised)."""
  return orbax_noise.NOISE.failed_once


def committed_steps(directory: str | Path) -> list[int]:
  """Sorted steps with a finished directory (`<step>/`, not Orbax's temporary ones)."""
  d = Path(str(directory))
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir())


def rotate(mgr: ocp.CheckpointManager) -> None:
  """Deletes committed steps beyond the `max_to_keep` newest (never an unfinished one)."""
  keep = getattr(mgr, "paced_keep", None)
  steps = committed_steps(mgr.directory)
  if keep is None or len(steps) <= keep:
    return
  for step in steps[:-keep]:
    if incomplete(Path(str(mgr.directory)) / str(step)) is None:
      mgr.delete(step)


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's current sharding (the restore target)."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


def save(mgr: ocp.CheckpointManager, step: int, *, params, opt_state, passrates: dict,
         meta: dict, force: bool = False) -> bool:
  """Confirms the previous save, rotates, and starts this one (asynchronous: call `wait`)."""
  wait(mgr)
  rotate(mgr)
  passrates = {k: np.asarray(v) for k, v in passrates.items()}
  try:
    return mgr.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        passrates=ocp.args.StandardSave(passrates), meta=ocp.args.JsonSave(meta)))
  except Exception as e:  # noqa: BLE001 -- a synchronous part of the write failed
    orbax_noise.NOISE.failed()
    raise CheckpointError(
        f"checkpoint step {step} could not be written to {mgr.directory} ({error_reason(e)}); "
        "earlier checkpoints are intact: fix the directory and run the same command to "
        "resume") from None
  finally:
    fault_point(f"save:{step}")


def fault_point(name: str) -> None:
  """Test hook (tests/test_fault_injection.py): `PACED_FAULT=save:6` SIGKILLs this process right
  after the save of step 6 is dispatched, its files half written. Unset: nothing."""
  if os.environ.get("PACED_FAULT") == name:
    os.kill(os.getpid(), signal.SIGKILL)


_UNREADABLE = ("OUT_OF_RANGE", "DATA_LOSS", "Error reading", "Error opening", "corrupt",
               "truncat", "NOT_FOUND", "No such file", "Unexpected end", "JSONDecodeError",
               "Expecting value")


def restore(mgr: ocp.CheckpointManager, step: int | None, *, params, opt_state) -> dict:
  """Restores onto the shardings of the given (live or abstract) trees; returns a dict with
  params, opt_state, passrates (host arrays as saved: a table written by an older version may
  lack newer fields, see PassRateTable.from_state_dict), meta. Raises CheckpointError:
  incomplete, unreadable, or written by another config."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise ConfigError(f"no checkpoint in {mgr.directory}")
  where = f"checkpoint {mgr.directory}/{step}"
  why = incomplete(Path(str(mgr.directory)) / str(step))
  if why:
    raise CheckpointError(f"{where} is incomplete ({why})")
  try:
    with orbax_noise.reading():  # a failed read's TensorStore noise is dropped
      out = mgr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(params)),
          opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
          passrates=ocp.args.StandardRestore(),
          meta=ocp.args.JsonRestore()))
  except Exception as e:  # noqa: BLE001 -- TensorStore raises bare Exception for bad bytes
    text = f"{e} {e.__cause__ or ''}"
    if any(k in text for k in _UNREADABLE):
      raise CheckpointError(f"{where} is unreadable (truncated or corrupt: "
                            f"{error_reason(e.__cause__ or e)})") from None
    raise CheckpointError(f"{where} does not match this config ({error_reason(e)}); use another "
                          "--workdir or the config it was written with") from None
  if not isinstance(out["meta"], dict) or "step" not in out["meta"]:
    raise CheckpointError(f"{where} is incomplete (its meta has no step)")
  return {"params": out["params"], "opt_state": out["opt_state"],
          "passrates": dict(out["passrates"]), "meta": out["meta"]}


def restore_newest_intact(mgr: ocp.CheckpointManager, **targets) -> tuple[dict, list]:
  """Restores the newest step that reads back; returns (restored, [(bad step, why), ...]).
  When no step restores, raises the newest step's error."""
  bad, first = [], None
  for step in reversed(committed_steps(mgr.directory)):
    try:
      return restore(mgr, step, **targets), bad
    except CheckpointError as e:
      first = first or e
      bad.append((step, str(e)))
  if first is None:
    raise ConfigError(f"no checkpoint in {mgr.directory}")
  raise first


def set_aside(workdir: Path, checkpoints: Path, step: int) -> Path:
  """Moves an unreadable step out of the way of new saves, keeping it (never deleted)."""
  dest = workdir / "checkpoints_unreadable" / str(step)
  n = 1
  while dest.exists():
    dest, n = workdir / "checkpoints_unreadable" / f"{step}.{n}", n + 1
  dest.parent.mkdir(exist_ok=True)
  (checkpoints / str(step)).rename(dest)
  return dest


_ABSENT = object()


def config_changes(saved: dict, current: dict, sections) -> list[str]:
  """Every differing field of `sections` between a workdir's saved config and this run's, as
  "key: saved -> now" (tuples and lists compare as sequences). A field the saved config does
  not have (written before the field existed) counts as its default value, so adding a config
  field never makes an older run unresumable."""
  from paced_jax.config import Config, to_dict

  defaults = to_dict(Config())
  out: list[str] = []

  def walk(a, b, d, prefix):
    if a is _ABSENT:
      a = d if d is not _ABSENT else None
    if isinstance(a, dict) and isinstance(b, dict):
      d = d if isinstance(d, dict) else {}
      for k in sorted(set(a) | set(b)):
        walk(a.get(k, _ABSENT), b.get(k), d.get(k, _ABSENT), f"{prefix}.{k}" if prefix else k)
    elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
      out.append(f"{prefix}: {a!r} -> {b!r}")

  for section in sections:
    walk(saved.get(section, _ABSENT), current.get(section), defaults.get(section, _ABSENT),
         section)
  return out


def config_mismatch(saved: dict, current: dict, sections=("model", "data", "loss")) -> str | None:
  """The first differing field between a workdir's saved config and this run's, or None."""
  found = config_changes(saved, current, sections)
  if not found:
    return None
  key, _, change = found[0].partition(": ")
  was, _, now = change.partition(" -> ")
  return f"{key}: saved {was}, now {now}"
