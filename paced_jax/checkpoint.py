"""One Orbax checkpoint per saved step: everything needed to continue exactly.

Layout of `<workdir>/checkpoints/<step>/` (an Orbax CheckpointManager step):
  params/        the student's parameters (nnx.State), restored straight onto the mesh
  opt_state/     optax state
  passrates/     PassRateTable arrays (successes, trials, last_step) as a numpy dict
  meta/          JSON: step, round, the host RNG state, the data-iterator state, and the
                 student's model config (so `paced_jax.models.io.load_model` can read a step)
The teacher is frozen and never checkpointed. Saves are asynchronous and atomic (Orbax writes a
temporary directory and renames it), so a crash or a failing run never leaves a half-written
step behind and never touches earlier steps; `max_to_keep` prunes only after a save committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from paced_jax.config import ConfigError


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


def manager(directory: str | Path, max_to_keep: int = 3, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
  directory = Path(directory).absolute()
  extra = {}
  if fuse_filesystem(directory) and _commit_file_path_class() is not None:
    extra["temporary_path_class"] = _commit_file_path_class()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         enable_async_checkpointing=async_save,
                                         read_only=read_only, **extra)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("params", "opt_state", "passrates", "meta"))


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's current sharding (the restore target)."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


def save(mgr: ocp.CheckpointManager, step: int, *, params, opt_state, passrates: dict,
         meta: dict, force: bool = False) -> bool:
  passrates = {k: np.asarray(v) for k, v in passrates.items()}
  return mgr.save(step, force=force, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      passrates=ocp.args.StandardSave(passrates), meta=ocp.args.JsonSave(meta)))


def restore(mgr: ocp.CheckpointManager, step: int | None, *, params, opt_state,
            passrates: dict) -> dict:
  """Restores onto the shardings of the given (live or abstract) trees; returns a dict with
  params, opt_state, passrates, meta."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise ConfigError(f"no checkpoint in {mgr.directory}")
  try:
    out = mgr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
        passrates=ocp.args.StandardRestore({k: np.asarray(v) for k, v in passrates.items()}),
        meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"checkpoint {mgr.directory}/{step} does not match this config "
                      f"({msg[:200]}); use another --workdir or the config it was written "
                      "with") from None
  return {"params": out["params"], "opt_state": out["opt_state"],
          "passrates": dict(out["passrates"]), "meta": out["meta"]}


def config_mismatch(saved: dict, current: dict, sections=("model", "data", "loss")) -> str | None:
  """The first differing field between a workdir's saved config and this run's, or None."""
  def walk(a, b, prefix):
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        found = walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        if found:
          return found
      return None
    if a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
      return f"{prefix}: saved {a!r}, now {b!r}"
    return None
  for section in sections:
    found = walk(saved.get(section), current.get(section), section)
    if found:
      return found
  return None
