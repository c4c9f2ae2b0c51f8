"""Where frontier weighting pays: PACED against uniform as the pool's mastered share grows.

The study of benchmarks/pace_vs_baselines.py, repeated over pools of different composition
(`data.synthetic_level_weights`), regimes (losses) and K, at equal compute within each
(pool, regime, K) cell. Tables, figure and commands: benchmarks/results/phase_diagram.md.

    python benchmarks/phase_diagram.py --config configs/demo.py:tiny --pools m0 m50 \\
        --arms uniform paced --seeds 0 --budget-steps 2 --eval-problems 30 \\
        --heldout-per-cell 2 --measure-problems 1 --measure-k 2 --mastered-levels 1 \\
        --out /tmp/pd      # about a minute (compiles): checks the script, as the test does

Steps:
1. Levels. The starting student's pass rate p on --measure-problems train problems per level
   (K = --measure-k rollouts each; resumable: <out>/levels.json). A level is "mastered" when its
   mean p >= --mastered-p (or as --mastered-levels says), "hopeless" when <= --hopeless-p.
2. Pools. "today" is the round robin (every level equal); "mNN" puts NN% of the pool on the
   mastered levels and the rest on the frontier levels (neither mastered nor hopeless),
   equally: the mastered axis. "hNN" is the hopeless axis: a pool whose p = 0 share is NN%
   (hopeless levels mixed in) with its p = 1 share held at m0's (mastered levels mixed in to
   hold it, where the pool has room for them; the table gives every pool's shares); h0 is m0. The pool's p histogram is the per-level measurement weighted by the
   composition; its p = 1 share (mastered axis) or p = 0 share (hopeless axis) is the figure's
   x axis.
3. Runs. Per cell (pool, regime, K), the arms of benchmarks/pace_vs_baselines.py at equal
   FLOPs: the budget is what `uniform`, seed --budget-seed, spends in --budget-steps steps (train
   steps plus every rollout). Regimes: fkl (forward KL on references, off-policy), on_policy
   (reverse KL on the student's rollouts), two_stage (forward KL, then reverse KL; each arm
   switches at half the steps its fkl run took at the same budget). A finished run
   (eval_after.json) is read, not rerun, so a command can be split by pools, arms, seeds,
   regimes or K and rerun safely; every command summarises all finished runs under --out.
   self_distill: reverse KL on the student's rollouts against a frozen copy of the starting
   student shown the reference solution (loss.privileged_template). fkl_teacher /
   fkl_teacher_unverified: forward KL on the teacher's own responses (data.reference=teacher,
   sampled once per problem and seed into one cache per pool, <out>/POOL/references), kept
   only when they verify (a problem with none is never drawn) or every one as it comes
   (data.reference_verify=false). Arms gen_uniform / gen_paced train on generated rounds
   (frontier synthesis: fresh problems of the pool's families and of the levels it weights,
   uniform over those cells or by each cell's p(1-p)) at the same budget, scored on the same
   held-out problems; they are left out where undefined (teacher references are sampled for
   a fixed pool).
   Two views (--views): "flops" is the above; "steps" (the paper's view) continues each run that
   stopped at the budget before uniform's --budget-steps (a copy of its workdir, resumed without
   the budget: <out>/POOL/steps/REGIME/ARM/seed_S) and evaluates it there, so both views come
   from the same runs (a run that reached --budget-steps within the budget is its own
   equal-steps run). Not for two_stage (its switch is a fraction of train.steps).
4. Evaluation. Held-out test split, --heldout-per-cell problems per (family, level) (750 at 75
   and 2 families x 5 levels) x --eval-samples samples, before and after each run; no evals in
   between unless --eval-every. The pool's score is the test accuracy per level weighted by the
   pool's composition (what the pool asks for); the level-balanced accuracy is reported beside
   it. Forgetting: the probe split (levels 1-2, 300 problems at 75 per cell and 2 families), before - after.
   Differences to uniform are paired by seed: mean ± standard error over seeds; "eval SE" is
   the binomial bound on one difference's evaluation noise, sqrt(2 sum_l w_l^2 a_l(1-a_l)/(n_l k)).

To reproduce the sweep (each command <= 2 h on a shared 2-core CPU; run in order; finished runs
are read, not rerun). Cost measured at this size: a uniform run of 30 steps with its two
1,050-problem x 8-sample evals took 61 s, PACED's 95 s (23% of its FLOPs on estimates), so at
200 budget steps about 2.5 and 4 min a run, 15 runs per pool ~ 55-80 min. The student is
configs/demo_models.py:student_strong on families add and sort: it masters levels 1-2 (mean p
0.95, 0.91; levels 3-5 0.81, 0.69, 0.54), so pools m0 / m50 / m90 have p = 1 shares of about
0.17 / 0.41 / 0.60.

    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m0    # part 1: 15 fkl runs, ~1-1.5 h (the first run also measures the levels)
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m50   # part 2, the same
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m90   # part 3, the same
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --regimes on_policy --pools m0     # part 4: 15 on-policy runs, ~25 min
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --regimes on_policy --pools m50    # part 5, the same
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --regimes two_stage --pools m0     # part 6: 15 two-stage runs, ~35 min
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m0 --arms uniform paced posterior dapo --k 4 8   # part 7: K = 8 at m0, ~30 min
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --regimes two_stage --pools m50    # part 8, as part 6
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m0 --arms uniform --seeds 0 --snr-problems 1600   # gradient SNR per p bucket, both losses, ~10 min
    python benchmarks/phase_diagram.py --set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort --mastered-levels 1 2 --budget-steps 200 --pools m0 m50 m90 --regimes fkl on_policy two_stage --k 4 8 --report-only --write-results   # the report, with every part

The hopeless axis (issue: where PACED pays, part 2): levels 1-8 of the suite (levels 6-8 lie
beyond the strong student), pools h0 / h25 / h50 (p = 0 share about 0, 25%, 50%; p = 1 share
held at m0's), regimes in the order the CPU budget asks for: self-distillation (the privileged
teacher is the starting student shown the solution; the strong student cannot read one, so
this part starts from configs/demo_models.py's student_privileged, in its own --out with its
own measured levels, and a 256-token bucket holds privileged prompt + response), forward KL on the suite's own
(correct) solutions, on-policy reverse KL; both views (equal FLOPs, equal steps). Each command
is one part, resumable, <= 2 h on a 2-core CPU; the measured times are in
benchmarks/results/hopeless.md.

To reproduce the hopeless axis (HA = the options every part shares):

    HA="--set train.init_student=configs/assets/demo_student_strong data.synthetic_families=add,sort data.synthetic_levels=8 --mastered-levels 1 2 --budget-steps 200 --eval-problems 1200 --out runs/hopeless --results-name hopeless"
    SD="--set train.init_student=configs/assets/demo_student_privileged data.length_buckets=96,128,192,256 --hopeless-p 0.2 --out runs/hopeless_sd --results-name hopeless_sd"
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h0     # part 1a: self-distillation from the privileged student (configs/demo_models.py), 15 runs + equal-steps continuations (the first run also measures its 8 levels)
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h25    # part 1b
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h50    # part 1c
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h0 --seeds 3 4 5    # part 1e: 6 seeds where 3 leave |delta| > 0.01 inside two SE (25 min)
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h25 --seeds 3 4 5 --arms uniform paced posterior dapo    # part 1f (17 min)
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h50 --seeds 3 4 5 --arms uniform paced posterior dapo    # part 1g (17 min)
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools m50    # part 1d: self-distillation at today's m50 point of the mastered axis
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h50 --arms uniform --seeds 0 --snr-problems 800 --snr-losses references on_policy self_distill   # gradient SNR per p bucket, three losses (p = 0 bucket ~400 problems)
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h0              # part 2a-c: forward KL along the axis (then h25, h50; 19-24 min each)
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h0 --seeds 3 4 5 --arms uniform posterior dapo    # part 2d: 6 seeds where 3 leave |delta| > 0.01 inside two SE
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h25 --seeds 3 4 5 --arms uniform paced posterior dapo    # part 2e
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h50 --seeds 3 4 5 --arms uniform paced akl    # part 2f: 6 seeds for the arms ahead after 3
    python benchmarks/phase_diagram.py $HA --regimes on_policy --pools h0        # part 3a-c: on-policy reverse KL along the axis (then h25, h50; 24 min each, two at once)
    python benchmarks/phase_diagram.py $HA --regimes on_policy --pools h50 --seeds 3 4 5 --arms uniform dapo    # part 3d: 6 seeds for the arm ahead after 3
    python benchmarks/phase_diagram.py $HA --regimes on_policy --pools h25 --seeds 3 4 5 --arms uniform paced dapo    # part 3e: 6 seeds where 3 leave |delta| > 0.01 inside two SE
    python benchmarks/phase_diagram.py $HA --regimes fkl_teacher --pools h50     # part 4a: forward KL on the teacher's verified responses
    python benchmarks/phase_diagram.py $HA --regimes fkl_teacher_unverified --pools h50    # part 4b: on every teacher response as it comes
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h50 --arms uniform gen_uniform gen_paced --seeds 0 1 2 3 4 5    # part 5: generated pools where fixed-pool PACED does best (6 seeds: ahead, or inside two SE, after 3)
    python benchmarks/phase_diagram.py $HA --regimes on_policy --pools h0 --seeds 3 4 5 --arms uniform paced posterior dapo    # part 3f: 6 seeds where 3 leave |delta| > 0.01 inside two SE
    python benchmarks/phase_diagram.py $HA --regimes fkl --pools h50 --arms uniform akl_paced    # part 6: AKL's divergence with PACED's sampling
    python benchmarks/phase_diagram.py $HA --regimes fkl_teacher --pools h50 --seeds 3 4 5 --arms uniform paced dapo akl    # part 4c: 6 seeds for the arms ahead or inside two SE after 3
    python benchmarks/phase_diagram.py $HA --regimes fkl_teacher_unverified --pools h50 --seeds 3 4 5 --arms uniform paced akl    # part 4d: 6 seeds for the arms ahead after 3
    python benchmarks/phase_diagram.py $HA --regimes fkl fkl_teacher fkl_teacher_unverified on_policy --pools h0 h25 h50 --report-only --write-results   # the report (hopeless.md, .png)
    python benchmarks/phase_diagram.py $HA $SD --regimes self_distill --pools h0 h25 h50 --snr-pool h50 --report-only --write-results   # the self-distillation report (hopeless_sd.md, .png)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pace_vs_baselines as base  # noqa: E402  (the arms, one run, the environment line)

REGIMES = {"fkl": ("loss.mode=distill", "loss.divergence=auto"),
           # Forward KL on the teacher's own responses (sampled once per problem and seed,
           # cached per pool): kept only when they verify, or every one as it comes (real
           # pools have both; on a level beyond the teacher the first keeps nothing there).
           "fkl_teacher": ("loss.mode=distill", "loss.divergence=auto", "data.reference=teacher"),
           "fkl_teacher_unverified": ("loss.mode=distill", "loss.divergence=auto",
                                      "data.reference=teacher", "data.reference_verify=false"),
           "on_policy": ("loss.mode=on_policy", "loss.divergence=auto"),
           "two_stage": ("loss.mode=two_stage", "loss.divergence=auto"),
           "self_distill": ("loss.mode=self_distill", "loss.divergence=auto")}
# The equal-steps view continues a run past its FLOP budget to uniform's step count; two_stage's
# switch is a fraction of train.steps, so continuing would move it: that regime has no such view.
STEPS_REGIMES = ("fkl", "fkl_teacher", "fkl_teacher_unverified", "on_policy", "self_distill")
DEFAULT_ARMS = ("uniform", "paced", "posterior", "dapo", "akl")
# Generated pools (frontier synthesis): instead of the fixed pool, every round trains on fresh
# problems of the pool's levels (those it weights above 0) and families, uniform over the
# cells or by each cell's p(1-p); scored on the same held-out problems as the pool's arms.
ARMS = {**base.ARMS, "gen_uniform": ("generate.source=synthetic", "paced.weighting=uniform"),
        "gen_paced": ("generate.source=synthetic", "paced.weighting=paced"),
        # AKL's divergence with PACED's sampling: the two that pay at the hopeless end, together.
        "akl_paced": ("paced.weighting=paced", "loss.divergence=akl")}


def _setting(overrides, key):
  return next((o.partition("=")[2] for o in overrides if o.startswith(key + "=")), None)


def off_policy(regime: str) -> bool:
  """Forward KL on references: uniform draws no rollouts, so its runs serve every K."""
  return _setting(REGIMES[regime], "loss.mode") == "distill"


def undefined(regime: str, arm: str) -> str | None:
  """Why an arm is not defined in a regime (None: it is), from the two declarations: an arm
  that sets its own loss.mode runs only in the regime of that mode (a two_stage arm inside the
  fkl regime would train forward KL only: its switch lies past the budget), and a divergence
  the regime's mode does not take (two_stage's stages are fixed) is refused by the config."""
  from paced_jax import divergences

  mode = _setting(REGIMES[regime], "loss.mode")
  own = _setting(ARMS[arm], "loss.mode")
  if own is not None and own != mode:
    return f"arm {arm} trains loss.mode={own}, regime {regime} loss.mode={mode}"
  if _setting(ARMS[arm], "generate.source") and _setting(REGIMES[regime], "data.reference"):
    return (f"arm {arm} trains on generated rounds (the generator's solutions), regime "
            f"{regime} on teacher references sampled once for a fixed pool")
  div = _setting(ARMS[arm], "loss.divergence")
  if div is not None and not divergences.mode(own or mode).takes_divergence:
    return f"loss.mode={own or mode} has fixed divergences; arm {arm} sets {div}"
  return None


def check_arm(cfg, regime: str, arm: str) -> None:
  """Fails the sweep when a run's resolved config differs from what its arm and regime
  declare (two arms once ran the wrong loss silently)."""
  from paced_jax import divergences

  want = dict(o.partition("=")[::2] for o in (*REGIMES[regime], *ARMS[arm]))
  want.setdefault("data.reference", "dataset")
  want.setdefault("data.reference_verify", "true")
  want.setdefault("generate.source", "")
  got = {"loss.mode": cfg.loss.mode, "paced.weighting": cfg.paced.weighting,
         "paced.use": cfg.paced.use, "data.reference": cfg.data.reference,
         "data.reference_verify": str(cfg.data.reference_verify).lower(),
         "generate.source": cfg.generate.source}
  for key, value in want.items():
    if key in got and got[key] != value:
      raise SystemExit(f"arm {arm} in regime {regime}: {key}={got[key]}, declared {value}")
  if cfg.generate.source and set(cfg.generate.tasks or ()) != set(
      cfg.data.synthetic_families or ()):
    raise SystemExit(f"arm {arm}: generates tasks {cfg.generate.tasks}, the pool's families are "
                     f"{cfg.data.synthetic_families}")
  div = want.get("loss.divergence", "auto")
  if div != "auto" and divergences.stage_of(cfg, 0) != div:
    raise SystemExit(f"arm {arm} in regime {regime}: trains {divergences.stage_of(cfg, 0)}, "
                     f"declared loss.divergence={div}")


# ----------------------------------------------------------------------------- levels, pools


def measure_levels(args, log) -> dict:
  """Per level: the starting student's p on --measure-problems train problems (K rollouts)."""
  path = Path(args.out) / "levels.json"
  if path.exists():
    return json.loads(path.read_text())
  import jax
  import numpy as np

  from paced_jax.config import load_config
  from paced_jax.data.synthetic import synthetic_source
  from paced_jax.estimate import estimate_for_config
  from paced_jax.train import setup

  cfg = load_config(args.config, ["eval.max_problems=0", "generate.source=", *args.set])
  run, state = setup(cfg, Path(args.out) / "levels", progress=False)
  data = dataclasses.replace(cfg.data, synthetic_level_weights=())
  src = synthetic_source(data, "train", seed=cfg.seed)
  n_cells = len(src.family_names) * len(src.levels)
  idx = range(min(len(src), args.measure_problems * n_cells))
  problems = [src[i] for i in idx]
  est = estimate_for_config(run.student_engine(state), problems, run.tokenizer,
                            run.verifier, cfg, run.mesh, rollouts=args.measure_k,
                            rng=jax.random.key(7))
  run.pipeline.close()
  run.writer.close()
  p = est.successes / est.trials
  out = {"k": args.measure_k, "levels": {}}
  for level in src.levels:
    ps = p[[j for j, q in enumerate(problems) if q.difficulty == level]]
    hist = np.bincount(np.rint(ps * args.measure_k).astype(int), minlength=args.measure_k + 1)
    out["levels"][str(level)] = {"n": len(ps), "p_mean": float(ps.mean()),
                                 "hist": hist.tolist()}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  return out


