"""The pass-rate table and frontier weights: which problems the student should train on.

For problem i with s_i successes in n_i verified rollouts, PACED weights it by the Beta kernel
w(p) = p^alpha (1-p)^beta of its pass rate, and samples problems with probability
pi_i = (1 - eps) w_i / sum(w) + eps / N. Schemes (`PacedConfig.weighting`):

  uniform          w = 1
  paced            w = p^a (1-p)^b at the plug-in estimate p = s/n
  paced_posterior  w = E[p^a (1-p)^b] with p ~ Beta(s + a0, n - s + b0)
                     = B(s + a0 + a, n - s + b0 + b) / B(s + a0, n - s + b0)   (log-Beta, stable)
  dapo             w = 1 if 0 < p < 1 else 0   (drop solved and hopeless problems)
  band             w = 1 if lo <= p <= hi else 0

Unestimated problems (n = 0) have no plug-in p. They get the weight under the prior alone:
for paced and paced_posterior E[w(p)] with p ~ Beta(a0, b0) (1/6 for a = b = a0 = b0 = 1, the
maximum possible being 1/4); the filters (dapo, band) and uniform keep them with weight 1, since
nothing says they lie outside the frontier. A fresh pool therefore starts out uniform.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.special import betaln

from paced_jax.config import ConfigError, PacedConfig


class PassRateTable:
  """Per problem id: successes, trials, the training step of the last estimate (-1: never) and
  `settled`, how many of its latest estimates in a row had zero variance (every rollout right,
  or every one wrong), which `skip_settled` reads.

  `update(..., merge="replace")` overwrites a problem's counts with the new estimate (fresh, the
  student has changed); "accumulate" adds them (more samples of a slowly changing student).
  Duplicate ids inside one update are summed first.
  """

  def __init__(self, ids: Iterable[str] = ()):
    self._ids: list[str] = []
    self._index: dict[str, int] = {}
    self.successes = np.zeros((0,), np.int64)
    self.trials = np.zeros((0,), np.int64)
    self.step = np.zeros((0,), np.int64)
    self.settled = np.zeros((0,), np.int64)
    self.add(ids)

  def __len__(self) -> int:
    return len(self._ids)

  @property
  def ids(self) -> list[str]:
    return list(self._ids)

  def add(self, ids: Iterable[str]) -> None:
    """Registers ids (n = 0) that are not in the table yet."""
    new = [i for i in dict.fromkeys(str(i) for i in ids) if i not in self._index]
    for i in new:
      self._index[i] = len(self._ids)
      self._ids.append(i)
    pad = np.zeros((len(new),), np.int64)
    self.successes = np.concatenate([self.successes, pad])
    self.trials = np.concatenate([self.trials, pad])
    self.step = np.concatenate([self.step, pad - 1])
    self.settled = np.concatenate([self.settled, pad])

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    missing = [i for i in ids if i not in self._index]
    if missing:
      raise KeyError(f"{len(missing)} problem ids are not in the pass-rate table, e.g. "
                     f"{missing[0]!r}")
    return np.asarray([self._index[i] for i in ids], np.int64)

  def update(self, ids: Sequence[str], successes, trials, step: int,
             merge: str = "replace") -> None:
    s, n = np.asarray(successes, np.int64), np.asarray(trials, np.int64)
    if not (len(ids) == s.shape[0] == n.shape[0]) or s.ndim != 1 or n.ndim != 1:
      raise ValueError(f"update() needs one success and trial count per id: got {len(ids)} ids, "
                       f"successes {s.shape}, trials {n.shape}")
    if np.any(s < 0) or np.any(s > n):
      raise ValueError("update() needs 0 <= successes <= trials for every problem")
    if merge not in ("replace", "accumulate"):
      raise ConfigError(f"paced.merge={merge!r} must be 'replace' or 'accumulate'")
    self.add(ids)
    r = self.rows([str(i) for i in ids])
    uniq, inv = np.unique(r, return_inverse=True)
    s_u, n_u = np.bincount(inv, s, len(uniq)), np.bincount(inv, n, len(uniq))
    if merge == "replace":
      self.successes[uniq], self.trials[uniq] = s_u.astype(np.int64), n_u.astype(np.int64)
    else:
      self.successes[uniq] += s_u.astype(np.int64)
      self.trials[uniq] += n_u.astype(np.int64)
    self.step[uniq] = step
    zero_var = (s_u == 0) | (s_u == n_u)  # this estimate alone, whatever the merge
    self.settled[uniq] = np.where(zero_var, self.settled[uniq] + 1, 0)

  def counts(self, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(successes, trials) for `ids` (all problems, in table order, when None)."""
    if ids is None:
      return self.successes.copy(), self.trials.copy()
    r = self.rows(ids)
    return self.successes[r], self.trials[r]

  def pass_rates(self, ids: Sequence[str] | None = None) -> np.ndarray:
    """Plug-in p = s / n; NaN where a problem has no estimate yet."""
    s, n = self.counts(ids)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(n > 0, s / np.maximum(n, 1), np.nan)

  # -- persistence: a dict of numeric numpy arrays (rides in an Orbax checkpoint) -------------

  def state_dict(self) -> dict[str, np.ndarray]:
    encoded = [i.encode("utf-8") for i in self._ids]
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    return {"ids_utf8": np.frombuffer(b"".join(encoded), np.uint8).copy(),
            "ids_offsets": offsets, "successes": self.successes.copy(),
            "trials": self.trials.copy(), "step": self.step.copy(),
            "settled": self.settled.copy()}

  def reindexed(self, ids: Sequence[str]) -> PassRateTable:
    """The same counts with rows in the order of `ids` (a pool whose lines were reordered is
    restored by problem id, never by position); every id must be in the table."""
    r = self.rows([str(i) for i in ids])
    out = PassRateTable(ids)
    out.successes, out.trials = self.successes[r].copy(), self.trials[r].copy()
    out.step, out.settled = self.step[r].copy(), self.settled[r].copy()
    return out

  @classmethod
  def from_state_dict(cls, state: dict) -> PassRateTable:
    raw, off = np.asarray(state["ids_utf8"], np.uint8).tobytes(), np.asarray(state["ids_offsets"])
    table = cls(raw[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1))
    table.successes = np.asarray(state["successes"], np.int64).copy()
    table.trials = np.asarray(state["trials"], np.int64).copy()
    table.step = np.asarray(state["step"], np.int64).copy()
    # Checkpoints written before `settled` existed restore with no history (nothing skipped).
    table.settled = np.asarray(state.get("settled", np.zeros_like(table.step)), np.int64).copy()
    return table

  def _records(self) -> list[dict]:
    p = self.pass_rates()
    return [{"id": i, "successes": int(s), "trials": int(n),
             "pass_rate": None if np.isnan(q) else float(q), "step": int(t), "settled": int(z)}
            for i, s, n, q, t, z in zip(self._ids, self.successes, self.trials, p, self.step,
                                        self.settled)]

  @classmethod
  def _from_records(cls, records: Iterable[dict]) -> PassRateTable:
    records = list(records)
    table = cls(r["id"] for r in records)
    table.successes = np.asarray([r["successes"] for r in records], np.int64)
    table.trials = np.asarray([r["trials"] for r in records], np.int64)
    table.step = np.asarray([r["step"] for r in records], np.int64)
    table.settled = np.asarray([r.get("settled", 0) for r in records], np.int64)
    return table

  def to_jsonl(self, path: str | Path) -> None:
    with open(path, "w") as f:
      for rec in self._records():
        f.write(json.dumps(rec) + "\n")

  @classmethod
  def from_jsonl(cls, path: str | Path) -> PassRateTable:
    with open(path) as f:
      return cls._from_records(json.loads(line) for line in f if line.strip())

  def to_parquet(self, path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(self._records(), schema=pa.schema([
        ("id", pa.string()), ("successes", pa.int64()), ("trials", pa.int64()),
        ("pass_rate", pa.float64()), ("step", pa.int64()), ("settled", pa.int64())])),
        str(path))

  @classmethod
  def from_parquet(cls, path: str | Path) -> PassRateTable:
    import pyarrow.parquet as pq

    return cls._from_records(pq.read_table(str(path)).to_pylist())


