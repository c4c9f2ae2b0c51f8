"""PNG plots of a run directory: accuracy per difficulty over steps, the frontier moving
(sampling mass per difficulty over refresh rounds), pass-rate histograms, the loss curve.

    paced report WORKDIR        (re-)writes WORKDIR/report/*.png from metrics.jsonl + passrates/

Every failure is one ConfigError line naming the file: an input that cannot be read (a corrupt
line; only a last line torn by a kill -9 is skipped, as training's resume drops it), a report/
that cannot be written (read-only, disk full: the partial PNG is removed). The end of
`paced train` turns that line into a warning; the run it reports on has finished either way.

The pass-rate histogram has one bin per pass rate K rollouts can give (s/K, s = 0..K; see
`frontier.pass_rate_levels` for mixed trial counts) and shows, per round, only the estimates
made in that round (a snapshot also carries the older estimates of problems it skipped), as
fractions of the problems the round estimated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from paced_jax.config import ConfigError
from paced_jax.frontier import level_counts, pass_rate_levels


def _series(rows, pattern: str) -> dict[str, tuple[list, list]]:
  out: dict[str, tuple[list, list]] = {}
  rx = re.compile(pattern)
  for r in rows:
    for k, v in r.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and rx.fullmatch(k):
        xs, ys = out.setdefault(k, ([], []))
        xs.append(r["step"])
        ys.append(v)
  return out


def _level(key: str) -> int:
  m = re.search(r"level_(\d+)", key)
  return int(m.group(1)) if m else -1


def _read_jsonl(path: Path, what: str, check) -> list[dict]:
  """The rows of a JSONL file; `check(row)` says what is wrong with one ('' when nothing). A
  torn last line (a kill -9 mid-write) is skipped; any other bad line is a ConfigError."""
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    why = e.strerror if isinstance(e, OSError) else f"not UTF-8 text at byte {e.start}"
    raise ConfigError(f"{path} cannot be read ({why}); restore or delete it") from None
  rows = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines):
        continue
      why = f"not JSON: {e.msg}"
    else:
      why = check(row) if isinstance(row, dict) else "not a JSON object"
      if not why:
        rows.append(row)
        continue
    raise ConfigError(f"{path}:{i}: not {what} ({why}); fix or delete that line")
  return rows


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _metrics_row(r: dict) -> str:
  return "" if _is_int(r.get("step")) else "no integer 'step'"


def _passrate_row(r: dict) -> str:
  s, n, t = r.get("successes"), r.get("trials"), r.get("step", 0)
  if not (_is_int(s) and _is_int(n) and 0 <= s <= n):
    return "needs integer 0 <= successes <= trials"
  return "" if _is_int(t) else "'step' is not an integer"


def passrate_bins(snapshots: list[list[dict]], round_steps: list[int | None]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(levels [L], fractions [L, rounds], estimated [rounds]) of the pass-rate histogram: per
  round, the estimates made at its step (`round_steps`; None: the newest step in the snapshot)
  as fractions of how many there are. A snapshot row carries the step its estimate was made
  at (frontier.PassRateTable), so the older estimates of skipped problems are left out; rows
  without a step (older snapshots) all count. A round without estimates is a NaN column."""
  fresh = []
  for recs, at in zip(snapshots, round_steps):
    est = [r for r in recs if r["trials"] > 0]
    if at is None and any("step" in r for r in est):
      at = max(r.get("step", -1) for r in est)
    fresh.append([r for r in est if at is None or r.get("step", at) == at])
  levels = pass_rate_levels([r["trials"] for f in fresh for r in f])
  grid = np.full((len(levels), len(fresh)), np.nan)
  for j, f in enumerate(fresh):
    if f:
      grid[:, j] = level_counts([r["successes"] for r in f], [r["trials"] for r in f],
                                levels) / len(f)
  return levels, grid, np.array([len(f) for f in fresh])