def classify(levels: dict, args) -> dict[str, list[int]]:
  means = {int(k): v["p_mean"] for k, v in levels["levels"].items()}
  mastered = args.mastered_levels or [lv for lv, m in means.items() if m >= args.mastered_p]
  hopeless = [lv for lv, m in means.items() if m <= args.hopeless_p and lv not in mastered]
  return {"mastered": sorted(mastered), "hopeless": hopeless,
          "frontier": [lv for lv in means if lv not in mastered and lv not in hopeless]}


def pool_weights(name: str, levels: dict, classes: dict) -> tuple[float, ...]:
  """'today': every level equal. 'mNN': NN% of the pool on the mastered levels, the rest on the
  frontier levels (none on hopeless ones), each class's levels equal. 'hNN': the hopeless axis,
  a pool whose p = 0 share is NN% (hopeless levels mixed in) while its p = 1 share stays m0's
  (mastered levels mixed in to hold it; where that would take more than the whole pool, none
  are, and the p = 1 share falls); where NN% lies below what m0 already has at p = 0, no
  hopeless level is added (h0 is m0)."""
  all_levels = sorted(int(k) for k in levels["levels"])
  if name == "today":
    return tuple(1.0 / len(all_levels) for _ in all_levels)
  if not (name[:1] in ("m", "h") and name[1:].isdigit() and int(name[1:]) <= 100):
    raise SystemExit(f"pool {name!r}: use 'today', mNN (NN% of the pool on mastered levels) or "
                     "hNN (NN% of the pool at p = 0, the hopeless axis)")
  frac, mastered, hopeless = int(name[1:]) / 100, classes["mastered"], classes.get("hopeless", [])
  means = ", ".join(f"{k}: {v['p_mean']:.2f}" for k, v in levels["levels"].items())
  frontier = classes.get("frontier") or [lv for lv in all_levels
                                         if lv not in mastered and lv not in hopeless]
  if not frontier:
    raise SystemExit(f"pool {name}: the starting student has no frontier level (mean p per "
                     f"level {means}); set --mastered-p / --hopeless-p or the levels")
  if name[0] == "m":
    if frac and not mastered:
      raise SystemExit(
          f"pool {name}: the starting student masters no level (mean p per level {means}); "
          "start from a stronger student (--set train.init_student=DIR) or name the levels "
          "(--mastered-levels)")
    return mix(all_levels, {"mastered": (mastered, frac), "frontier": (frontier, 1 - frac)})
  if frac and not hopeless:
    raise SystemExit(f"pool {name}: no level is hopeless for the starting student (mean p per "
                     f"level {means}; hopeless: mean p <= --hopeless-p); add harder levels "
                     "(--set data.synthetic_levels=8)")
  share = lambda lvs: pool_histogram(levels, mix(all_levels, {"c": (lvs, 1.0)}))
  F, H = share(frontier), share(hopeless) if hopeless else None
  m = h = 0.0
  if frac > F[0] and H[0] > F[0]:
    # Solve p0(m, h) = frac and p1(m, h) = F1 (m0's p = 1 share held), both linear in (m, h):
    # m (M0 - F0) + h (H0 - F0) = frac - F0 and m (M1 - F1) + h (H1 - F1) = 0.
    M = share(mastered) if mastered else None
    if M is None or M[-1] <= F[-1]:  # nothing raises the p = 1 share: hold none of it
      h = (frac - F[0]) / (H[0] - F[0])
    else:
      a, b, c, d = M[0] - F[0], H[0] - F[0], M[-1] - F[-1], H[-1] - F[-1]
      det = a * d - b * c
      m, h = max((frac - F[0]) * d / det, 0.0), max(-(frac - F[0]) * c / det, 0.0)
    if m + h > 1:  # the p = 1 share cannot be held: hold none of it (it falls)
      m, h = 0.0, (frac - F[0]) / (H[0] - F[0])
    if h > 1:
      raise SystemExit(f"pool {name}: a p = 0 share of {frac:.0%} is more than the hopeless "
                       f"levels have ({H[0]:.2f}); choose a smaller NN")
  return mix(all_levels, {"mastered": (mastered, m), "hopeless": (hopeless, h),
                          "frontier": (frontier, 1 - m - h)})


