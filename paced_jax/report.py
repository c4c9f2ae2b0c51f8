"""PNG plots of a run directory: accuracy per difficulty over steps, the frontier moving
(sampling mass per difficulty over refresh rounds), pass-rate histograms, the loss curve.

    paced report WORKDIR        (re-)writes WORKDIR/report/*.png from metrics.jsonl + passrates/
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from paced_jax.config import ConfigError
from paced_jax.metrics import read_metrics


def _series(rows, pattern: str) -> dict[str, tuple[list, list]]:
  out: dict[str, tuple[list, list]] = {}
  rx = re.compile(pattern)
  for r in rows:
    for k, v in r.items():
      if v is not None and rx.fullmatch(k):
        xs, ys = out.setdefault(k, ([], []))
        xs.append(r["step"])
        ys.append(v)
  return out


def _level(key: str) -> int:
  m = re.search(r"level_(\d+)", key)
  return int(m.group(1)) if m else -1


def make_report(workdir: str | Path) -> list[Path]:
  wd = Path(workdir)
  rows = read_metrics(wd)
  if not rows:
    raise ConfigError(f"{str(wd)!r} has no metrics.jsonl: is it a run directory?")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir = wd / "report"
  out_dir.mkdir(exist_ok=True)
  written = []

  acc = _series(rows, r"eval/(test|probe)/(overall|level_\d+)")
  if acc:
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in sorted(acc, key=lambda k: (k.split("/")[1], _level(k))):
      xs, ys = acc[k]
      style = "--" if "/probe/" in k else ("-" if "level" in k else ":")
      ax.plot(xs, ys, style, marker="o", ms=3, label=k[5:])
    ax.set(xlabel="step", ylabel="accuracy (avg@k)", ylim=(-0.02, 1.02),
           title="held-out accuracy by difficulty")
    ax.legend(fontsize=7, ncol=2)
    written.append(_save(fig, out_dir / "accuracy_by_difficulty.png"))

  mass = _series(rows, r"frontier_mass/level_\d+")
  if mass:
    levels = sorted(mass, key=_level)
    steps = mass[levels[0]][0]
    grid = np.array([mass[k][1] for k in levels])  # [levels, rounds]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                   extent=(-0.5, grid.shape[1] - 0.5, 0.5, len(levels) + 0.5))
    ax.set(xlabel="refresh round", ylabel="difficulty level",
           title="the frontier moving: sampling mass per difficulty")
    ax.set_xticks(range(grid.shape[1]), [f"{i}\n@{s}" for i, s in enumerate(steps)], fontsize=6)
    ax.set_yticks(range(1, len(levels) + 1), [str(_level(k)) for k in levels])
    fig.colorbar(im, ax=ax, label="probability mass")
    written.append(_save(fig, out_dir / "frontier_heatmap.png"))

  snaps = sorted((wd / "passrates").glob("round_*.jsonl"))
  if snaps:
    hists = []
    for path in snaps:
      recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      p = np.array([r["successes"] / r["trials"] for r in recs if r.get("trials")])
      hists.append(np.histogram(p, bins=10, range=(0, 1))[0])
    grid = np.array(hists).T
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma",
                   extent=(-0.5, grid.shape[1] - 0.5, 0, 1))
    ax.set(xlabel="refresh round", ylabel="pass rate p", title="pass-rate histogram per round")
    fig.colorbar(im, ax=ax, label="problems")
    written.append(_save(fig, out_dir / "passrate_histograms.png"))

  loss = _series(rows, r"loss")
  if loss:
    xs, ys = loss["loss"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, ys)
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    written.append(_save(fig, out_dir / "loss.png"))
  return written


def _save(fig, path: Path) -> Path:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  import matplotlib.pyplot as plt

  plt.close(fig)
  return path


def add_parser(sub) -> None:
  p = sub.add_parser("report", help="write PNG plots of a run directory to WORKDIR/report/")
  p.add_argument("workdir")
  p.set_defaults(func=lambda args: _cmd(args))


def _cmd(args) -> int:
  paths = make_report(args.workdir)
  for p in paths:
    print(p)
  return 0
