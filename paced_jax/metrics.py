"""Metrics to `metrics.jsonl` and TensorBoard scalars; the progress bar."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsWriter:
  """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl` and writes every value
  as a TensorBoard scalar under `<workdir>/tensorboard`. Only process 0 writes (`enabled`).
  Nothing is created before the first write or `truncate` (a run that fails validation leaves
  no trace)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    self.workdir = Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._file = self._tb = None
    self._purge_step = None

  def _open(self) -> None:
    if self._file is not None:
      return
    self._file = open(self.path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter

      # purge_step: TensorBoard drops the earlier files' events at steps >= it, as truncate
      # drops the JSONL lines, so a resumed run shows every step once there too. The suffix
      # keeps two invocations within one second (file names carry whole seconds) from sharing
      # a file, and sorts them in order.
      start = self._purge_step or 0
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"), flush_secs=10,
                               purge_step=self._purge_step,
                               filename_suffix=f".s{start:09d}.{os.getpid()}")
    except ImportError:  # TensorBoard is optional; the JSONL is the record
      self._tb = None

  def truncate(self, step: int) -> None:
    """Drops lines of steps >= `step` (and a torn last line): a resumed run recomputes them,
    so every step appears once, in TensorBoard too (a purge marker at `step`). Atomic
    (write + rename)."""
    if self._tb is None and step > 0:
      self._purge_step = int(step)
    if not self.enabled or not self.path.exists():
      return
    keep = []
    for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
      try:
        if json.loads(line)["step"] < step:
          keep.append(line)
      except (json.JSONDecodeError, KeyError, TypeError):
        continue  # a line cut by a kill
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled or not metrics:
      return
    self._open()
    clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": int(step), **{
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in clean.items()}}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    self._file = self._tb = None


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill -9
      continue
  return out


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
              dynamic_ncols=True)
