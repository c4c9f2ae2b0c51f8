"""The frontier rounds: estimate pass rates (K rollouts, verified) -> PassRateTable -> frontier
weights -> sampling probabilities -> the pipeline's round, and each round's metrics line."""

from __future__ import annotations

import json
import logging
import time

import jax
import numpy as np

from paced_jax import divergences
from paced_jax.build import Run, set_pool
from paced_jax.distributed import is_main
from paced_jax.estimate import estimate_for_config
from paced_jax.frontier import (frontier_round, frontier_stats, frontier_weights,
                                posterior_weight_sd, skip_settled)
from paced_jax.rollout_data import split_for_reuse
from paced_jax.synthesis import cell_round, diversity

log = logging.getLogger("paced_jax.train")  # the loop's logger: one name in every log line


def samplable(run: Run, need_reference: bool) -> np.ndarray:
  """[N] problems the pipeline can draw (a prompt that fits; a reference when rows need one)."""
  return run.pipeline.pool.usable_for(need_reference)


def refresh(run: Run, state, round_: int, step: int, *, progress: bool = True) -> dict:
  """Re-estimates pass rates (all problems or a subset), rebuilds weights and starts the data
  round `round_`. Deterministic in (seed, round). Only problems that can be drawn and sampled
  are estimated; nothing is estimated when the weights cannot depend on it (uniform).

  paced.train_outcomes: the verified outcomes of the rollouts trained on since the last refresh
  are merged into the table first (each at its own step, `PassRateTable.merge_pending`), and
  with paced.fresh_trials = m > 0 a problem with at least m of them sampled less than
  paced.fresh_steps steps ago is not estimated (it keeps the counts they gave it).
  paced.reuse_rollouts with paced.reuse_split: the even-numbered rollouts give the pass rate,
  the odd ones are the rows reused (`split_for_reuse`). paced.adaptive_rollouts with
  paced.merge=accumulate or decay: the stopping rule counts the evidence the table already holds
  (`PassRateTable.merged_prior`), so a problem its old counts pin stops after one stage; under
  decay with paced.adaptive_settled, one they pin already (and recently) is not estimated."""
  cfg = run.cfg
  metrics: dict[str, float] = {}
  idx = np.zeros(0, np.int64)
  rollout_flops = run.compute["rollout_flops"]
  if run.synthesis is not None:  # a generated run: this round's problems, made in the band
    metrics.update(_generated_round(run, state, round_, step, progress))
  recent = None
  if cfg.paced.train_outcomes:
    recent = run.table.pending_trials(step, cfg.paced.fresh_steps or cfg.paced.refresh_every)
    merged, right = run.table.merge_pending(step, cfg.paced.merge, cfg.paced.decay_per_step)
    metrics["frontier/train_outcomes"] = float(merged)
    if merged:
      metrics["frontier/train_outcomes_correct"] = right / merged
  if _estimates_pool(cfg):
    idx, skipped = _to_estimate(run, round_, step)
    if recent is not None and cfg.paced.fresh_trials > 0:  # evidence enough: no estimate
      fresh = recent[run.table.rows([run.problems[i].id for i in idx])] >= cfg.paced.fresh_trials
      idx = idx[~fresh]
      metrics["frontier/fresh_kept"] = float(fresh.sum())
    if (cfg.paced.adaptive_rollouts and cfg.paced.adaptive_settled
        and cfg.paced.merge == "decay" and len(idx)):  # the stopping rule, before stage 1
      ids = [run.problems[i].id for i in idx]
      s0, n0 = run.table.merged_prior(ids, step, "decay", cfg.paced.decay_per_step)
      settled = posterior_weight_sd(s0, n0, cfg.paced.alpha, cfg.paced.beta, cfg.paced.prior_a0,
                                    cfg.paced.prior_b0) < cfg.paced.adaptive_sd
      settled &= n0 >= cfg.paced.adaptive_rollouts  # a stage's worth of evidence, not the prior's
      age = step - run.table.step[run.table.rows(ids)]
      settled &= age <= cfg.paced.adaptive_settled * cfg.paced.refresh_every
      idx = idx[~settled]
      metrics["frontier/settled_kept"] = float(settled.sum())
    metrics["frontier/estimated"] = len(idx)
    if cfg.paced.skip_base < 1:
      metrics["frontier/skipped"] = float(len(skipped))
    if is_main() and len(skipped):  # which estimates are stale this round, for audits
      (run.workdir / "passrates").mkdir(exist_ok=True)
      (run.workdir / "passrates" / f"round_{round_:05d}.skipped.json").write_text(
          json.dumps([run.problems[i].id for i in skipped]))
  chosen, kept = [run.problems[i] for i in idx], []
  split = run.fresh is not None and cfg.paced.reuse_split
  if chosen:
    t0 = time.perf_counter()
    prior = None  # adaptive K stops on the posterior the merged counts will have
    if cfg.paced.adaptive_rollouts:
      prior = run.table.merged_prior([p.id for p in chosen], step, cfg.paced.merge,
                                     cfg.paced.decay_per_step)
    est = estimate_for_config(
        run.student_engine(state), chosen, run.tokenizer, run.verifier, cfg, run.mesh,
        rollouts=cfg.paced.rollouts, rng=jax.random.fold_in(jax.random.key(cfg.seed), round_),
        progress=progress, screen=cfg.paced.screen_rollouts,
        adaptive=cfg.paced.adaptive_rollouts, keep_rollouts=run.fresh is not None,
        split=split, prior=prior)
    kept, full = est.rollouts, cfg.paced.rollouts
    if split:  # the estimate counts rollouts 0, 2, 4, ...; 1, 3, 5, ... are the reused rows
      kept, full = split_for_reuse([p.id for p in chosen], est.rollouts)[2], (full + 1) // 2
    run.table.update([p.id for p in chosen], est.successes, est.trials, step, cfg.paced.merge,
                     cfg.paced.decay_per_step, full_trials=full)
    run.compute["rollout_flops"] += est.flops
    metrics["frontier/estimate_seconds"] = time.perf_counter() - t0
    metrics["frontier/estimate_flops"] = float(est.flops)
    metrics["frontier/rollouts_per_problem"] = float(np.mean(est.trials))
  if run.fresh is not None:
    where = {p.id: i for p, i in zip(chosen, idx)}
    run.fresh.set(round_, step, [where[r.problem_id] for r in kept], kept,
                  run.workdir / "rollouts" / f"round_{round_:05d}.npz" if is_main() else None)
  metrics.update(apply_round(run, round_, divergences.needs_reference(cfg, step)))
  s, n = run.table.counts()
  stats = frontier_stats(s, n, run.pipeline.probs)
  metrics.update(stats.as_metrics())
  seen = run.table.step >= 0
  metrics["frontier/staleness"] = float(np.mean(step - run.table.step[seen])) if seen.any() else 0.
  metrics["frontier/round"] = round_
  levels = np.asarray([p.difficulty if p.difficulty is not None else -1 for p in run.problems])
  p_hat = run.pass_rates
  for level in np.unique(levels[levels >= 0]):
    sel = levels == level
    metrics[f"frontier_mass/level_{level}"] = float(run.pipeline.probs[sel].sum())
    if np.isfinite(p_hat[sel]).any():
      metrics[f"frontier_p/level_{level}"] = float(np.nanmean(p_hat[sel]))
  run.refresh_flops = run.compute["rollout_flops"] - rollout_flops
  if is_main():
    (run.workdir / "passrates").mkdir(exist_ok=True)
    run.table.to_jsonl(run.workdir / "passrates" / f"round_{round_:05d}.jsonl")
    if run.synthesis is not None:
      (run.workdir / "passrates" / f"round_{round_:05d}.cells.json").write_text(
          json.dumps(run.synthesis.table.state()))
  return metrics