def mix(all_levels, parts: dict) -> tuple[float, ...]:
  """Level weights: each part (levels, share) spreads its share equally over its levels."""
  w = {lv: 0.0 for lv in all_levels}
  for lvs, share in parts.values():
    for lv in lvs:
      w[lv] += share / len(lvs)
  return tuple(w[lv] for lv in all_levels)


def pool_histogram(levels: dict, weights) -> list[float]:
  """Share of the pool at p = j/K, j = 0..K: the per-level histograms mixed by the weights."""
  k = levels["k"]
  out = [0.0] * (k + 1)
  for w, (_, v) in zip(weights, sorted(levels["levels"].items(), key=lambda kv: int(kv[0]))):
    for j, c in enumerate(v["hist"]):
      out[j] += w * c / max(v["n"], 1)
  return out


# ----------------------------------------------------------------------------- runs


def cell_dir(args, pool: str, regime: str, k: int, arm: str) -> Path:
  # Uniform forward KL draws no rollouts: its runs are shared by every K of a pool.
  kk = args.k[0] if (off_policy(regime) and arm == "uniform") else k
  return Path(args.out) / pool / (regime if kk == args.k[0] else f"{regime}_k{kk}")


def run_overrides(args, pool, regime, k, arm, weights) -> list[str]:
  """What every run of (pool, regime, K, arm) sets besides its budget and seed."""
  out = [f"data.synthetic_level_weights={','.join(f'{w:.6g}' for w in weights)}",
         f"data.synthetic_heldout_per_cell={args.heldout_per_cell}",
         f"eval.samples={args.eval_samples}", f"paced.rollouts={k}", *REGIMES[regime]]
  if _setting(REGIMES[regime], "data.reference") == "teacher":
    # One cache per pool: every arm of a seed trains on the same teacher responses.
    out.append(f"data.reference_cache={Path(args.out) / pool / 'references'}")
  if _setting(ARMS[arm], "generate.source"):
    from paced_jax.config import load_config

    families = ",".join(load_config(args.config, ["generate.source=", *args.set])
                        .data.synthetic_families)
    out += [f"generate.levels={','.join(str(i) for i, w in enumerate(weights, 1) if w > 0)}",
            f"generate.tasks={families}",
            f"generate.heldout_per_cell={args.heldout_per_cell}"]  # the suite's own test split
  # The arm's own loss settings (akl's divergence) win over the regime's loss.divergence=auto.
  return out + [*args.set, *(o for o in ARMS[arm] if o.startswith("loss."))]


