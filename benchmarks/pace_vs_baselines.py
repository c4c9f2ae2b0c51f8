"""PACED against its baselines at equal compute, on the embedded default (configs/demo.py).

    python benchmarks/pace_vs_baselines.py                    # the study: 8 arms x 3 seeds
    python benchmarks/pace_vs_baselines.py --config configs/demo.py:tiny --arms uniform paced \\
        --seeds 0 --budget-steps 4 --snr-problems 16          # seconds: checks the script

Arms (one config override set each; everything else is configs/demo.py):
  uniform     uniform sampling, forward KL on the reference solutions   (no rollouts at all)
  paced       PACED: problems sampled by w(p) = p(1-p)                  (the method)
  paced_lw    uniform sampling, per-example loss weights w(p)           (the paper's ablation)
  posterior   sampled by the Beta-posterior mean of w(p)
  dapo        sampled uniformly among problems with 0 < p < 1          (DAPO-style filter)
  band        sampled uniformly among problems with 0.2 <= p <= 0.8
  akl         uniform sampling, adaptive KL (Wu et al. 2024) instead of forward KL
  two_stage   PACED sampling; forward KL, then reverse KL on the student's own rollouts

Equal compute: every run stops at the same budget of model FLOPs (paced_jax/flops.py): train
steps (3x student forward + teacher forward) plus every rollout (pass-rate estimates, on-policy
batches). The budget is what `uniform`, seed 0, spends in --budget-steps steps; every arm,
uniform's other seeds included, then trains until it has spent that (`train.max_flops`), with a
constant learning rate after warmup so where a run stops does not change its schedule.

Measured per run: held-out accuracy avg@k per difficulty (test split) at every eval, the
mastered probe (forgetting = before - after), steps, FLOPs split. Across seeds: mean and spread,
and the compute each arm needs to reach uniform's final accuracy. Separately, on the starting
student: the cross-problem gradient signal-to-noise ratio per pass-rate bucket (the paper's
central observation), ||mean_i g_i||^2 / mean_i ||g_i - mean g||^2 over the problems i of a
bucket, each g_i the gradient of the distillation loss on problem i's reference solution.

Runs are resumable: a run whose directory has eval_after.json is read, not rerun. Writes
`<out>/results.json` and, with --write-results, benchmarks/results/pace_vs_baselines.{md,json}
and its PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS: dict[str, tuple[str, ...]] = {
    "uniform": ("paced.weighting=uniform",),
    "paced": ("paced.weighting=paced",),
    "paced_lw": ("paced.weighting=paced", "paced.use=loss_weight"),
    "posterior": ("paced.weighting=paced_posterior",),
    "dapo": ("paced.weighting=dapo",),
    "band": ("paced.weighting=band",),
    "akl": ("paced.weighting=uniform", "loss.divergence=akl"),
    "two_stage": ("paced.weighting=paced", "loss.mode=two_stage"),
}
P_BUCKETS = ((0.0, 0.0), (0.01, 0.3), (0.3, 0.7), (0.7, 0.99), (1.0, 1.0))  # closed intervals


def common_overrides(args) -> list[str]:
  return ["generate.source=", "train.schedule=constant", f"train.steps={args.budget_steps * 3}",
          f"train.eval_every={args.eval_every}", "train.log_every=1", "train.ckpt_every=100000",
          f"paced.refresh_subset={args.refresh_subset}", f"eval.max_problems={args.eval_problems}"]


def run_arm(args, arm: str, seed: int, extra: list[str], log, check=None,
            arms: dict | None = None) -> dict:
  """One arm's run (resumed or read back when it exists). `check(cfg)` sees the resolved
  config before training and may stop the sweep. `arms`: the arm table (default ARMS)."""
  from paced_jax.config import load_config
  from paced_jax.metrics import read_metrics
  from paced_jax.train import train

  wd = Path(args.out) / arm / f"seed_{seed}"
  done = wd / "eval_after.json"
  if not done.exists():
    over = common_overrides(args) + list((arms or ARMS)[arm]) + extra + [f"seed={seed}"]
    cfg = load_config(args.config, over)
    if check is not None:
      check(cfg)
    t0 = time.perf_counter()
    train(cfg, wd, progress=False)
    log(f"  {arm:<10} seed {seed}: {time.perf_counter() - t0:6.0f} s")
  rows = read_metrics(wd)
  flops_at = {m["step"]: m["compute/flops"] for m in rows if "compute/flops" in m}
  last = max(flops_at)
  before = json.loads((wd / "eval_before.json").read_text())
  after = json.loads(done.read_text())
  # Evals at step s see the compute of steps 0..s-1; the final eval sees all of it.
  curve = [(0.0, before["eval/test/overall"])]
  for m in rows:
    if "eval/test/overall" in m and 0 < m["step"] <= last:
      curve.append((flops_at[m["step"] - 1], m["eval/test/overall"]))
  curve.append((flops_at[last], after["eval/test/overall"]))
  final = [m for m in rows if m.get("step") == last and "compute/rollout_flops" in m][0]
  return {"arm": arm, "seed": seed, "steps": last + 1, "flops": flops_at[last],
          "rollout_flops": final["compute/rollout_flops"], "before": before, "after": after,
          "curve": sorted(curve)}


def flops_to_reach(curve, target: float) -> float | None:
  """First compute at which the (linearly interpolated) accuracy curve reaches target."""
  if curve[0][1] >= target:
    return curve[0][0]
  for (f0, a0), (f1, a1) in zip(curve, curve[1:]):
    if a1 >= target:
      return f1 if a1 == a0 else f0 + (f1 - f0) * max(0.0, (target - a0) / (a1 - a0))
  return None


# ----------------------------------------------------------------------------- gradient SNR


SNR_LOSSES = {
    # g_i: forward KL (teacher-forced) on problem i's teacher reference solution (off-policy)
    "references": ("loss.mode=distill", "loss.divergence=forward_kl"),
    # g_i: reverse KL on one fresh rollout of the starting student for problem i, the row that
    # loss.mode=on_policy trains on (rollout_data.on_policy_batch)
    "on_policy": ("loss.mode=on_policy", "loss.divergence=reverse_kl"),
    # g_i: self-distillation's reverse KL on one fresh rollout of the starting student against
    # the starting student shown problem i's reference solution (loss.mode=self_distill)
    "self_distill": ("loss.mode=self_distill", "loss.divergence=reverse_kl"),
}


def _snr(gram) -> tuple[float, float]:
  """(SNR, SNR with the 1/n bias of the squared mean removed) of the gradients whose Gram matrix
  is `gram` [n, n]: ||mean g||^2 = sum(gram) / n^2, mean ||g - mean g||^2 = tr(gram) / n minus
  that."""
  n = gram.shape[0]
  sq = float(gram.sum()) / n ** 2
  dev = float(np.trace(gram)) / n - sq
  if dev <= 0:  # every gradient equal (a bootstrap draw of one problem)
    return float("nan"), float("nan")
  return sq / dev, (sq - dev / (n - 1)) / dev


def _snr_se(gram, draws: int = 1000, seed: int = 0) -> float:
  """Bootstrap standard error (over the bucket's problems) of the bias-corrected SNR."""
  rng = np.random.default_rng(seed)
  n = gram.shape[0]
  vals = [_snr(gram[np.ix_(s, s)])[1] for s in rng.integers(0, n, (draws, n))]
  return float(np.nanstd(vals, ddof=1))


def gradient_snr(args, log, *, loss: str = "references", extra=(), wd: Path | None = None
                 ) -> dict:
  """Per-problem gradients of the starting student's distillation loss (`loss`: a key of
  SNR_LOSSES), grouped by its pass rate from `--snr-rollouts` samples; SNR per bucket (raw, and
  with the 1/n bias of the squared mean removed). `extra`: config overrides (e.g. a pool's
  level weights); args.set, when the caller has it, applies too."""
  import jax
  import jax.numpy as jnp

  from paced_jax import losses
  from paced_jax import step as step_lib
  from paced_jax.config import load_config, pick_bucket
  from paced_jax.distributed import to_host
  from paced_jax.estimate import estimate_for_config
  from paced_jax.rollout_data import on_policy_batch
  from paced_jax.train import setup

  over = common_overrides(args) + list(getattr(args, "set", [])) + list(extra)
  cfg = load_config(args.config, over + list(SNR_LOSSES[loss]) + ["eval.max_problems=0",
                                                                   "generate.source="])
  run, state = setup(cfg, wd or Path(args.out) / "snr", progress=False)
  rng = np.random.default_rng(0)
  idx = np.sort(rng.choice(len(run.problems), min(args.snr_problems, len(run.problems)),
                           replace=False))
  problems = [run.problems[i] for i in idx]
  est = estimate_for_config(run.student_engine(state), problems, run.tokenizer, run.verifier,
                            cfg, run.mesh, rollouts=args.snr_rollouts, rng=jax.random.key(123))
  p = est.successes / est.trials
  if loss == "references":
    pool = run.pipeline.pool
    ref = pool.ref_offsets[idx]
    T = pick_bucket(int(pool.row_lengths(idx, ref).max()), cfg.data.length_buckets)
    rows = pool.pack(idx, ref, T, run.tokenizer.pad_id)
  else:  # one rollout per problem, sampled as an on-policy step samples it (other RNG streams)
    chunk = cfg.data.batch_size
    parts = []
    for c in range(0, len(idx), chunk):
      sel = np.resize(idx[c:c + chunk], chunk)  # a full batch; the repeats are dropped below
      b = on_policy_batch(run, state, {"index": sel, "weights": np.ones(chunk, np.float32)},
                          step=10**6 + c)
      parts.append({k: to_host(v)[:len(idx[c:c + chunk])] for k, v in b.items()})
    # Each key to its own longest chunk: self_distill's teacher rows (the privileged prompt
    # + the response) are longer than the student's.
    T = {k: max(x[k].shape[1] for x in parts) for k in parts[0] if parts[0][k].ndim > 1}
    pad = lambda x, k: np.pad(x, [(0, 0), (0, T[k] - x.shape[1])] + [(0, 0)] * (x.ndim - 2),
                              constant_values=run.tokenizer.pad_id if "tokens" in k else 0)
    rows = {k: np.concatenate([pad(x[k], k) if x[k].ndim > 1 else x[k] for x in parts])
            for k in parts[0] if k not in ("index", "weights")}
  rows["weights"] = np.ones(len(idx), np.float32)
  kind = jnp.int32(losses.DIVERGENCES.index(cfg.loss.resolved_divergence))
  loss_fn = functools.partial(step_lib.loss_fn, cfg=cfg, student_def=run.student_def,
                              teacher_def=run.teacher_def)

  @jax.jit
  def flat_grad(params, teacher_params, row):
    batch = jax.tree.map(lambda x: x[None], row)
    g = jax.grad(lambda q: loss_fn(q, teacher_params, batch, kind)[0])(params)
    return jnp.concatenate([x.reshape(-1).astype(jnp.float32) for x in jax.tree.leaves(g)])

  grads = np.stack([np.asarray(flat_grad(state.params, run.teacher_params,
                                         {k: v[i] for k, v in rows.items()}))
                    for i in range(len(idx))])
  out = {"loss": loss, "rollouts": args.snr_rollouts, "problems": len(idx), "buckets": []}
  for lo, hi in P_BUCKETS:
    sel = (p >= lo) & (p <= hi)
    n = int(sel.sum())
    entry = {"lo": lo, "hi": hi, "n": n, "p_mean": float(p[sel].mean()) if n else None}
    if n >= 3:
      G = grads[sel].astype(np.float64)
      gram = G @ G.T
      snr, snr_u = _snr(gram)
      entry.update(snr=snr, snr_unbiased=snr_u, snr_unbiased_se=_snr_se(gram),
                   grad_norm=float(np.linalg.norm(G, axis=1).mean()))
    out["buckets"].append(entry)
  run.pipeline.close()
  run.writer.close()
  log(f"  gradient SNR ({loss}) by pass rate: " + ", ".join(
      f"p in [{b['lo']:.2f},{b['hi']:.2f}] n={b['n']} snr={b.get('snr', float('nan')):.3f}"
      for b in out["buckets"]))
  return out


# ----------------------------------------------------------------------------- report


def summarise(results: list[dict], arms: list[str], budget: float) -> dict:
  import numpy as np

  by_arm = {a: [r for r in results if r["arm"] == a] for a in arms}
  # Paired by seed: a seed fixes the eval draws, so every arm of one seed starts from the same
  # measured accuracy and differences to uniform's run of that seed cancel the eval noise.
  uni = {r["seed"]: r for r in by_arm.get("uniform", [])}
  acc = lambda r, when: r[when]["eval/test/overall"]
  gained = {seed: acc(r, "after") for seed, r in uni.items() if acc(r, "after") > acc(r, "before")}
  summary = {"budget_flops": budget, "arms": {},
             "uniform_final": {str(k): acc(r, "after") for k, r in uni.items()}}
  for arm, rs in by_arm.items():
    if not rs:
      continue
    keys = sorted({k for r in rs for k in r["after"] if k.startswith("eval/")})
    stat = lambda vals: {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1))
                         if len(vals) > 1 else 0.0, "values": [float(v) for v in vals]}
    s = {k: stat([r["after"][k] for r in rs]) for k in keys}
    s["forgetting"] = stat([r["before"]["eval/probe/overall"] - r["after"]["eval/probe/overall"]
                            for r in rs if "eval/probe/overall" in r["before"]] or [np.nan])
    s["steps"] = stat([r["steps"] for r in rs])
    s["rollout_share"] = stat([r["rollout_flops"] / r["flops"] for r in rs])
    s["gain"] = stat([acc(r, "after") - acc(r, "before") for r in rs])
    s["delta_vs_uniform"] = stat([acc(r, "after") - acc(uni[r["seed"]], "after") for r in rs
                                  if r["seed"] in uni] or [np.nan])
    # Compute to reach uniform's final accuracy of the same seed, over the seeds where uniform
    # ended above its start (elsewhere every run "reaches" it at step 0).
    reach = [flops_to_reach(r["curve"], gained[r["seed"]]) for r in rs if r["seed"] in gained]
    s["paired_seeds"] = len(reach)
    s["reached"] = sum(x is not None for x in reach)
    s["flops_to_target"] = stat([x / budget for x in reach if x is not None] or [np.nan])
    summary["arms"][arm] = s
  return summary