def _estimates_pool(cfg) -> bool:
  """Whether a refresh estimates the pool's problems: not under uniform weighting (the weights
  cannot depend on it), nor in a generated run whose rounds are uniform within (the cells'
  estimates did the choosing)."""
  return cfg.paced.weighting != "uniform" and (
      not cfg.generate.source or cfg.generate.within_round == "estimated")


def _generated_round(run: Run, state, round_: int, step: int, progress: bool) -> dict:
  """The cell estimates, this round's fresh problems as the pool, and what the last round
  trained on: the shares of tasks and levels among its drawn rows, their entropy, and the
  distinct-problem rate (distinct problems / rows; the draws are recomputed from the
  pipeline's counter-based stream, so a resumed run reports the same)."""
  syn, metrics = run.synthesis, {}
  if run.pipeline is not None and run.pipeline.round is not None:
    rows = run.pipeline.drawn(step - syn.started)
    if len(rows):
      trained = [run.problems[i] for i in rows]
      metrics["generate_trained/distinct_rate"] = len(np.unique(rows)) / len(rows)
      metrics.update({k.replace("generate/", "generate_trained/"): v for k, v in diversity(
          [p.metadata["cell"] for p in trained], [p.metadata["task"] for p in trained],
          [p.metadata["level"] for p in trained]).items()})
  engine = run.student_engine(state) if run.cfg.paced.weighting != "uniform" else None
  cr = cell_round(engine, syn.maker, syn.table, run.tokenizer, run.verifier, run.cfg, run.mesh,
                  round_, progress=progress)
  run.compute["rollout_flops"] += cr.flops
  set_pool(run, cr.problems)
  syn.started = step
  metrics.update(cr.metrics)
  return metrics


