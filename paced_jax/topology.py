"""Accelerator targets for `paced plan`: TPU slice names (v5p-64, v5litepod-16, ...), GPU
names (8xh100, h200, ...) or an explicit device count and memory, as a `Target`."""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax

from paced_jax.config import ConfigError

GiB = 1 << 30

@dataclasses.dataclass(frozen=True)
class Target:
  """What the run gets: `count` devices of `memory` bytes each."""

  name: str
  count: int
  memory: int
  hosts: int = 1
  tpu_topology: str = ""  # libtpu topology name, e.g. "v5:2x4x4" (AOT compilation)
  note: str = ""


# generation -> (HBM per chip, TensorCores per chip, chips per host, libtpu name).
# Cloud TPU docs (cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e): v4 and v5p chips hold two
# TensorCores and the accelerator-type suffix counts TensorCores (v5p-64 = 32 chips, 8 hosts of
# 4); v5e and v6e chips hold one and the suffix counts chips (8 chips per host). HBM: v4 32 GiB,
# v5p 95 GB, v5e 16 GB, v6e 32 GB per chip.
TPU_GENERATIONS: dict[str, tuple[float, int, int, str]] = {
    "v4": (32, 2, 4, "v4"), "v5p": (95, 2, 4, "v5"), "v5e": (16, 1, 8, "v5e"),
    "v5litepod": (16, 1, 8, "v5e"), "v6e": (32, 1, 8, "v6e"),
}
# GPU name -> memory visible to CUDA (GiB). JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION
# (default 0.75) of it: that fraction is what a run can use.
GPUS: dict[str, float] = {"h100": 79.6, "h200": 139.8, "a100-80gb": 79.2, "a100-40gb": 39.4}


def parse_bytes(text: str) -> int:
  """'16GiB', '16 GB', '512MiB', '2TiB' -> bytes (GB/MB are decimal, GiB/MiB binary)."""
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B)\s*", text, re.IGNORECASE)
  if not m:
    raise ConfigError(f"--device-memory {text!r} is not a size; write e.g. 16GiB or 80GB")
  unit = m.group(2).upper()
  base = 1024 if "I" in unit else 1000
  return int(float(m.group(1)) * base ** ("KMGT".index(unit[0]) + 1))


def _grow(dims: list[int], n: int) -> str | None:
  """The slice shape libtpu names for n chips: double the right-most smallest dimension
  (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... as in the Cloud TPU shape tables)."""
  while math.prod(dims) < n:
    if len(set(dims)) == 1:
      dims[-1] *= 2
    else:
      i = max(j for j, d in enumerate(dims) if d == min(dims))
      dims[i] *= 2
  return "x".join(map(str, dims)) if math.prod(dims) == n else None


def parse_target(topology: str | None, devices: int | None, device_memory: str | None) -> Target:
  """`v5p-64`, `v5litepod-16`, `h100`, `8xh100` (or `h100-8`), or --devices N --device-memory."""
  if topology:
    t = topology.strip().lower()
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", t)
    if m:
      hbm, cores, per_host, lib = TPU_GENERATIONS[m.group(1)]
      n = int(m.group(2))
      if n < 1 or n % cores:
        raise ConfigError(f"--topology {topology}: {m.group(1)} sizes count TensorCores, 2 per "
                          "chip; use an even number such as v5p-8 or v5p-64")
      chips = n // cores
      dims = [1, 1] if lib in ("v5e", "v6e") else [2, 2, 1]
      shape = _grow(dims, chips) if chips >= math.prod(dims) else ("1x1" if chips == 1 else None)
      return Target(t, chips, int(hbm * GiB), max(1, chips // per_host),
                    f"{lib}:{shape}" if shape else "")
    m = re.fullmatch(r"(?:(\d+)x)?([a-z0-9-]+?)(?:-(\d+))?", t)
    if m and m.group(2) in GPUS:
      n = int(m.group(1) or m.group(3) or 1)
      frac = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
      return Target(f"{n}x{m.group(2)}", n, int(GPUS[m.group(2)] * GiB * frac),
                    note=f"{frac:.0%} of {GPUS[m.group(2)]} GiB (XLA_PYTHON_CLIENT_MEM_FRACTION)")
    raise ConfigError(f"--topology {topology!r} is not known; use e.g. v4-32, v5p-64, "
                      f"v5litepod-16, v6e-8, or 8x<gpu> with gpu one of {', '.join(GPUS)}")
  if devices is not None and devices < 1:
    raise ConfigError(f"--devices {devices} must be >= 1 (the number of accelerator devices)")
  if devices is not None or device_memory is not None:
    if devices is None or device_memory is None:
      raise ConfigError("--devices N and --device-memory SIZE go together, e.g. --devices 8 "
                        "--device-memory 16GiB")
    return Target(f"{devices} devices", devices, parse_bytes(device_memory))
  d = jax.devices()
  limit = (d[0].memory_stats() or {}).get("bytes_limit")
  if not limit:
    raise ConfigError(f"the local {d[0].platform} devices report no memory size; pass "
                      "--topology (e.g. v5p-64) or --devices N --device-memory 16GiB")
  return Target(f"{len(d)}x{d[0].device_kind}", len(d), int(limit))