def write_markdown(path: Path, summary: dict, snr: dict | None, args, seeds, env: str) -> None:
  arms = summary["arms"]
  fmt = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"
  levels = sorted({k for a in arms.values() for k in a if k.startswith("eval/test/level_")},
                  key=lambda k: int(k.rsplit("_", 1)[1]))
  lines = [f"# PACED vs baselines at equal compute ({env})", "",
           f"Command: `{args.command}` "
           f"(config {args.config}, seeds {list(seeds)}, budget = uniform seed {seeds[0]} at "
           f"{args.budget_steps} steps = {summary['budget_flops']:.3g} model FLOPs).",
           "Accuracy is avg@k on the held-out test split (mean ± sample std over seeds); gain = "
           "after - before; Δ uniform = after - uniform's after, paired by seed (a seed fixes the "
           "eval draws); forgetting = probe accuracy before - after (positive = forgot); 'to "
           "reach uniform' is the compute, as a fraction of the budget, at which a run first "
           "reaches uniform's final accuracy of the same seed (runs that reached it / seeds "
           "where uniform ended above its start).", "",
           "| arm | test overall | gain | Δ uniform | " + " | ".join(
               k.rsplit("/", 1)[1] for k in levels)
           + " | probe | forgetting | steps | rollout share | to reach uniform |",
           "|---" * (9 + len(levels)) + "|"]
  for arm, s in arms.items():
    n = s["paired_seeds"]
    reach = (f"{s['flops_to_target']['mean']:.2f} ({s['reached']}/{n})" if s["reached"]
             else f"never (0/{n})")
    lines.append(f"| {arm} | {fmt(s['eval/test/overall'])} | {s['gain']['mean']:+.3f} | "
                 f"{s['delta_vs_uniform']['mean']:+.3f} ± {s['delta_vs_uniform']['std']:.3f} | "
                 + " | ".join(f"{s[k]['mean']:.3f}" for k in levels)
                 + f" | {fmt(s['eval/probe/overall']) if 'eval/probe/overall' in s else '-'}"
                 f" | {fmt(s['forgetting'])} | {s['steps']['mean']:.0f} | "
                 f"{s['rollout_share']['mean']:.0%} | {reach} |")
  if snr:
    lines += ["", f"Gradient SNR across problems, starting student, {snr['problems']} problems, "
              f"p from {snr['rollouts']} rollouts each:", "",
              "| p bucket | problems | mean p | SNR | SNR (bias-corrected) | mean grad norm |",
              "|---|---|---|---|---|---|"]
    for b in snr["buckets"]:
      if "snr" in b:
        lines.append(f"| [{b['lo']:.2f}, {b['hi']:.2f}] | {b['n']} | {b['p_mean']:.2f} | "
                     f"{b['snr']:.4f} | {b['snr_unbiased']:.4f} | {b['grad_norm']:.3f} |")
      else:
        lines.append(f"| [{b['lo']:.2f}, {b['hi']:.2f}] | {b['n']} | - | - | - | - |")
  path.write_text("\n".join(lines) + "\n")