def run_one(args, pool, regime, k, arm, seed, weights, budget, log) -> dict:
  ns = copy.copy(args)
  ns.out = str(cell_dir(args, pool, regime, k, arm))
  extra = run_overrides(args, pool, regime, k, arm, weights)
  if budget is None:  # the budget run: a fixed step count
    extra.append(f"train.steps={args.budget_steps}")
    total = args.budget_steps
  else:
    extra.append(f"train.max_flops={budget!r}")
    total = args.budget_steps * 3
  if regime == "two_stage":
    fkl = run_one(args, pool, "fkl", k, arm, args.budget_seed, weights,
                  None if arm == "uniform" else fkl_budget(args, pool, k, weights, log), log)
    extra.append(f"loss.two_stage_switch={min(0.99, fkl['steps'] / 2 / total)!r}")
  return _run_checked(ns, pool, regime, k, arm, seed, weights, extra, log)


def _run_checked(ns, pool, regime, k, arm, seed, weights, extra, log) -> dict:
  """One run under `ns.out`, failing when its resolved config is not what the arm and regime
  declare (check_arm); its result tagged with the cell."""
  r = base.run_arm(ns, arm, seed, extra, log, check=lambda cfg: check_arm(cfg, regime, arm),
                   arms=ARMS)
  r.update(pool=pool, regime=regime, k=k, weights=list(weights))
  return r


def steps_dir(args, pool, regime, k, arm, seed) -> Path:
  cell = cell_dir(args, pool, regime, k, arm)
  return cell.parent / "steps" / cell.name / arm / f"seed_{seed}"


# A run within this much of --budget-steps is its own equal-steps run (uniform's other seeds
# end a step or three past the budget seed's).
OWN_STEPS = 1.05


def own_steps(args, steps: int) -> bool:
  return args.budget_steps <= steps <= args.budget_steps * OWN_STEPS