def make_report(workdir: str | Path) -> list[Path]:
  wd = Path(workdir)
  if not wd.is_dir():
    raise ConfigError(f"{str(wd)!r} is not a directory: pass a run directory (the --workdir "
                      "of paced train)")
  if not (wd / "metrics.jsonl").exists():
    raise ConfigError(f"{str(wd)!r} has no metrics.jsonl: is it a run directory?")
  rows = _read_jsonl(wd / "metrics.jsonl", "a metrics row", _metrics_row)
  if not rows:
    raise ConfigError(f"{str(wd)!r} has no metrics.jsonl rows yet: is it a run directory?")
  snaps = sorted((wd / "passrates").glob("round_*.jsonl"))
  tables = [_read_jsonl(p, "a pass-rate row", _passrate_row) for p in snaps]
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  out_dir = wd / "report"
  try:
    out_dir.mkdir(exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{out_dir} cannot be created ({e.strerror}); make {wd} writable, or "
                      "copy the run elsewhere and run paced report there") from None
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
    steps, grid = _grid(mass, levels)  # [levels, rounds]; a level absent in a round: blank
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                   extent=(-0.5, grid.shape[1] - 0.5, 0.5, len(levels) + 0.5))
    ax.set(xlabel="refresh round", ylabel="difficulty level",
           title="the frontier moving: sampling mass per difficulty")
    ax.set_xticks(range(grid.shape[1]), [f"{i}\n@{s}" for i, s in enumerate(steps)], fontsize=6)
    ax.set_yticks(range(1, len(levels) + 1), [str(_level(k)) for k in levels])
    fig.colorbar(im, ax=ax, label="probability mass")
    written.append(_save(fig, out_dir / "frontier_heatmap.png"))

  cells = _series(rows, r"generate_mass/.+")
  if cells:  # a generated run: the share of each round's problems made in each cell
    names = sorted(cells, key=lambda k: (k.split("/")[1], int(k.rsplit("/L", 1)[-1])
                                         if k.rsplit("/L", 1)[-1].isdigit() else -1))
    steps, grid = _grid(cells, names)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1.2)))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0,
                   extent=(-0.5, grid.shape[1] - 0.5, -0.5, len(names) - 0.5))
    ax.set(xlabel="refresh round", ylabel="cell (task/level)",
           title="the frontier moving: share of each round's generated problems per cell")
    ax.set_xticks(range(grid.shape[1]), [f"{i}\n@{s}" for i, s in enumerate(steps)], fontsize=6)
    ax.set_yticks(range(len(names)), [k.split("/", 1)[1] for k in names], fontsize=6)
    fig.colorbar(im, ax=ax, label="share of the round")
    written.append(_save(fig, out_dir / "generate_heatmap.png"))

  at = {}  # round -> the step it was estimated at, from its metrics line
  for r in rows:
    v = r.get("frontier/round")  # written as a float
    if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
      at[int(v)] = r["step"]
  rounds = [int(m.group(1)) if (m := re.search(r"round_(\d+)", p.name)) else -1 for p in snaps]
  levels, grid, estimated = passrate_bins(tables, [at.get(r) for r in rounds])
  if estimated.any():
    fig, ax = plt.subplots(figsize=(7, 3.5))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                   extent=(-0.5, grid.shape[1] - 0.5, -0.5, len(levels) - 0.5))
    ax.set(xlabel="refresh round", ylabel="pass rate p",
           title="pass rates of each round's own estimates\n(fraction of the problems it "
           "estimated; one bin per s/K)")
    ticks = np.unique(np.linspace(0, len(levels) - 1, min(len(levels), 11)).round().astype(int))
    ax.set_yticks(ticks, [f"{levels[i]:.2g}" for i in ticks])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    fig.colorbar(im, ax=ax, label="fraction of the round's estimates")
    written.append(_save(fig, out_dir / "passrate_histograms.png"))

  loss = _series(rows, r"loss")
  if loss:
    xs, ys = loss["loss"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, ys)
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    written.append(_save(fig, out_dir / "loss.png"))
  return written


def _grid(series: dict, keys: list[str]) -> tuple[list, np.ndarray]:
  """(steps, [keys, steps] values) over the union of the series' steps; NaN where a key has
  no value at a step (a level or cell that a round did not report)."""
  steps = sorted({x for k in keys for x in series[k][0]})
  col = {x: j for j, x in enumerate(steps)}
  grid = np.full((len(keys), len(steps)), np.nan)
  for i, k in enumerate(keys):
    for x, y in zip(*series[k]):
      grid[i, col[x]] = y
  return steps, grid


def _save(fig, path: Path) -> Path:
  """Writes the PNG; a failed write (disk full, read-only) removes the partial file and is a
  ConfigError naming it."""
  import matplotlib.pyplot as plt

  try:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
  except OSError as e:
    try:
      path.unlink(missing_ok=True)
    except OSError:
      pass
    raise ConfigError(f"{path} could not be written ({e.strerror or e}); free space or make "
                      f"{path.parent} writable") from None
  finally:
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
