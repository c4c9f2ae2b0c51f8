"""Cheaper pass-rate estimates at fixed true p, by simulation (no model): what each stopping rule
does to the frontier weight, and what reuse does to the rows it hands out.

Table 1, the weight. For every true p, many problems get K = 8 Bernoulli(p) rollouts in stream
order and each rule decides how many it keeps (the outcomes are those of the full K, cut where
the rule stops: what estimate.estimate_pass_rates does with its fixed RNG streams):
  full          all K
  screen k0     paced.screen_rollouts = k0: k0 for all, the rest where the first k0 disagree
  adaptive k0   paced.adaptive_rollouts = k0: stages of k0, a problem stops once the posterior
                sd of w(p) = p (1 - p), p ~ Beta(s + 1, n - s + 1), is below paced.adaptive_sd
and prints E[w(s/n)] (the plug-in weight, paced) against the true w(p), E of the posterior mean
weight (paced_posterior), the mean rollouts spent, and how often the estimate counts as a
zero-variance ("settled") one for GRESO skipping, before (any unanimous estimate) and after
the fix (only a unanimous estimate with all K rollouts).

Table 2, reuse (paced.reuse_rollouts). A pool of problems all at true p gets K = 8 rollouts
each; weights are paced's plug-in w(s/n) with eps = 0.02; rows are drawn by pi and each draw
takes its problem's next unused reused rollout (rollout order). The share of reused rows that
are correct, without the split (the weight and the rows from the same K rollouts) and with
paced.reuse_split (the weight from rollouts 0, 2, 4, 6; rows from 1, 3, 5, 7).

    python benchmarks/adaptive_k.py [--problems 400000] [--sd 0.07]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paced_jax.frontier import kernel_weight, posterior_weight, posterior_weight_sd  # noqa: E402

K = 8
PS = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9)


def _counted(K_, split):
  return np.ones(K_, bool) if not split else np.arange(K_) % 2 == 0


def screened(o, k0, split=False):
  """(s, n, rollouts sampled) under paced.screen_rollouts = k0, from full-K outcomes [N, K];
  split: the counts (and the rule) read only rollouts 0, 2, 4, ... (paced.reuse_split)."""
  c = _counted(o.shape[1], split)
  s0, n0 = (o[:, :k0] & c[:k0]).sum(1), c[:k0].sum()
  go = (s0 > 0) & (s0 < n0)
  return (np.where(go, (o & c).sum(1), s0), np.where(go, c.sum(), n0),
          np.where(go, o.shape[1], k0))


def adaptive(o, k0, sd, kernel=(1.0, 1.0, 1.0, 1.0), split=False):
  """(s, n, rollouts sampled) under paced.adaptive_rollouts = k0 with threshold `sd`
  (estimate.py's rule)."""
  N, K_ = o.shape
  c = _counted(K_, split)
  s, n, m = np.zeros(N, np.int64), np.zeros(N, np.int64), np.zeros(N, np.int64)
  live = np.arange(N)
  for lo in range(0, K_, k0):
    hi = min(lo + k0, K_)
    s[live] += (o[live, lo:hi] & c[lo:hi]).sum(1)
    n[live] += c[lo:hi].sum()
    m[live] += hi - lo
    if hi < K_:
      live = live[posterior_weight_sd(s[live], n[live], *kernel) >= sd]
  return s, n, m


def weight_table(N: int, sd: float, rng) -> list[str]:
  rules = {"full K=8": lambda o: (o.sum(1), np.full(len(o), K), np.full(len(o), K)),
           "screen k0=2": lambda o: screened(o, 2), "screen k0=3": lambda o: screened(o, 3),
           f"adaptive k0=2 sd<{sd:g}": lambda o: adaptive(o, 2, sd),
           f"adaptive k0=4 sd<{sd:g}": lambda o: adaptive(o, 4, sd)}
  out = ["| p | w(p) | rule | E[w(s/n)] | bias | E[posterior w] | rollouts | settled before "
         "| settled after |", "|---|---|---|---|---|---|---|---|---|"]
  for p in PS:
    o = rng.random((N, K)) < p
    for name, rule in rules.items():
      s, n, _ = rule(o)
      w = kernel_weight(s / n, 1.0, 1.0)
      pw = posterior_weight(s, n, 1.0, 1.0)
      unanimous = (s == 0) | (s == n)
      out.append(f"| {p:g} | {p * (1 - p):.4f} | {name} | {w.mean():.4f} | "
                 f"{w.mean() - p * (1 - p):+.4f} | {pw.mean():.4f} | {n.mean():.2f} | "
                 f"{unanimous.mean():.3f} | {(unanimous & (n == K)).mean():.3f} |")
  return out


def reuse_share(p: float, N: int, draws: int, split: bool, rng, eps: float = 0.02,
                rule=None) -> float:
  """Share of correct reused rows (see the module docstring); `rule(o, split)` -> (s, n,
  sampled) stops rollouts early (under the split it reads only the even rollouts, as
  estimate_pass_rates(split=True) does)."""
  o = rng.random((N, K)) < p
  if rule is None:
    c = _counted(K, split)
    s, n, m = (o & c).sum(1), np.full(N, c.sum()), np.full(N, K)
  else:
    s, n, m = rule(o, split)
  k = np.arange(K)[None]
  have = k < m[:, None]
  reused = have & (k % 2 == 1) if split else have
  w = kernel_weight(s / np.maximum(n, 1), 1.0, 1.0)
  pi = (1 - eps) * w / w.sum() + eps / N
  picks = rng.choice(N, draws, p=pi)
  right = total = 0
  used = np.zeros(N, np.int64)
  rows = [np.flatnonzero(r) for r in reused]
  for i in picks:
    if used[i] < len(rows[i]):
      right += o[i, rows[i][used[i]]]
      total += 1
      used[i] += 1
  return right / max(total, 1)


def reuse_table(N: int, sd: float, rng) -> list[str]:
  out = ["| p | estimate rule | reused rows correct, no split | with reuse_split |",
         "|---|---|---|---|"]
  for p in (0.02, 0.1, 0.3, 0.5):
    for name, rule in (("full K=8", None), ("screen k0=3", lambda o, sp: screened(o, 3, sp)),
                       ("screen k0=4", lambda o, sp: screened(o, 4, sp)),
                       (f"adaptive k0=2 sd<{sd:g}", lambda o, sp: adaptive(o, 2, sd, split=sp))):
      a = reuse_share(p, N, N // 2, False, rng, rule=rule)
      b = reuse_share(p, N, N // 2, True, rng, rule=rule)
      out.append(f"| {p:g} | {name} | {a:.3f} | {b:.3f} |")
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--problems", type=int, default=400_000)
  ap.add_argument("--sd", type=float, default=0.07, help="paced.adaptive_sd")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  rng = np.random.default_rng(args.seed)
  print(f"## Stopping rules at fixed p (K = {K}, {args.problems} problems per p)\n")
  print("\n".join(weight_table(args.problems, args.sd, rng)))
  print(f"\n## Reused rows at fixed p (K = {K}, paced weights, eps = 0.02; {args.problems // 4} "
        f"problems, {args.problems // 8} draws)\n")
  print("\n".join(reuse_table(args.problems // 4, args.sd, rng)))


if __name__ == "__main__":
  main()