def _to_estimate(run: Run, round_: int, step: int) -> tuple[np.ndarray, np.ndarray]:
  """(estimated, skipped) pool indices of a refresh: problems of either phase of the run that
  can be drawn and sampled (two_stage draws prompt-only rows later), paced.refresh_subset of
  them (random ones, or with paced.refresh_order=thinnest those with the fewest merged trials
  at `step`), split by GRESO-style skipping of settled problems (paced.skip_base < 1; none
  skipped otherwise)."""
  cfg, pool = run.cfg, run.pipeline.pool
  ok = samplable(run, True) | samplable(run, divergences.needs_reference(cfg,
                                                                          cfg.train.steps - 1))
  ok &= pool.prompt_lens <= max(cfg.sample.prompt_buckets)
  candidates = np.flatnonzero(ok)
  subset = cfg.paced.refresh_subset
  rng = np.random.default_rng([cfg.seed, round_, 7])
  if not 0 < subset < len(candidates):
    idx = candidates
  elif cfg.paced.refresh_order == "thinnest":  # the fewest merged (discounted) trials first
    ids = [run.problems[i].id for i in candidates]
    _, n0 = run.table.merged_prior(ids, step, "decay" if cfg.paced.merge == "decay"
                                   else "accumulate", cfg.paced.decay_per_step)
    idx = np.sort(candidates[np.lexsort((rng.random(len(candidates)), n0))[:subset]])
  else:
    idx = np.sort(rng.choice(candidates, subset, replace=False))
  if cfg.paced.skip_base >= 1:
    return idx, idx[:0]
  # Settled problems keep their last estimate.
  settled = run.table.settled[run.table.rows([run.problems[i].id for i in idx])]
  skip = skip_settled(settled, cfg.paced.skip_base, cfg.paced.skip_floor,
                      np.random.default_rng([cfg.seed, round_, 11]))
  return idx[~skip], idx[skip]


def apply_round(run: Run, round_: int, need_reference: bool = True, table=None) -> dict:
  """Weights from the table -> the pipeline's round (sampling or loss-weight mode). When every
  problem that can be drawn has weight 0 the round is uniform, said once in a warning line."""
  cfg = run.cfg
  if table is not None:
    run.table = table
  s, n = run.table.counts()
  w, ok = frontier_weights(s, n, cfg.paced), samplable(run, need_reference)
  fr = frontier_round(w, cfg.paced, ok)
  estimated = ok & (n > 0)
  outside = bool(estimated.any()) and not w[estimated].sum() > 0 and cfg.paced.weighting != "uniform"
  if fr.fallback_uniform:
    log.warning("round %d: every problem has frontier weight 0 (all estimated pass rates in "
                "{0, 1}); this round samples uniformly", round_)
  elif outside:  # the unestimated problems (prior weight) and the eps floor carry the round
    log.warning("round %d: every estimated problem has frontier weight 0 (pass rates in {0, 1}); "
                "this round draws only the %d unestimated problems and the paced.eps floor",
                round_, int((ok & (n == 0)).sum()))
  run.pipeline.set_round(round_, fr.probs, weights=fr.loss_weights, need_reference=need_reference)
  run.need_reference = need_reference
  run.pass_rates = run.table.pass_rates()  # a new array per round: steps keep their snapshot
  return {"frontier/fallback_uniform": float(fr.fallback_uniform),
          "frontier/estimated_outside": float(outside)}


def write_round(run: Run, step: int, metrics: dict) -> None:
  """A refresh's metrics (with this round's verifier incidents) and one INFO line."""
  metrics.update(run.verify_counts.take())
  run.writer.write(step, metrics)
  log.info("round %d at step %d: %d problems estimated, mean p %.3f, p=0 %.1f%%, p=1 %.1f%%%s",
           metrics.get("frontier/round", 0), step, metrics.get("frontier/estimated", 0),
           metrics.get("frontier/mean_p", float("nan")),
           100 * metrics.get("frontier/frac_p0", float("nan")),
           100 * metrics.get("frontier/frac_p1", float("nan")),
           f", {metrics['verify/timeouts']:.0f} verifier timeouts"
           if metrics.get("verify/timeouts") else "")
