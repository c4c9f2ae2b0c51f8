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
  student has changed); "accumulate" adds them (more samples of a slowly changing student);
  "decay" discounts the old counts by their age first (paced.decay_per_step = g, 0 < g <= 1):
  at an update at step t of a problem last updated at step t_last,

      s <- g^(t - t_last) * s + s_new,    n <- g^(t - t_last) * n + n_new,

  so every trial j seen at step t_j counts g^(t - t_j) (g = 1 is accumulate). A problem that
  gets no update keeps its counts as of its last one. Decayed counts are fractional: a table
  becomes float64 at its first decay update (replace/accumulate tables stay int64; either kind
  restores from its checkpoint). Duplicate ids inside one update are summed first.

  Training outcomes (paced.train_outcomes): `observe(ids, correct, step)` records the verified
  outcomes of the rollouts trained on at `step` as *pending* (`correct` may be a Future of the
  verdicts, still being verified off the step's critical path). They change no count until
  `merge_pending` (the next refresh) folds them in, each at its own step (under decay: the
  discount g^(t - t_j) of its age), so a round's weights are a function of the table at its
  refresh alone. Pending outcomes ride in `state_dict` (their verdicts are waited for there),
  so a resumed run merges exactly what an uninterrupted one does.
  """

  def __init__(self, ids: Iterable[str] = ()):
    self._ids: list[str] = []
    self._index: dict[str, int] = {}
    self.successes = np.zeros((0,), np.int64)
    self.trials = np.zeros((0,), np.int64)
    self.step = np.zeros((0,), np.int64)
    self.settled = np.zeros((0,), np.int64)
    # Training outcomes not merged yet: (step, row indices, verdicts or a Future of them).
    self._pending: list[tuple[int, np.ndarray, object]] = []
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
    self.successes = np.concatenate([self.successes, pad.astype(self.successes.dtype)])
    self.trials = np.concatenate([self.trials, pad.astype(self.trials.dtype)])
    self.step = np.concatenate([self.step, pad - 1])
    self.settled = np.concatenate([self.settled, pad])

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    missing = [i for i in ids if i not in self._index]
    if missing:
      raise KeyError(f"{len(missing)} problem ids are not in the pass-rate table, e.g. "
                     f"{missing[0]!r}")
    return np.asarray([self._index[i] for i in ids], np.int64)

  @property
  def fractional(self) -> bool:
    """Whether the counts are float64 (decayed: paced.merge=decay)."""
    return self.successes.dtype.kind == "f"

  def update(self, ids: Sequence[str], successes, trials, step: int,
             merge: str = "replace", decay: float = 1.0, full_trials: int | None = None,
             estimate: bool = True) -> None:
    """Merges one new count per id (see the class docstring for `merge` and `decay`).

    `estimate`: the counts are a pass-rate estimate, which updates `settled`: a zero-variance
    estimate (all right or all wrong) adds 1, any other resets it to 0, except that with
    `full_trials` = K an estimate stopped before K rollouts (screening, adaptive K) that is
    unanimous leaves `settled` as it was: stopping early on agreement says nothing about the
    variance (at k0 = 2 a p = 1/2 problem is unanimous half the time). False (merged training
    outcomes): `settled` is left alone."""
    fractional = merge == "decay"
    dtype = np.float64 if fractional else np.int64
    s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    if not (len(ids) == s.shape[0] == n.shape[0]) or s.ndim != 1 or n.ndim != 1:
      raise ValueError(f"update() needs one success and trial count per id: got {len(ids)} ids, "
                       f"successes {s.shape}, trials {n.shape}")
    if merge not in ("replace", "accumulate", "decay"):
      raise ConfigError(f"paced.merge={merge!r} must be 'replace', 'accumulate' or 'decay'")
    if not fractional and (np.any(s != np.rint(s)) or np.any(n != np.rint(n))):
      raise ValueError(f"update() with merge={merge!r} needs integer counts")
    if np.any(s < 0) or np.any(s > n * (1 + 1e-12)):
      raise ValueError("update() needs 0 <= successes <= trials for every problem")
    if not 0 < decay <= 1:
      raise ConfigError(f"paced.decay_per_step={decay!r} must be in (0, 1]")
    self.add(ids)
    r = self.rows([str(i) for i in ids])
    uniq, inv = np.unique(r, return_inverse=True)
    s_u, n_u = np.bincount(inv, s, len(uniq)), np.bincount(inv, n, len(uniq))
    if fractional and not self.fractional:
      self.successes, self.trials = self.successes.astype(dtype), self.trials.astype(dtype)
    if merge == "replace":
      self.successes[uniq], self.trials[uniq] = s_u.astype(dtype), n_u.astype(dtype)
    elif merge == "accumulate":
      self.successes[uniq] += s_u.astype(self.successes.dtype)
      self.trials[uniq] += n_u.astype(self.trials.dtype)
    else:
      last = self.step[uniq]
      if np.any(last > step):
        raise ValueError(f"update(merge='decay') at step {step} is older than a problem's last "
                         f"update (step {int(last.max())}): counts only decay forward")
      factor = np.where(last >= 0, np.power(float(decay), step - np.maximum(last, 0)), 1.0)
      self.successes[uniq] = factor * self.successes[uniq] + s_u
      self.trials[uniq] = factor * self.trials[uniq] + n_u
    self.step[uniq] = step
    if estimate:
      zero_var = (s_u == 0) | (s_u == n_u)  # this estimate alone, whatever the merge
      cut = np.zeros(uniq.shape, bool) if full_trials is None else n_u < full_trials
      self.settled[uniq] = np.where(zero_var, np.where(cut, self.settled[uniq],
                                                       self.settled[uniq] + 1), 0)

  def merged_prior(self, ids: Sequence[str], step: int, merge: str,
                   decay: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """(s0, n0) per id: the counts an `update(ids, s, n, step, merge, decay)` adds the new
    estimate to (accumulate: s, n; decay: g^(step - t_last) s, g^(step - t_last) n; ids not in
    the table: 0, 0), or None under replace (the new estimate is all the merged counts hold).
    The adaptive stopping rule reads the posterior of s0 + s, n0 + n (`estimate_pass_rates`)."""
    if merge == "replace":
      return None
    s0, n0 = np.zeros(len(ids)), np.zeros(len(ids))
    known = np.asarray([str(i) in self._index for i in ids], bool)
    if known.any():
      r = self.rows([str(i) for i, k in zip(ids, known) if k])
      factor = 1.0
      if merge == "decay":
        last = self.step[r]
        factor = np.where(last >= 0, np.power(float(decay), np.maximum(step - last, 0)), 1.0)
      s0[known] = factor * self.successes[r]
      n0[known] = factor * self.trials[r]
    return s0, n0

  # -- training outcomes: pending until the next refresh merges them ------------------------

  def observe(self, ids: Sequence[str], correct, step: int) -> None:
    """Records the outcomes of rollouts trained on at `step` (one per id; `correct`: bools, or
    a concurrent.futures.Future of them), pending until `merge_pending`."""
    rows = self.rows([str(i) for i in ids])
    if not hasattr(correct, "result"):
      correct = np.asarray(correct, bool)
      if correct.shape != rows.shape:
        raise ValueError(f"observe() got {rows.size} ids but {correct.size} outcomes")
    self._pending.append((int(step), rows, correct))

  def _resolve(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The pending outcomes with their verdicts (waits for those still being verified)."""
    out = []
    for step, rows, correct in self._pending:
      got = np.asarray(correct.result() if hasattr(correct, "result") else correct, bool)
      if got.shape != rows.shape:
        raise ValueError(f"training outcomes of step {step}: {got.size} verdicts for "
                         f"{rows.size} rows")
      out.append((step, rows, got))
    self._pending = list(out)
    return out

  def pending_trials(self, step: int, window: int) -> np.ndarray:
    """[len(table)] pending training outcomes per problem sampled less than `window` steps
    before `step` (step - t_j < window). Needs no verdicts (nothing is waited for)."""
    n = np.zeros(len(self), np.int64)
    for t, rows, _ in self._pending:
      if step - t < window:
        np.add.at(n, rows, 1)
    return n

  def merge_pending(self, step: int, merge: str, decay: float = 1.0) -> tuple[int, int]:
    """Folds the pending training outcomes into the counts as of `step` and clears them;
    returns (outcomes, successes) merged. accumulate: s += sum x_j, n += #j; decay: one decay
    update at `step` with s_new = sum_j g^(step - t_j) x_j, n_new = sum_j g^(step - t_j), the
    same as merging them one step at a time. `settled` is left alone (they are no estimate)."""
    if merge not in ("accumulate", "decay"):
      raise ConfigError(f"paced.train_outcomes needs paced.merge=decay or accumulate (training "
                        f"outcomes arrive one rollout at a time), not {merge!r}")
    done = self._resolve()
    self._pending = []
    if not done:
      return 0, 0
    rows = np.concatenate([r for _, r, _ in done])
    x = np.concatenate([c for _, _, c in done]).astype(np.float64)
    age = np.concatenate([np.full(r.shape, step - t, np.float64) for t, r, _ in done])
    if np.any(age < 0):
      raise ValueError(f"training outcomes newer than the refresh at step {step}")
    g = np.power(float(decay), age) if merge == "decay" else np.ones(age.shape)
    uniq, inv = np.unique(rows, return_inverse=True)
    s_new, n_new = np.bincount(inv, g * x, len(uniq)), np.bincount(inv, g, len(uniq))
    ids = [self._ids[i] for i in uniq]
    self.update(ids, s_new, n_new, step, merge, decay, estimate=False)
    return int(x.size), int(x.sum())

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
      return np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)

  # -- persistence: a dict of numeric numpy arrays (rides in an Orbax checkpoint) -------------

  def state_dict(self) -> dict[str, np.ndarray]:
    """Numeric arrays; counts int64, or float64 for a decayed table. Pending training outcomes
    (waited for here) add pending_step / pending_row / pending_correct, absent when none."""
    encoded = [i.encode("utf-8") for i in self._ids]
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    state = {"ids_utf8": np.frombuffer(b"".join(encoded), np.uint8).copy(),
             "ids_offsets": offsets, "successes": self.successes.copy(),
             "trials": self.trials.copy(), "step": self.step.copy(),
             "settled": self.settled.copy()}
    done = self._resolve()
    if done:
      state["pending_step"] = np.concatenate([np.full(r.shape, t, np.int64) for t, r, _ in done])
      state["pending_row"] = np.concatenate([r for _, r, _ in done]).astype(np.int64)
      state["pending_correct"] = np.concatenate([c for _, _, c in done]).astype(np.int64)
    return state

  def _set_pending(self, steps, rows, correct) -> None:
    steps, rows = np.asarray(steps, np.int64), np.asarray(rows, np.int64)
    correct = np.asarray(correct).astype(bool)
    self._pending = [(int(t), rows[steps == t], correct[steps == t]) for t in np.unique(steps)]

  def reindexed(self, ids: Sequence[str]) -> PassRateTable:
    """The same counts with rows in the order of `ids` (a pool whose lines were reordered is
    restored by problem id, never by position); every id must be in the table."""
    r = self.rows([str(i) for i in ids])
    out = PassRateTable(ids)
    out.successes, out.trials = self.successes[r].copy(), self.trials[r].copy()
    out.step, out.settled = self.step[r].copy(), self.settled[r].copy()
    where = np.full(len(self), -1, np.int64)
    where[r] = np.arange(len(r))
    out._pending = [(t, where[rows], c) for t, rows, c in self._resolve()]
    if any(np.any(rows < 0) for _, rows, _ in out._pending):
      raise KeyError("pending training outcomes of problems that are not in the new order")
    return out

  @classmethod
  def from_state_dict(cls, state: dict) -> PassRateTable:
    raw, off = np.asarray(state["ids_utf8"], np.uint8).tobytes(), np.asarray(state["ids_offsets"])
    table = cls(raw[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1))
    kind = np.float64 if np.asarray(state["successes"]).dtype.kind == "f" else np.int64
    table.successes = np.asarray(state["successes"], kind).copy()
    table.trials = np.asarray(state["trials"], kind).copy()
    table.step = np.asarray(state["step"], np.int64).copy()
    # Checkpoints written before `settled` existed restore with no history (nothing skipped).
    table.settled = np.asarray(state.get("settled", np.zeros_like(table.step)), np.int64).copy()
    if "pending_step" in state:
      table._set_pending(state["pending_step"], state["pending_row"], state["pending_correct"])
    return table

  def _records(self) -> list[dict]:
    """One dict per problem. A decayed (fractional) table writes its counts rounded to the
    nearest integer as successes / trials (the pass-rate histogram grid, report.py) and the
    exact ones as decayed_successes / decayed_trials; pass_rate is always the exact s / n."""
    p = self.pass_rates()
    recs = [{"id": i, "successes": int(np.rint(s)), "trials": int(np.rint(n)),
             "pass_rate": None if np.isnan(q) else float(q), "step": int(t), "settled": int(z)}
            for i, s, n, q, t, z in zip(self._ids, self.successes, self.trials, p, self.step,
                                        self.settled)]
    if self.fractional:
      for r, s, n in zip(recs, self.successes, self.trials):
        r["decayed_successes"], r["decayed_trials"] = float(s), float(n)
    return recs

  @classmethod
  def _from_records(cls, records: Iterable[dict]) -> PassRateTable:
    records = list(records)
    table = cls(r["id"] for r in records)
    exact = bool(records) and records[0].get("decayed_trials") is not None
    key, kind = ("decayed_", np.float64) if exact else ("", np.int64)
    table.successes = np.asarray([r[key + "successes"] for r in records], kind)
    table.trials = np.asarray([r[key + "trials"] for r in records], kind)
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

    fields = [("id", pa.string()), ("successes", pa.int64()), ("trials", pa.int64()),
              ("pass_rate", pa.float64()), ("step", pa.int64()), ("settled", pa.int64())]
    if self.fractional:
      fields += [("decayed_successes", pa.float64()), ("decayed_trials", pa.float64())]
    pq.write_table(pa.Table.from_pylist(self._records(), schema=pa.schema(fields)), str(path))

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