def skip_settled(settled, base: float, floor: float, rng: np.random.Generator) -> np.ndarray:
  """GRESO-style skipping (Zheng et al. 2025, "Act Only When It Pays"): a problem whose last z
  estimates all had zero variance is re-estimated with probability max(base**z, floor), else
  skipped (True) and its previous estimate kept. z = 0 is always estimated; base = 1 skips
  nothing; the floor keeps every settled problem explored. Unlike GRESO, base is fixed (GRESO
  adapts it towards a target share of zero-variance prompts)."""
  z = np.asarray(settled, np.int64)
  keep = np.maximum(np.power(float(base), z), float(floor))
  return rng.random(z.shape[0]) >= keep


# ----------------------------------------------------------------------------- weights


def kernel_weight(p, alpha: float, beta: float) -> np.ndarray:
  """w(p) = p^alpha (1-p)^beta, in log space (stable for large exponents), with 0^0 = 1."""
  p = np.asarray(p, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_w = (np.where(alpha == 0, 0.0, alpha * np.log(p))
             + np.where(beta == 0, 0.0, beta * np.log1p(-p)))
  return np.exp(log_w)


def posterior_weight(successes, trials, alpha: float, beta: float, a0: float = 1.0,
                     b0: float = 1.0) -> np.ndarray:
  """E[p^alpha (1-p)^beta] for p ~ Beta(s + a0, n - s + b0), as a ratio of Beta functions."""
  s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
  a, b = s + a0, n - s + b0
  return np.exp(betaln(a + alpha, b + beta) - betaln(a, b))


def frontier_weights(successes, trials, cfg: PacedConfig = PacedConfig()) -> np.ndarray:
  """Unnormalised weight per problem under `cfg.weighting` (see the module docstring). Counts
  may be fractional (decayed cell counts, `synthesis.CellTable`)."""
  s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
  seen = n > 0
  p = s / np.maximum(n, 1)
  scheme = cfg.weighting
  if scheme == "uniform":
    return np.ones(s.shape)
  if scheme == "paced_posterior":
    return posterior_weight(s, n, cfg.alpha, cfg.beta, cfg.prior_a0, cfg.prior_b0)
  if scheme == "paced":
    prior = posterior_weight(0, 0, cfg.alpha, cfg.beta, cfg.prior_a0, cfg.prior_b0)
    return np.where(seen, kernel_weight(p, cfg.alpha, cfg.beta), prior)
  if scheme == "dapo":
    return np.where(seen, (s > 0) & (s < n), True).astype(np.float64)
  if scheme == "band":
    return np.where(seen, (p >= cfg.band_lo) & (p <= cfg.band_hi), True).astype(np.float64)
  raise ConfigError(f"paced.weighting={scheme!r} must be one of uniform, paced, "
                    "paced_posterior, dapo, band")


def sampling_probs(weights, eps: float = 0.0) -> np.ndarray:
  """pi = (1 - eps) w / sum(w) + eps / N. All-zero weights (every pass rate outside the frontier)
  give the uniform pi; `frontier_round` reports that as a fallback."""
  w = np.asarray(weights, np.float64)
  if w.size == 0:
    raise ConfigError("the problem pool is empty: there is nothing to sample")
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("frontier weights must be finite and >= 0")
  total = w.sum()
  if total <= 0:
    return np.full(w.shape, 1.0 / w.size)
  return (1.0 - eps) * w / total + eps / w.size


class FrontierRound(typing.NamedTuple):
  probs: np.ndarray | None  # sampling probabilities [N] (None: uniform sampling)
  loss_weights: np.ndarray  # per-example loss weights [N] (ones when sampling by pi)
  fallback_uniform: bool  # every weight was 0: this round is uniform


def frontier_round(weights, cfg: PacedConfig, usable=None) -> FrontierRound:
  """What one data round uses, from the frontier weights: sampling by pi (use=sample), or
  uniform sampling with loss weights N * pi, the same mixture rescaled to mean 1 (use=
  loss_weight). Problems that cannot be sampled (`usable` False) get weight 0 first. If no
  usable problem has weight > 0 the round falls back to uniform over the usable problems."""
  w = np.asarray(weights, np.float64)
  sel = np.ones(w.shape, bool) if usable is None else np.asarray(usable, bool)
  if not sel.any():
    raise ConfigError("no problem of the pool can be sampled (prompts too long or no reference)")
  fallback = not w[sel].sum() > 0
  pi = np.zeros(w.shape)
  pi[sel] = sampling_probs(w[sel], cfg.eps)  # N in eps / N counts the problems that can be drawn
  if cfg.use == "sample":
    return FrontierRound(pi, np.ones(w.shape, np.float32), fallback)
  n = int(sel.sum())
  return FrontierRound(None, (n * pi).astype(np.float32), fallback)


@dataclasses.dataclass(frozen=True)
class FrontierStats:
  n_problems: int
  n_estimated: int
  mean_p: float  # over estimated problems (NaN if none)
  frac_p0: float  # of estimated problems with p = 0
  frac_p1: float  # ... with p = 1
  mass_p0_p1: float  # sampling probability on estimated problems with p in {0, 1}
  ess: float  # effective sample size (sum pi)^2 / sum pi^2 of the sampling distribution
  ess_frac: float  # ess / n_problems: 1 is uniform
  hist_counts: tuple[int, ...]  # histogram of p over estimated problems
  hist_edges: tuple[float, ...]

  def as_metrics(self, prefix: str = "frontier/") -> dict[str, float]:
    keys = ("n_estimated", "mean_p", "frac_p0", "frac_p1", "mass_p0_p1", "ess", "ess_frac")
    return {prefix + k: float(getattr(self, k)) for k in keys}


def frontier_stats(successes, trials, probs, bins: int = 10) -> FrontierStats:
  """Summary of a pool's pass rates and of the sampling distribution `probs` built on them."""
  s, n = np.asarray(successes, np.int64), np.asarray(trials, np.int64)
  pi = np.asarray(probs, np.float64)
  seen = n > 0
  p = s[seen] / n[seen]
  extreme = np.zeros(s.shape, bool)
  extreme[seen] = (p == 0) | (p == 1)
  counts, edges = np.histogram(p, bins=bins, range=(0.0, 1.0))
  ess = float(pi.sum() ** 2 / max(float(np.sum(pi * pi)), 1e-300))
  frac = lambda x: float(np.mean(x)) if x.size else float("nan")
  return FrontierStats(n_problems=int(s.size), n_estimated=int(seen.sum()), mean_p=frac(p),
                       frac_p0=frac(p == 0), frac_p1=frac(p == 1),
                       mass_p0_p1=float(pi[extreme].sum()), ess=ess,
                       ess_frac=ess / max(int(s.size), 1),
                       hist_counts=tuple(int(c) for c in counts),
                       hist_edges=tuple(float(e) for e in edges))


# -- pass-rate histograms: one bin per value K rollouts allow (report.py, estimate.py) ---------

MAX_LEVELS = 41  # more distinct pass rates than this (mixed trial counts): the common K's grid


def pass_rate_levels(trials) -> np.ndarray:
  """The pass rates s/n the trial counts allow, sorted: s/K for s = 0..K when every estimate
  has K trials. Mixed counts (paced.merge=accumulate, a changed paced.rollouts) give the union
  of each n's grid; past MAX_LEVELS values, the grid of the most common n (estimates then count
  at the nearest level). Fixed-width bins would leave bands no estimate can fall in."""
  n = np.asarray(trials, np.int64).ravel()
  n = n[n > 0]
  if not n.size:
    return np.zeros(0)
  levels = np.unique(np.concatenate([np.arange(k + 1) / k for k in np.unique(n)]))
  if len(levels) > MAX_LEVELS:
    k = Counter(n.tolist()).most_common(1)[0][0]
    levels = np.arange(k + 1) / k
  return levels


def level_counts(successes, trials, levels) -> np.ndarray:
  """[len(levels)] estimates (trials > 0) at each level (the nearest one, for a level set that
  does not hold their s/n exactly)."""
  s, n = np.asarray(successes, np.float64).ravel(), np.asarray(trials, np.float64).ravel()
  p = s[n > 0] / n[n > 0]
  idx = np.searchsorted((np.asarray(levels)[1:] + np.asarray(levels)[:-1]) / 2, p)
  return np.bincount(idx, minlength=len(levels))
