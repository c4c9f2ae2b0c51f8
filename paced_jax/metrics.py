"""Metrics to `metrics.jsonl` and TensorBoard scalars; the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
  """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl` and writes every value
  as a TensorBoard scalar under `<workdir>/tensorboard`. Only process 0 writes (`enabled`)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = Path(workdir) / "metrics.jsonl"
    self._file = open(self.path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=10)
    except ImportError:  # TensorBoard is optional; the JSONL is the record
      self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled or not metrics:
      return
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
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
              dynamic_ncols=True)