def posterior_weight_sd(successes, trials, alpha: float, beta: float, a0: float = 1.0,
                        b0: float = 1.0) -> np.ndarray:
  """Posterior standard deviation of w = p^alpha (1-p)^beta for p ~ Beta(s + a0, n - s + b0):
  sqrt(E[w^2] - E[w]^2), E[w^2] = B(a + 2 alpha, b + 2 beta) / B(a, b) (the adaptive-K rule,
  estimate.estimate_pass_rates)."""
  s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
  a, b = s + a0, n - s + b0
  m1 = np.exp(betaln(a + alpha, b + beta) - betaln(a, b))
  m2 = np.exp(betaln(a + 2 * alpha, b + 2 * beta) - betaln(a, b))
  return np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def frontier_weights(successes, trials, cfg: PacedConfig = PacedConfig()) -> np.ndarray:
  """Unnormalised weight per problem under `cfg.weighting` (see the module docstring). Counts
  may be fractional (decayed cell counts, `synthesis.CellTable`)."""
  s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
  seen = n > 0
  p = s / np.where(seen, n, 1.0)  # (not max(n, 1): a decayed n may be below 1)
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
  """Summary of a pool's pass rates and of the sampling distribution `probs` built on them.
  Counts may be fractional (paced.merge=decay): p = s / n by value."""
  s, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
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
  at the nearest level). Fixed-width bins would leave bands no estimate can fall in. Fractional
  (decayed) trial counts are rounded to the nearest integer (at least 1) for the grid;
  `level_counts` then bins each estimate's exact s / n at the nearest level."""
  n = np.asarray(trials, np.float64).ravel()
  n = np.maximum(np.rint(n[n > 0]), 1).astype(np.int64)
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