def run_steps(args, pool, regime, k, arm, seed, weights, flop_run: dict, log) -> dict:
  """The equal-steps view of a run (the paper's): a run the budget stopped before uniform's
  --budget-steps is copied (its workdir, less the lock and the final evaluation) and resumed
  without the budget up to --budget-steps, then evaluated; a run that got there within the
  budget (up to OWN_STEPS past it) is its own equal-steps run; one that went further (a
  generated run whose problems are shorter trains more steps for the FLOPs) is run again, the
  same seed, to --budget-steps. The copy is made under a temporary name and renamed, so an
  interrupted copy is redone, and an interrupted run resumes."""
  if own_steps(args, flop_run["steps"]):
    return flop_run
  dst = steps_dir(args, pool, regime, k, arm, seed)
  if flop_run["steps"] < args.budget_steps and not dst.exists():
    src = cell_dir(args, pool, regime, k, arm) / arm / f"seed_{seed}"
    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".lock", "eval_after.json",
                                                            "finished.json"))
    tmp.rename(dst)
  ns = copy.copy(args)
  ns.out = str(dst.parents[1])
  extra = run_overrides(args, pool, regime, k, arm, weights) + [
      "train.max_flops=0", f"train.steps={args.budget_steps}"]
  return _run_checked(ns, pool, regime, k, arm, seed, weights, extra, log)


def budget_for(args, pool, regime, k, weights, log) -> float:
  """FLOPs of the cell's budget run (uniform, --budget-seed, --budget-steps): run or read."""
  if off_policy(regime):
    k = args.k[0]  # uniform forward KL draws no rollouts: one budget for every K
  return run_one(args, pool, regime, k, "uniform", args.budget_seed, weights, None, log)["flops"]


def fkl_budget(args, pool, k, weights, log) -> float:
  return budget_for(args, pool, "fkl", k, weights, log)


# ----------------------------------------------------------------------------- summary


def pool_score(after: dict, weights) -> float:
  """Test accuracy per level weighted by the pool's composition (over the levels evaluated)."""
  got = [(w, after[f"eval/test/level_{lv}"]) for lv, w in enumerate(weights, 1)
         if w and f"eval/test/level_{lv}" in after]
  return sum(w * a for w, a in got) / sum(w for w, _ in got)


def eval_se(after: dict, weights, n_per_level: int, samples: int) -> float:
  var = sum(w * w * a * (1 - a) / (n_per_level * samples)
            for w, a in ((w, after.get(f"eval/test/level_{lv}", 0.0))
                         for lv, w in enumerate(weights, 1)))
  return (2 * var) ** 0.5


