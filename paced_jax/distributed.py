"""Multi-process (multi-host) JAX: one process per host, every host runs the same command.

`paced` calls `initialize` before a subcommand touches a device:

  - explicit: `--coordinator HOST:PORT --num-processes N --process-id I` (any cluster, and CPU
    processes on one machine; CPU collectives then use gloo);
  - automatic: on a Cloud TPU VM (libtpu and TPU chips present), and where JAX's own cluster detection has
    what it needs (JAX_COORDINATOR_ADDRESS, or SLURM with more than one task),
    `jax.distributed.initialize()` finds the coordinator itself;
  - `--distributed off`: never (one process, whatever the environment says).

After it, `jax.devices()` spans every host; meshes, the train step and Orbax checkpoints are
global, the data pipeline hands each process its slice of the global batch, and only process 0
writes metrics, reports and progress bars (`is_main`).
"""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import numpy as np

from paced_jax.config import ConfigError


def _auto_environment() -> str | None:
  """Why a multi-process launch is likely here (a short name), or None."""
  # libtpu installs anywhere (e.g. for ahead-of-time TPU compilation on a CPU machine); a TPU
  # VM also has the chips' device files.
  tpu_chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  if tpu_chips and importlib.util.find_spec("libtpu") is not None:
    return "Cloud TPU VM"
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return "SLURM"
  return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = "auto") -> bool:
  """Initializes `jax.distributed` when asked to or when the environment is a cluster; returns
  whether it did. Must run before any JAX computation."""
  explicit = [coordinator, num_processes, process_id]
  if mode == "off":
    if any(v is not None for v in explicit):
      raise ConfigError("--distributed off contradicts --coordinator/--num-processes/"
                        "--process-id; drop one or the other")
    return False
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("multi-process runs need all of --coordinator HOST:PORT, "
                        "--num-processes N and --process-id I (the same coordinator on every "
                        "process, ids 0..N-1)")
    if ":" not in coordinator:
      raise ConfigError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. 10.0.0.2:1234")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process-id {process_id} must be in [0, {num_processes}) for "
                        f"--num-processes {num_processes}")
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
      # CPU devices of different processes need a collectives backend to talk to each other.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
  why = _auto_environment()
  if why is None:
    return False
  try:
    jax.distributed.initialize()
  except (RuntimeError, ValueError) as e:  # e.g. a single machine that merely has libtpu
    if why == "Cloud TPU VM":
      return False
    raise ConfigError(f"jax.distributed could not start from the {why} environment "
                      f"({str(e).splitlines()[0][:160]}); pass --coordinator, --num-processes "
                      "and --process-id, or --distributed off") from None
  return True


def is_main() -> bool:
  """True on the process that writes logs, metrics, reports and progress bars."""
  return jax.process_index() == 0


def to_host(x) -> np.ndarray:
  """A jax.Array as one full numpy array on every process. Arrays sharded over several
  processes are all-gathered (every process must call this, in the same order)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