def plot(prefix: Path, results: list[dict], summary: dict, snr: dict | None) -> list[Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  written = []
  budget = summary["budget_flops"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  grid = np.linspace(0, 1, 41)
  for arm in summary["arms"]:
    curves = [np.interp(grid, *zip(*[(f / budget, a) for f, a in r["curve"]]))
              for r in results if r["arm"] == arm]
    m = np.mean(curves, 0)
    line, = ax.plot(grid, m, label=arm, lw=2.2 if arm in ("uniform", "paced") else 1.2)
    ax.fill_between(grid, np.min(curves, 0), np.max(curves, 0), color=line.get_color(),
                    alpha=0.12)
  ax.set(xlabel="compute (fraction of the FLOP budget)", ylabel="held-out accuracy (avg@k)",
         title="Accuracy vs compute (mean over seeds, band = min..max)")
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  written.append(prefix.with_name(prefix.name + "_accuracy_vs_compute.png"))
  fig.savefig(written[-1], dpi=120)
  plt.close(fig)

  arms = list(summary["arms"])
  levels = sorted({k for a in summary["arms"].values() for k in a
                   if k.startswith("eval/test/level_")}, key=lambda k: int(k.rsplit("_", 1)[1]))
  fig, ax = plt.subplots(figsize=(8, 4.5))
  width = 0.8 / len(arms)
  for j, arm in enumerate(arms):
    s = summary["arms"][arm]
    ax.bar(np.arange(len(levels)) + j * width, [s[k]["mean"] for k in levels], width,
           yerr=[s[k]["std"] for k in levels], label=arm, capsize=2)
  before = np.mean([[r["before"][k] for k in levels] for r in results], 0)
  ax.scatter(np.arange(len(levels)) + 0.4 - width / 2, before, color="black", marker="_", s=400,
             label="before", zorder=3)
  ax.set_xticks(np.arange(len(levels)) + 0.4 - width / 2, [k.rsplit("/", 1)[1] for k in levels])
  ax.set(ylabel="held-out accuracy (avg@k)", title="Final accuracy by difficulty (± std)")
  ax.legend(fontsize=7, ncol=3)
  fig.tight_layout()
  written.append(prefix.with_name(prefix.name + "_by_difficulty.png"))
  fig.savefig(written[-1], dpi=120)
  plt.close(fig)

  if snr and any("snr" in b for b in snr["buckets"]):
    bs = [b for b in snr["buckets"] if "snr" in b]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([b["p_mean"] for b in bs], [b["snr"] for b in bs], "o-", label="SNR")
    ax.plot([b["p_mean"] for b in bs], [b["snr_unbiased"] for b in bs], "s--",
            label="SNR, 1/n bias removed")
    for b in bs:
      ax.annotate(f"n={b['n']}", (b["p_mean"], b["snr"]), textcoords="offset points",
                  xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="pass rate p (bucket mean)", ylabel="cross-problem gradient SNR",
           title="Gradient SNR by pass rate (starting student)")
    ax.legend()
    fig.tight_layout()
    written.append(prefix.with_name(prefix.name + "_snr.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
  return written


def environment() -> str:
  import platform

  import flax
  import jax

  return (f"{os.cpu_count()}-core {platform.machine()} CPU, jax {jax.__version__}, "
          f"flax {flax.__version__}, {time.strftime('%Y-%m-%d')}")


def study_start(args, argv, script: str):
  """Records the command line (args.command), runs from the repository root with a persistent
  compilation cache under --out; returns the flushing log function."""
  args.command = shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])
  os.chdir(ROOT)
  import jax

  jax.config.update("jax_compilation_cache_dir", str(Path(args.out).absolute() / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return functools.partial(print, flush=True)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--out", default="runs/pace_vs_baselines")
  ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
  ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  ap.add_argument("--budget-steps", type=int, default=150,
                  help="the FLOP budget is what uniform (seed of the first --seeds) spends here")
  ap.add_argument("--eval-every", type=int, default=40)
  ap.add_argument("--eval-problems", type=int, default=150, help="per held-out split")
  ap.add_argument("--refresh-subset", type=int, default=256)
  ap.add_argument("--snr-problems", type=int, default=400)
  ap.add_argument("--snr-rollouts", type=int, default=8)
  ap.add_argument("--write-results", action="store_true",
                  help="also write benchmarks/results/NAME.{md,json} and PNGs")
  ap.add_argument("--name", default="pace_vs_baselines", help="NAME of the result files")
  args = ap.parse_args(argv)
  log = study_start(args, argv, "benchmarks/pace_vs_baselines.py")
  t_start = time.perf_counter()
  log(f"study: arms {args.arms}, seeds {args.seeds}, into {args.out}")
  first = args.seeds[0]
  # 1. The budget: uniform's compute over --budget-steps steps (a fixed step count).
  budget_run = run_arm(args, "uniform", first, [f"train.steps={args.budget_steps}"], log)
  budget = budget_run["flops"]
  log(f"budget: {budget:.4g} model FLOPs ({args.budget_steps} uniform steps)")
  results = [budget_run] if "uniform" in args.arms else []
  # 2. PACED's step count at that budget sets where two_stage switches (half of it).
  paced_steps = None
  order = [a for a in args.arms if a != "two_stage"] + [a for a in args.arms if a == "two_stage"]
  total = len(order) * len(args.seeds) - (1 if "uniform" in args.arms else 0)
  k = 0
  for arm in order:
    for seed in args.seeds:
      if arm == "uniform" and seed == first:
        continue
      extra = [f"train.max_flops={budget!r}"]
      if arm == "two_stage":
        if paced_steps is None:
          paced_steps = run_arm(args, "paced", first, extra, log)["steps"]
        extra.append(f"loss.two_stage_switch={paced_steps / 2 / (args.budget_steps * 3)!r}")
      k += 1
      t0 = time.perf_counter()
      r = run_arm(args, arm, seed, extra, log)
      results.append(r)
      if arm == "paced" and seed == first:
        paced_steps = r["steps"]
      el = time.perf_counter() - t_start
      log(f"[{k}/{total}] {arm} seed {seed}: test {r['after']['eval/test/overall']:.3f} "
          f"(before {r['before']['eval/test/overall']:.3f}), {r['steps']} steps, "
          f"{time.perf_counter() - t0:.0f} s; elapsed {el / 60:.1f} min, "
          f"eta {el / k * (total - k) / 60:.0f} min")
  snr = None
  previous = Path(args.out) / "results.json"
  if previous.exists():  # like the runs, the SNR measurement is read back, not redone
    old = json.loads(previous.read_text())
    same = all(old["args"].get(k) == getattr(args, k)
               for k in ("config", "snr_problems", "snr_rollouts", "refresh_subset"))
    snr = old.get("snr") if same else None
  if snr is None and args.snr_problems > 0:
    snr = gradient_snr(args, log)
  summary = summarise(results, args.arms, budget)
  env = environment()
  out = Path(args.out)
  payload = {"env": env, "args": vars(args), "summary": summary, "snr": snr, "runs": results}
  (out / "results.json").write_text(json.dumps(payload, indent=1))
  write_markdown(out / "results.md", summary, snr, args, args.seeds, env)
  written = plot(out / args.name, results, summary, snr)
  if args.write_results:
    dest = ROOT / "benchmarks" / "results"
    (dest / f"{args.name}.json").write_text(json.dumps(payload, indent=1))
    write_markdown(dest / f"{args.name}.md", summary, snr, args, args.seeds, env)
    written = plot(dest / args.name, results, summary, snr)
  print((out / "results.md").read_text())
  for w in written:
    log(f"wrote {w}")
  log(f"study done in {(time.perf_counter() - t_start) / 60:.1f} min")
  return 0


if __name__ == "__main__":
  sys.exit(main())