def summarise(results: list[dict], args, pools_info: dict) -> dict:
  import numpy as np

  def stat(vals):
    vals = [float(v) for v in vals]
    n = len(vals)
    return {"mean": float(np.mean(vals)) if n else float("nan"), "n": n, "values": vals,
            "se": float(np.std(vals, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")}

  n_level = args.heldout_per_cell * pools_info["families"]
  cells = {}
  for r in results:
    cells.setdefault((r["pool"], r["regime"], r["k"]), []).append(r)
  out = []
  for (pool, regime, k), rs in sorted(cells.items()):
    w = pools_info["pools"][pool]["weights"]
    uni = {r["seed"]: r for r in rs if r["arm"] == "uniform"}
    for arm in sorted({r["arm"] for r in rs}, key=list(ARMS).index):
      mine = [r for r in rs if r["arm"] == arm]
      paired = [r for r in mine if r["seed"] in uni]
      entry = {"pool": pool, "regime": regime, "k": k, "arm": arm,
               "mastered_share": pools_info["pools"][pool]["p1_share"],
               "hopeless_share": pools_info["pools"][pool]["hist"][0],
               "score": stat([pool_score(r["after"], w) for r in mine]),
               "balanced": stat([r["after"]["eval/test/overall"] for r in mine]),
               "delta": stat([pool_score(r["after"], w) - pool_score(uni[r["seed"]]["after"], w)
                              for r in paired]),
               "delta_balanced": stat([r["after"]["eval/test/overall"]
                                       - uni[r["seed"]]["after"]["eval/test/overall"]
                                       for r in paired]),
               "forgetting": stat([r["before"]["eval/probe/overall"] - r["after"]
                                   ["eval/probe/overall"] for r in mine
                                   if "eval/probe/overall" in r["before"]]),
               "eval_se": float(np.mean([eval_se(r["after"], w, n_level, args.eval_samples)
                                         for r in mine])),
               "steps": float(np.mean([r["steps"] for r in mine])),
               "rollout_share": float(np.mean([r["rollout_flops"] / r["flops"] for r in mine]))}
      out.append(entry)
  return {"cells": out}


def attach_steps(summary: dict, steps: dict) -> None:
  """Each cell of the equal-FLOPs summary gets its equal-steps twin's score, Δ and steps."""
  twin = {(c["pool"], c["regime"], c["k"], c["arm"]): c for c in steps["cells"]}
  for c in summary["cells"]:
    t = twin.get((c["pool"], c["regime"], c["k"], c["arm"]))
    if t is not None:
      c["steps_view"] = {"score": t["score"], "delta": t["delta"], "steps": t["steps"],
                         "forgetting": t["forgetting"]}


def write_markdown(path: Path, summary: dict, pools_info: dict, args, env: str,
                   snr: dict | None = None) -> None:
  pm = lambda s: f"{s['mean']:+.3f} ± {s['se']:.3f}" if s["n"] > 1 else (
      f"{s['mean']:+.3f}" if s["n"] else "-")
  lv = pools_info["levels"]
  lines = [f"# Where frontier weighting pays: PACED vs uniform by pool composition ({env})", "",
           f"Config {args.config} {' '.join('--set ' + s for s in args.set)}; budget per "
           f"(pool, regime, K) = uniform seed {args.budget_seed} at {args.budget_steps} steps; "
           f"held-out test {args.heldout_per_cell} per (family, level) x {args.eval_samples} "
           f"samples; probe {args.heldout_per_cell} per (family, level 1-2).", "",
           f"Starting student, mean p per level (K = {lv['k']}, {args.measure_problems} "
           "problems per (family, level)): " + ", ".join(
               f"level {k} {v['p_mean']:.2f}" for k, v in sorted(lv["levels"].items()))
           + f"; mastered {pools_info['classes']['mastered']}, hopeless "
             f"{pools_info['classes']['hopeless']}.", "",
           "| pool | level weights | p = 0 | 0 < p < 1 | p = 1 | p histogram (j/K, j = 0..K) |",
           "|---|---|---|---|---|---|"]
  for name, info in pools_info["pools"].items():
    h = info["hist"]
    lines.append(f"| {name} | {', '.join(f'{w:.2f}' for w in info['weights'])} | {h[0]:.2f} | "
                 f"{sum(h[1:-1]):.2f} | {h[-1]:.2f} | {' '.join(f'{x:.2f}' for x in h)} |")
  lines += ["", "Score = held-out accuracy weighted by the pool's level composition; Δ = arm - "
            "uniform, paired by seed, mean ± SE over seeds (per-seed values in brackets); eval "
            "SE = binomial bound on one paired difference's evaluation noise; forgetting = "
            "probe before - after. Equal steps: the same runs continued to uniform's step count "
            "(the paper's view; '-' where not run: two_stage, or the continuation not yet run)."]
  for regime in dict.fromkeys(c["regime"] for c in summary["cells"]):
    lines += ["", f"## {regime}", "",
              "| pool | p = 0 share | p = 1 share | K | arm | score | Δ uniform (pool) | Δ "
              "uniform (balanced) | eval SE | forgetting | steps | rollout share | equal steps: "
              "score | Δ uniform (pool) | forgetting |", "|---" * 15 + "|"]
    for c in summary["cells"]:
      if c["regime"] != regime:
        continue
      d = c["delta"]
      vals = " (" + ", ".join(f"{v:+.3f}" for v in d["values"]) + ")" if d["n"] else ""
      sv = c.get("steps_view")
      steps_cols = (f"{sv['score']['mean']:.3f} ({sv['steps']:.0f} steps) | {pm(sv['delta'])} | "
                    f"{pm(sv['forgetting'])}" if sv else "- | - | -")
      lines.append(f"| {c['pool']} | {c['hopeless_share']:.2f} | {c['mastered_share']:.2f} | "
                   f"{c['k']} | {c['arm']} | "
                   f"{c['score']['mean']:.3f} | {pm(d)}{vals} | {pm(c['delta_balanced'])} | "
                   f"{c['eval_se']:.3f} | {pm(c['forgetting'])} | {c['steps']:.0f} | "
                   f"{c['rollout_share']:.0%} | {steps_cols} |")
  if snr:
    lines += snr_lines(snr)
  lines += ["", "To reproduce (each command <= 2 h on a 2-core CPU; finished runs are read, "
            "not rerun; the report command writes these files):", "", "```",
            *SWEEPS[args.results_name.removesuffix("_sd")], "```", "",
            f"This file was written by: `{args.command}`"]
  path.write_text("\n".join(lines) + "\n")


def plot(path: Path, summary: dict, arms=("paced", "posterior", "dapo")) -> None:
  """Each frontier arm - uniform by pool: the mastered axis (today, mNN pools; x = p = 1
  share) and the hopeless axis (hNN pools; x = p = 0 share), one line per (regime, arm)
  measured at two pools or more, equal FLOPs solid and equal steps dashed (mean ± SE over seeds;
  dots: seeds). Beside them, every arm of every (regime, pool) measured at one pool only (the
  teacher-reference regimes, generated pools, AKL arms at h50), equal FLOPs (circle) and equal
  steps (square)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  axes_def = (("mastered", lambda c: not c["pool"].startswith("h"), "mastered_share",
               "mastered fraction of the pool (starting student's p = 1 share)"),
              ("hopeless", lambda c: c["pool"].startswith("h"), "hopeless_share",
               "hopeless fraction of the pool (starting student's p = 0 share)"))
  cells = [c for c in summary["cells"] if c["delta"]["n"] and c["k"] == summary["k0"]]
  pools_of = {}
  for c in cells:
    pools_of.setdefault(c["regime"], set()).add(c["pool"])
  lines = [c for c in cells if len(pools_of[c["regime"]]) > 1 and c["arm"] in arms]
  single = [c for c in cells if c["arm"] != "uniform" and (
      len(pools_of[c["regime"]]) == 1 or (c["arm"] not in arms and c["pool"].startswith("h")))]
  shown = [a for a in axes_def if any(a[1](c) for c in lines)] or (
      [] if single else axes_def[:1])  # nothing measured yet: one empty axis
  n = len(shown) + bool(single)
  fig, axes = plt.subplots(1, n, figsize=(7 * n, 4.5 + 0.12 * len(single)),
                           squeeze=False, gridspec_kw={"wspace": 0.55})
  colors = plt.get_cmap("tab10").colors
  for ax, (name, keep, xkey, xlabel) in zip(axes[0], shown):
    series = list(dict.fromkeys((c["regime"], c["arm"]) for c in lines if keep(c)))
    for j, (regime, arm) in enumerate(series):
      dx = 0.006 * (arms.index(arm) - (len(arms) - 1) / 2)  # arms side by side at one pool
      cs = sorted((c for c in lines if (c["regime"], c["arm"]) == (regime, arm) and keep(c)),
                  key=lambda c: c[xkey])
      color = colors[j % len(colors)]
      x = [c[xkey] + dx for c in cs]
      se = [c["delta"]["se"] if c["delta"]["n"] > 1 else 0.0 for c in cs]
      ax.errorbar(x, [c["delta"]["mean"] for c in cs], yerr=se, marker="o", capsize=3,
                  color=color, label=f"{regime}, {arm}, equal FLOPs (mean ± SE)")
      for c in cs:
        ax.scatter([c[xkey] + dx] * c["delta"]["n"], c["delta"]["values"], s=12, color=color,
                   alpha=0.5)
      sv = [c for c in cs if c.get("steps_view") and c["steps_view"]["delta"]["n"]]
      if sv:
        ax.errorbar([c[xkey] + dx + 0.002 for c in sv],
                    [c["steps_view"]["delta"]["mean"] for c in sv],
                    yerr=[c["steps_view"]["delta"]["se"] if c["steps_view"]["delta"]["n"] > 1
                          else 0.0 for c in sv], marker="s", ls="--", capsize=3,
                    color=color, alpha=0.7, label=f"{regime}, {arm}, equal steps")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="arm - uniform, held-out pool score",
           title=f"Frontier weighting's gain over uniform, {name} axis")
    if series:  # below, not on, the data (beside it would cover the next panel's labels)
      ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
  if single:
    ax = axes[0][-1]
    ys = range(len(single))
    for y, c in zip(ys, single):
      d = c["delta"]
      ax.errorbar([d["mean"]], [y], xerr=[d["se"] if d["n"] > 1 else 0.0], marker="o",
                  capsize=3, color="C0")
      ax.scatter(d["values"], [y] * d["n"], s=10, color="C0", alpha=0.4)
      sv = c.get("steps_view")
      if sv and sv["delta"]["n"]:
        ax.errorbar([sv["delta"]["mean"]], [y + 0.25],
                    xerr=[sv["delta"]["se"] if sv["delta"]["n"] > 1 else 0.0], marker="s",
                    capsize=3, color="C1", alpha=0.8)
    ax.set_yticks(list(ys), [f"{c['pool']} {c['regime']}: {c['arm']} ({c['delta']['n']} seeds)"
                             for c in single], fontsize=7)
    ax.axvline(0, color="gray", lw=0.8)
    ax.invert_yaxis()
    ax.set(xlabel="arm - uniform, held-out pool score (circle: equal FLOPs, square: equal "
           "steps; mean ± SE, dots: seeds)", title="Cells measured at one pool")
    ax.xaxis.label.set_size(8)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def measure_snr(args, pools: dict, log) -> dict | None:
  """Gradient SNR per p bucket on --snr-pool for each of --snr-losses
  (benchmarks/pace_vs_baselines.py's gradient_snr), measured once per loss and read back from
  <out>/snr_POOL.json (a later command adds the losses it lacks)."""
  pool = args.snr_pool or args.pools[0]
  path = Path(args.out) / f"snr_{pool}.json"
  out = json.loads(path.read_text()) if path.exists() else None
  todo = [loss for loss in args.snr_losses if out is None or loss not in out]
  if args.snr_problems <= 0 or args.report_only or not todo:
    return out
  if pool not in pools:
    raise SystemExit(f"--snr-pool {pool} is not one of --pools {args.pools}")
  w = pools[pool]["weights"]
  extra = [f"data.synthetic_level_weights={','.join(f'{x:.6g}' for x in w)}"]
  out = out or {"pool": pool, "p1_share": pools[pool]["p1_share"]}
  for loss in todo:
    log(f"gradient SNR on pool {pool}, {loss}: {args.snr_problems} problems x "
        f"{args.snr_rollouts} rollouts")
    out[loss] = base.gradient_snr(args, log, loss=loss, extra=extra,
                                  wd=Path(args.out) / f"snr_{pool}_{loss}")
    path.write_text(json.dumps(out, indent=1))
  return out


SNR_LABELS = {"references": ("fkl", "forward KL on references"),
              "on_policy": ("rkl", "reverse KL on the student's rollouts"),
              "self_distill": ("self-distill", "self-distillation: reverse KL on the student's "
                               "rollouts against itself shown the solution")}


def snr_lines(snr: dict) -> list[str]:
  losses = [k for k in base.SNR_LOSSES if k in snr]
  first = snr[losses[0]]
  lines = ["", f"## Gradient SNR by pass rate (starting student, pool {snr['pool']})", "",
           f"{first['problems']} pool problems, p from {first['rollouts']} rollouts each. g_i = "
           "the gradient of problem i's loss: forward KL on its teacher reference (what fkl "
           "trains on), reverse KL on one fresh rollout of the student (what on_policy trains "
           "on), or self-distillation's reverse KL on one fresh rollout against the starting "
           "student shown the solution (what self_distill trains on). SNR = ||mean g||^2 / mean "
           "||g - mean g||^2 over a bucket's problems (bias-corrected: the 1/n bias of the "
           "squared mean removed; ± a bootstrap standard error over the bucket's problems).", "",
           "| p bucket | problems | mean p | " + " | ".join(
               f"{SNR_LABELS[k][0]} SNR | {SNR_LABELS[k][0]} SNR, bias removed | "
               f"{SNR_LABELS[k][0]} mean ||g||" for k in losses) + " |",
           "|---" * (3 + 3 * len(losses)) + "|"]
  se = lambda e: f" ± {e['snr_unbiased_se']:.4f}" if "snr_unbiased_se" in e else ""
  cell = lambda e: (f"{e['snr']:.4f} | {e['snr_unbiased']:.4f}{se(e)} | {e['grad_norm']:.3f}"
                    if "snr" in e else "- | - | -")
  for j, a in enumerate(first["buckets"]):
    name = (f"p = {a['lo']:g}" if a["lo"] == a["hi"] else f"{a['lo']:g} <= p <= {a['hi']:g}")
    mean_p = f"{a['p_mean']:.2f}" if a["p_mean"] is not None else "-"
    lines.append(f"| {name} | {a['n']} | {mean_p} | "
                 + " | ".join(cell(snr[k]["buckets"][j]) for k in losses) + " |")
  return lines


def plot_snr(path: Path, snr: dict) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for loss in (k for k in base.SNR_LOSSES if k in snr):
    bs = [b for b in snr[loss]["buckets"] if "snr" in b]
    ax.errorbar([b["p_mean"] for b in bs], [b["snr_unbiased"] for b in bs],
                yerr=[b.get("snr_unbiased_se", 0.0) for b in bs], marker="o", capsize=3,
                label=f"{SNR_LABELS[loss][1]} (± bootstrap SE)")
  ax.axhline(0, color="gray", lw=0.8)
  ax.set(xlabel="pass rate p (bucket mean)", ylabel="cross-problem gradient SNR (bias removed)",
         title=f"Gradient SNR by pass rate, pool {snr['pool']}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _commands(heading: str) -> list[str]:
  text = __doc__.split(heading, 1)[1].split("\n\n", 2)[1]
  return [line.strip() for line in text.splitlines()]


# The reproduce commands of each sweep, from this docstring (results name -> commands).
SWEEPS = {"phase_diagram": _commands("To reproduce the sweep"),
          "hopeless": _commands("To reproduce the hopeless axis")}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--set", nargs="*", action="extend", default=[],
                  help="config overrides for every run (may be given more than once; the later "
                  "setting of a field wins)")
  ap.add_argument("--out", default="runs/phase_diagram")
  ap.add_argument("--pools", nargs="+", default=["m0", "m25", "m50"])
  ap.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
  ap.add_argument("--regimes", nargs="+", default=["fkl"], choices=list(REGIMES))
  ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  ap.add_argument("--k", nargs="+", type=int, default=[4], help="rollouts per estimate; the "
                  "first is the default K, others get their own cells")
  ap.add_argument("--budget-seed", type=int, default=0)
  ap.add_argument("--budget-steps", type=int, default=150)
  ap.add_argument("--eval-every", type=int, default=100_000, help="intermediate evals (full "
                  "size; default none)")
  ap.add_argument("--eval-problems", type=int, default=750, help="cap per held-out split")
  ap.add_argument("--eval-samples", type=int, default=8)
  ap.add_argument("--heldout-per-cell", type=int, default=75)
  ap.add_argument("--refresh-subset", type=int, default=256)
  ap.add_argument("--measure-problems", type=int, default=40, help="per (family, level)")
  ap.add_argument("--measure-k", type=int, default=8)
  ap.add_argument("--mastered-p", type=float, default=0.85)
  ap.add_argument("--hopeless-p", type=float, default=0.05)
  ap.add_argument("--mastered-levels", nargs="*", type=int, default=[])
  ap.add_argument("--snr-problems", type=int, default=0, help="gradient SNR per p bucket on "
                  "this many problems of --snr-pool for each of --snr-losses (0: not measured; "
                  "read back from <out>/snr_POOL.json)")
  ap.add_argument("--snr-losses", nargs="+", default=["references", "on_policy"],
                  choices=list(base.SNR_LOSSES))
  ap.add_argument("--views", nargs="+", default=["flops", "steps"], choices=["flops", "steps"],
                  help="flops: equal FLOPs (always run); steps: also continue each run the "
                  "budget stopped early to uniform's step count (not two_stage)")
  ap.add_argument("--snr-rollouts", type=int, default=8)
  ap.add_argument("--snr-pool", default=None, help="default: the first of --pools")
  ap.add_argument("--report-only", action="store_true",
                  help="run nothing: summarise the finished runs of --pools")
  ap.add_argument("--write-results", action="store_true",
                  help="also write benchmarks/results/NAME.{md,json,png}")
  ap.add_argument("--results-name", default="phase_diagram",
                  choices=[*SWEEPS, "hopeless_sd"],
                  help="NAME of the files written (phase_diagram: the mastered axis; hopeless: "
                  "the hopeless axis; hopeless_sd: its self-distillation part, from the "
                  "privileged student), and whose reproduce commands they list")
  args = ap.parse_args(argv)
  log = base.study_start(args, argv, "benchmarks/phase_diagram.py")
  t_start = time.perf_counter()
  levels = measure_levels(args, log)
  classes = classify(levels, args)
  log("starting student, mean p per level: " + ", ".join(
      f"{k}: {v['p_mean']:.2f}" for k, v in sorted(levels["levels"].items()))
      + f"; mastered {classes['mastered']}, hopeless {classes['hopeless']}")
  from paced_jax.config import load_config

  cfg = load_config(args.config, ["generate.source=", *args.set])
  pools = {}
  for name in args.pools:
    w = pool_weights(name, levels, classes)
    h = pool_histogram(levels, w)
    pools[name] = {"weights": list(w), "hist": h, "p1_share": h[-1], "p0_share": h[0]}
    log(f"pool {name}: level weights {', '.join(f'{x:.2f}' for x in w)}; p histogram (j/"
        f"{levels['k']}) {' '.join(f'{x:.2f}' for x in h)}; p=0 {h[0]:.2f}, p=1 {h[-1]:.2f}")
  snr = measure_snr(args, pools, log)
  todo = [(pool, regime, k, arm, seed) for pool in args.pools for regime in args.regimes
          for k in args.k for arm in args.arms for seed in args.seeds
          if not (k != args.k[0] and off_policy(regime) and arm == "uniform")
          and not undefined(regime, arm)
          and not args.report_only]
  for j, (pool, regime, k, arm, seed) in enumerate(todo, 1):
    t0 = time.perf_counter()
    w = pools[pool]["weights"]
    budget = budget_for(args, pool, regime, k, w, log)
    is_budget_run = arm == "uniform" and seed == args.budget_seed
    r = run_one(args, pool, regime, k, arm, seed, w, None if is_budget_run else budget, log)
    if "steps" in args.views and regime in STEPS_REGIMES:
      s = run_steps(args, pool, regime, k, arm, seed, w, r, log)
      if s is not r:
        how = "continued" if s["steps"] > r["steps"] else "run again to the step count:"
        log(f"  equal steps: {arm} seed {seed} {how} {r['steps']} -> {s['steps']} steps, "
            f"score {pool_score(s['after'], w):.3f}")
    el = time.perf_counter() - t_start
    log(f"[{j}/{len(todo)}] {pool} {regime} K={k} {arm} seed {seed}: score "
        f"{pool_score(r['after'], w):.3f} (before {pool_score(r['before'], w):.3f}), "
        f"{r['steps']} steps, {time.perf_counter() - t0:.0f} s; elapsed {el / 60:.1f} min, "
        f"eta {el / j * (len(todo) - j) / 60:.0f} min")
  # Every finished run under --out, not only this command's: the parts add up.
  results = []
  pools_info = {"levels": levels, "classes": classes, "pools": pools,
                "families": len(cfg.data.synthetic_families) or 6}
  for name in pools:
    for d in sorted((Path(args.out) / name).glob("*/*/seed_*/eval_after.json")):
      regime_dir, arm, seed = d.parts[-4], d.parts[-3], int(d.parts[-2][5:])
      regime, _, kk = regime_dir.partition("_k")
      if regime_dir in REGIMES:
        regime, kk = regime_dir, ""
      k = int(kk) if kk else args.k[0]
      if undefined(regime, arm):
        continue
      r = base.run_arm(argparse.Namespace(out=str(d.parents[2])), arm, seed, [], log)
      r.update(pool=name, regime=regime, k=k)
      results.append(r)
      if off_policy(regime) and arm == "uniform":  # shared by every K the pool was run at
        results += [dict(r, k=k2) for k2 in args.k[1:]
                    if (Path(args.out) / name / f"{regime}_k{k2}").is_dir()]
  summary = summarise(results, args, pools_info)
  summary["k0"] = args.k[0]
  steps_results = []
  for r in results:  # the equal-steps view of the same runs
    if r["regime"] not in STEPS_REGIMES:
      continue
    d = steps_dir(args, r["pool"], r["regime"], r["k"], r["arm"], r["seed"])
    if (d / "eval_after.json").exists():
      s = base.run_arm(argparse.Namespace(out=str(d.parents[1])), r["arm"], r["seed"], [], log)
      steps_results.append(dict(s, pool=r["pool"], regime=r["regime"], k=r["k"]))
    elif own_steps(args, r["steps"]):
      steps_results.append(r)
  if steps_results:
    summary["steps_view"] = summarise(steps_results, args, pools_info)
    attach_steps(summary, summary["steps_view"])
  env = base.environment()
  payload = {"env": env, "args": vars(args), "pools": pools_info, "summary": summary,
             "snr": snr, "runs": results, "steps_runs": steps_results}
  dests = [Path(args.out)] + ([ROOT / "benchmarks" / "results"] if args.write_results else [])
  name = args.results_name
  for dest in dests:
    (dest / f"{name}.json").write_text(json.dumps(payload, indent=1))
    write_markdown(dest / f"{name}.md", summary, pools_info, args, env, snr)
    plot(dest / f"{name}.png", summary)
    if snr:
      plot_snr(dest / f"{name}_snr.png", snr)
  print((Path(args.out) / f"{name}.md").read_text())
  log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; wrote "
      + ", ".join(str(d / f"{name}.md") for d in dests))
  return 0


if __name__ == "__main__":
  sys.exit(main())
