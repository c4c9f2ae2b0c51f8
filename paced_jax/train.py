"""The PACED training loop: plain functions around the one jitted `step.train_step`.

    every R steps:  estimate pass rates (K rollouts, verified) -> PassRateTable
                    -> frontier weights -> sampling probabilities -> new Grain round
    every step:     batch (sampled by pi) -> train_step (teacher inside) -> metrics one step late
    every C steps:  Orbax checkpoint (params, opt_state, pass rates, data state, rng, step)

Resume is automatic when `<workdir>/checkpoints` has a step; it continues exactly (the data
stream and the estimation RNG are functions of (seed, round, position), not carried state), from
the newest step that reads back (an unreadable one is set aside with a warning, never deleted),
and `metrics.jsonl` keeps each step once. Everything is validated before anything is written;
`config.json` is this invocation's config and `configs/<start step>.json` keeps each one's.
SIGTERM (TPU preemption) or SIGINT in the step loop saves at the next step boundary and returns
(`last["stopped_by"]`); before the loop, or a second signal, raises `Interrupted`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from paced_jax import checkpoint as ckpt
from paced_jax import flops as flops_lib
from paced_jax import step as step_lib
from paced_jax.config import Config, ConfigError, to_dict
from paced_jax.distributed import is_main, to_host
from paced_jax.data.pipeline import FrontierPipeline
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import load_tokenizer
from paced_jax.evaluate import estimate_for_config, eval_off_reason, evaluate, load_eval_sets
from paced_jax.frontier import (PassRateTable, frontier_round, frontier_stats, frontier_weights,
                                skip_settled)
from paced_jax.metrics import MetricsWriter, progress_bar
from paced_jax.preflight import check_run as preflight
from paced_jax.rollout_data import FreshRollouts, on_policy_batch, teacher_references
from paced_jax.models.resolve import resolve_models
from paced_jax.models.transformer import Decoder
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.verify import verifier_from_config

log = logging.getLogger("paced_jax.train")


class TrainingDiverged(RuntimeError):
  """The loss became NaN/Inf; nothing from the diverged steps was saved."""


class Interrupted(Exception):
  """SIGINT / SIGTERM before the step loop (nothing to save yet), or a second signal."""

  def __init__(self, signum: int, step: int | None):
    name = signal.Signals(signum).name
    where = "before the first checkpoint" if step is None else f"at step {step}"
    super().__init__(f"interrupted by {name} {where}; run the same command to "
                     f"{'start' if step is None else 'resume'}")
    self.signum = signum


@dataclasses.dataclass
class Run:
  """What a training run holds besides the train state (built once by `setup`)."""

  cfg: Config
  workdir: Path
  mesh: Any
  tokenizer: Any
  student_def: Any
  teacher_def: Any
  teacher_params: Any
  tx: Any
  problems: list
  pipeline: FrontierPipeline
  table: PassRateTable
  verifier: Any
  writer: MetricsWriter
  eval_sets: list = dataclasses.field(default_factory=list)
  step_fn: Any = None
  # Model FLOPs spent so far (flops.py conventions); checkpointed, so `train.max_flops` holds
  # across resumes. Not counted: evaluation, and the teacher's one-off reference generation
  # (data.reference=teacher), which is cached and shared by every run on the pool.
  compute: dict = dataclasses.field(
      default_factory=lambda: {"train_flops": 0.0, "rollout_flops": 0.0})
  # Whether this round's rows carry reference responses (False in on-policy / reverse-KL
  # phases, where the student samples them), and the pass rates the round was built on.
  need_reference: bool = True
  pass_rates: Any = None
  # paced.reuse_rollouts: this round's estimation rollouts as on-policy rows, and how many rows
  # of the last on-policy batch came from them.
  fresh: FreshRollouts | None = None
  reused_rows: int = 0

  def flops(self) -> float:
    return sum(self.compute.values())

  def budget_spent(self) -> bool:
    return 0 < self.cfg.train.max_flops <= self.flops()


# ----------------------------------------------------------------------------- setup


def prepare_workdir(workdir: str | Path, cfg: Config) -> Path:
  """Creates the run directory and refuses a checkpoint written by an incompatible config.
  Writes nothing else (`record_config` does, once everything is validated)."""
  if "://" in str(workdir):
    raise ConfigError(f"workdir {str(workdir)!r} is a URL; paced writes through the filesystem: "
                      "mount the bucket (e.g. gcsfuse) at the same path on every host and pass "
                      "that path")
  wd = Path(workdir)
  try:
    wd.mkdir(parents=True, exist_ok=True)
    probe = wd / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"workdir {str(wd)!r} is not writable ({e.strerror}); pass a directory "
                      "you can write to with --workdir") from None
  saved = wd / "config.json"
  if saved.exists() and ckpt.committed_steps(wd / "checkpoints"):
    try:
      old = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ConfigError(f"{saved} is not valid JSON; restore it from {wd}/configs/ or use a new "
                        "--workdir") from None
    diff = ckpt.config_mismatch(old, to_dict(cfg), sections=("model", "data", "loss", "seed"))
    if diff:
      raise ConfigError(f"workdir {str(wd)!r} holds checkpoints of a different config ({diff}); "
                        "use a new --workdir or the config it was written with")
  return wd


def record_config(wd: Path, cfg: Config, start: int) -> None:
  """`config.json` (this invocation's) and `configs/<start>.json` (every invocation's, so the
  config that produced each checkpoint is never lost)."""
  if not is_main():
    return
  text = json.dumps(to_dict(cfg), indent=2)
  hist = wd / "configs"
  if (wd / "config.json").exists() and not hist.is_dir():  # a run from before configs/
    hist.mkdir()
    (hist / "earlier.json").write_text((wd / "config.json").read_text())
  hist.mkdir(exist_ok=True)
  for path in (hist / f"{start}.json", wd / "config.json"):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a kill never leaves half a config


def load_or_init(path: str, model_cfg, mesh, seed: int, role: str) -> Decoder:
  """A model from an Orbax model checkpoint or Hugging Face directory, or random init. The
  config must describe the stored model (`resolve_models` makes it so); any disagreement is
  one line listing every differing shape field."""
  if not path:
    return shard_init(lambda rngs: Decoder(model_cfg, rngs=rngs), mesh, seed=seed)
  from paced_jax.models.io import load_model
  from paced_jax.models.resolve import describe_diff, shape_diff

  model, loaded_cfg = load_model(path, mesh=mesh, dtype=model_cfg.dtype,
                                 param_dtype=model_cfg.param_dtype)
  diff = shape_diff(loaded_cfg, model_cfg)
  if diff:
    raise ConfigError(f"train.init_{role}={path!r} holds a model that the config's {role} "
                      f"contradicts in {len(diff)} field(s): "
                      f"{describe_diff(loaded_cfg, model_cfg, diff)}")
  return model


def setup(cfg: Config, workdir: str | Path, *, progress: bool = True) -> tuple[Run, Any]:
  """Builds mesh, models, data, table and the compiled step. Returns (run, initial state).
  Cheap checks (paths, data files, vocabularies, the pool) come before any model is built."""
  preflight(cfg)
  cfg = resolve_models(cfg)  # the init paths decide the architectures (no-op when resolved)
  wd = prepare_workdir(workdir, cfg)
  mesh = make_mesh(cfg.mesh)
  if cfg.loss.chunk_size < 0:  # auto: what fits these devices (config.json keeps "-1")
    cfg = step_lib.resolve_loss_chunk(cfg, mesh)
    log.info("loss.chunk_size=-1 (auto): %d scored positions per chunk", cfg.loss.chunk_size)
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  if cfg.loss.mode not in ("sft", "self_distill") and cfg.teacher is None:
    raise ConfigError(f"loss.mode={cfg.loss.mode!r} needs a teacher: set the config's teacher "
                      "(and train.init_teacher), or use loss.mode=sft")
  if cfg.teacher is not None and cfg.teacher.vocab_size != cfg.model.vocab_size and \
      cfg.loss.mode != "self_distill" and not cfg.loss.vocab_limit:  # resolve_models sets it
    raise ConfigError(f"teacher vocab_size={cfg.teacher.vocab_size} differs from student "
                      f"vocab_size={cfg.model.vocab_size}: distillation compares distributions "
                      "over one vocabulary")
  if tok.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f"tokenizer {cfg.data.tokenizer!r} has {tok.vocab_size} ids but "
                      f"model.vocab_size={cfg.model.vocab_size}; raise model.vocab_size")
  source = load_pool(cfg.data, "train", seed=cfg.seed)
  problems = [source[i] for i in range(len(source))]
  off = eval_off_reason(cfg)
  if off:
    log.info("evaluation off: %s", off)
  eval_sets = [] if off else load_eval_sets(cfg, train=problems)
  verifier = verifier_from_config(cfg.paced)
  student = load_or_init(cfg.train.init_student, cfg.model, mesh, cfg.seed, "student")
  teacher_def = teacher_params = None
  if cfg.loss.mode == "self_distill":  # the teacher is a frozen copy of the initial student
    teacher = load_or_init(cfg.train.init_student, cfg.model, mesh, cfg.seed, "student")
    teacher_def, teacher_params = nnx.split(teacher)
  elif cfg.loss.mode != "sft":
    teacher = load_or_init(cfg.train.init_teacher, cfg.teacher, mesh, cfg.seed + 1, "teacher")
    teacher_def, teacher_params = nnx.split(teacher)
  references = None
  if cfg.data.reference == "teacher":
    if teacher_params is None:
      raise ConfigError("data.reference=teacher needs a teacher; loss.mode=sft has none")
    references = teacher_references(cfg, wd, source, nnx.merge(teacher_def, teacher_params),
                                    tok, verifier, mesh, progress=progress)
  # on_policy rows carry no reference (the student samples every response): problems without
  # one are usable too.
  pipeline = FrontierPipeline(source, tok, cfg.data, seed=cfg.seed, mesh=mesh,
                              references=references, prompts_only=cfg.loss.mode == "on_policy")
  table = PassRateTable([p.id for p in problems])
  tx = step_lib.make_optimizer(cfg.train)
  state = step_lib.init_train_state(student, tx, mesh)
  run = Run(cfg=cfg, workdir=wd, mesh=mesh, tokenizer=tok, student_def=nnx.graphdef(student),
            teacher_def=teacher_def, teacher_params=teacher_params, tx=tx, problems=problems,
            pipeline=pipeline, table=table, verifier=verifier,
            writer=MetricsWriter(wd, enabled=is_main()), eval_sets=eval_sets,
            fresh=FreshRollouts(cfg.paced.reuse_rollouts) if cfg.paced.reuse_rollouts else None)
  run.step_fn = step_lib.compile_train_step(cfg, mesh, state, run.student_def, teacher_params,
                                            teacher_def, tx)
  return run, state


# ----------------------------------------------------------------------------- frontier


def _student(run: Run, state) -> Decoder:
  return nnx.merge(run.student_def, state.params)


def needs_reference(cfg: Config, step: int) -> bool:
  """Whether the rows of `step` are teacher-forced on references (False when the student's own
  rollouts replace them: on_policy, and the reverse-KL stage of two_stage)."""
  if cfg.loss.mode == "on_policy":
    return False
  return not (cfg.loss.mode == "two_stage" and step_lib.stage_of(cfg, step) == "reverse_kl")


def samplable(run: Run, need_reference: bool) -> np.ndarray:
  """[N] problems the pipeline can draw (a prompt that fits; a reference when rows need one)."""
  return run.pipeline.pool.usable_for(need_reference)


def refresh(run: Run, state, round_: int, step: int, *, progress: bool = True) -> dict:
  """Re-estimates pass rates (all problems or a subset), rebuilds weights and starts the data
  round `round_`. Deterministic in (seed, round). Only problems that can be drawn and sampled
  are estimated; nothing is estimated when the weights cannot depend on it (uniform)."""
  cfg = run.cfg
  metrics: dict[str, float] = {}
  idx = np.zeros(0, np.int64)
  if cfg.paced.weighting != "uniform":
    idx, skipped = _to_estimate(run, round_)
    metrics["frontier/estimated"] = len(idx)
    if cfg.paced.skip_base < 1:
      metrics["frontier/skipped"] = float(len(skipped))
    if is_main() and len(skipped):  # which estimates are stale this round, for audits
      (run.workdir / "passrates").mkdir(exist_ok=True)
      (run.workdir / "passrates" / f"round_{round_:05d}.skipped.json").write_text(
          json.dumps([run.problems[i].id for i in skipped]))
  chosen, kept = [run.problems[i] for i in idx], []
  if chosen:
    t0 = time.perf_counter()
    est = estimate_for_config(
        _student(run, state), chosen, run.tokenizer, run.verifier, cfg, run.mesh,
        rollouts=cfg.paced.rollouts, rng=jax.random.fold_in(jax.random.key(cfg.seed), round_),
        progress=progress, screen=cfg.paced.screen_rollouts, keep_rollouts=run.fresh is not None)
    run.table.update([p.id for p in chosen], est.successes, est.trials, step, cfg.paced.merge)
    run.compute["rollout_flops"] += est.flops
    metrics["frontier/estimate_seconds"] = time.perf_counter() - t0
    kept = est.rollouts
  if run.fresh is not None:
    where = {p.id: i for p, i in zip(chosen, idx)}
    run.fresh.set(round_, step, [where[r.problem_id] for r in kept], kept,
                  run.workdir / "rollouts" / f"round_{round_:05d}.npz" if is_main() else None)
  metrics.update(apply_round(run, round_, needs_reference(cfg, step)))
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
  if is_main():
    (run.workdir / "passrates").mkdir(exist_ok=True)
    run.table.to_jsonl(run.workdir / "passrates" / f"round_{round_:05d}.jsonl")
  return metrics


def _to_estimate(run: Run, round_: int) -> tuple[np.ndarray, np.ndarray]:
  """(estimated, skipped) pool indices of a refresh: problems of either phase of the run that
  can be drawn and sampled (two_stage draws prompt-only rows later), a random
  paced.refresh_subset of them, split by GRESO-style skipping of settled problems
  (paced.skip_base < 1; none skipped otherwise)."""
  cfg, pool = run.cfg, run.pipeline.pool
  ok = samplable(run, True) | samplable(run, needs_reference(cfg, cfg.train.steps - 1))
  ok &= pool.prompt_lens <= max(cfg.sample.prompt_buckets)
  candidates = np.flatnonzero(ok)
  subset = cfg.paced.refresh_subset
  idx = (np.sort(np.random.default_rng([cfg.seed, round_, 7]).choice(
      candidates, subset, replace=False)) if 0 < subset < len(candidates) else candidates)
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


# ----------------------------------------------------------------------------- loop


def _save(run: Run, mgr, state, step: int, round_: int, force: bool = False) -> None:
  meta = {"step": step, "round": round_, "data": run.pipeline.get_state(),
          "need_reference": run.need_reference,
          "model_config": to_dict(run.cfg.model), "compute": dict(run.compute)}
  if run.fresh is not None:
    meta["reuse"] = run.fresh.state()
  ckpt.save(mgr, step, params=state.params, opt_state=state.opt_state,
            passrates=run.table.state_dict(), meta=meta, force=force)


def _restore(run: Run, mgr, state):
  """The newest intact checkpoint (unreadable newer ones are set aside with one warning line
  each, kept). Checks the data stream against the config before anything is written."""
  out, bad = ckpt.restore_newest_intact(mgr, params=state.params, opt_state=state.opt_state)
  meta = out["meta"]
  try:
    table = PassRateTable.from_state_dict(out["passrates"])
    apply_round(run, meta["round"], meta.get("need_reference", True), table=table)
    run.pipeline.set_state(meta["data"])
  except (ValueError, KeyError) as e:
    raise ConfigError(f"checkpoint {mgr.directory}/{meta.get('step')} does not match this "
                      f"config ({str(e).splitlines()[0][:200]}); resume with the config it was "
                      f"written with ({run.workdir}/configs/) or use a new --workdir") from None
  for step, why in bad:
    kept = ckpt.set_aside(run.workdir, Path(str(mgr.directory)), step)
    log.warning("%s; kept as %s, resuming from step %d", why, kept, meta["step"])
  if bad:
    mgr.reload()
  run.compute.update(meta.get("compute", {}))
  if run.fresh is not None and "reuse" in meta:
    run.fresh.restore(meta["reuse"], run.workdir / "rollouts")
  state = step_lib.TrainState(step=jax.device_put(np.int32(meta["step"]), state.step.sharding),
                              params=out["params"], opt_state=out["opt_state"])
  return state, meta["step"], meta["round"]


def _host_metrics(run: Run, m: dict, batch_index, pass_rates) -> dict:
  """Device metrics of one step -> floats, plus the loss per pass-rate bucket (the pass rates
  the step was sampled with)."""
  m = {k: to_host(v) for k, v in m.items()}
  ex = m.pop("example_loss")
  out = {k: float(v) for k, v in m.items()}
  p = pass_rates[np.asarray(batch_index)]
  for lo, hi in ((0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)):
    sel = (p == lo) if lo == hi else (p > lo) & (p < hi) if lo == 0.0 else (p >= lo) & (p < hi)
    if sel.any():
      out[f"loss_by_p/{lo:.1f}-{hi:.1f}"] = float(ex[sel].mean())
  return out


class _Signals:
  """SIGTERM / SIGINT: inside the step loop, a flag read at the next step boundary (the run
  saves and stops); before it (setup, the first estimate) or on a second signal, `Interrupted`
  at once. Installed only in the main thread of a POSIX process."""

  def __init__(self):
    self.received, self.in_loop, self.step, self._old = None, False, None, {}

  def __enter__(self):
    if _main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.received is not None or not self.in_loop:
      raise Interrupted(signum, self.step)
    self.received = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def train(cfg: Config, workdir: str | Path, *, progress: bool = True,
          stop_after: int | None = None) -> dict:
  """Runs (or resumes) training; returns the last logged metrics. `stop_after` ends the run
  (with a checkpoint) after that many steps of this invocation, as a preemption would."""
  with _Signals() as signals:
    return _train(cfg, workdir, progress and is_main(), stop_after, signals)


def _train(cfg: Config, workdir, progress: bool, stop_after, signals: _Signals) -> dict:
  cfg = resolve_models(cfg)  # config.json records the models actually trained
  run, state = setup(cfg, workdir, progress=progress)
  mgr = ckpt.manager(run.workdir / "checkpoints", cfg.train.max_to_keep)
  bar = None
  try:
    start, round_ = 0, 0
    if ckpt.committed_steps(mgr.directory):
      state, start, round_ = _restore(run, mgr, state)
      signals.step = start
    record_config(run.workdir, cfg, start)
    run.writer.truncate(start)  # steps >= start are recomputed: each step is logged once
    if start:
      log.info("resumed from step %d (round %d)", start, round_)
    else:
      if run.eval_sets:
        before = run_eval(run, state, 0, progress)
        if is_main():
          (run.workdir / "eval_before.json").write_text(json.dumps(before, indent=1))
      _write_round(run, 0, refresh(run, state, 0, 0, progress=progress))
    R = max(cfg.paced.refresh_every, 1)
    bar = progress_bar(cfg.train.steps, start, enabled=progress)
    last, pending, t0 = {}, None, time.perf_counter()
    step = start
    signals.in_loop = True
    while step < cfg.train.steps and not run.budget_spent():
      if run.eval_sets and step > 0 and step % cfg.train.eval_every == 0:
        run_eval(run, state, step, False)
      if step // R > round_:  # a new round: fresh pass rates, new pi
        round_ = step // R
        _write_round(run, step, refresh(run, state, round_, step, progress=False))
      need = needs_reference(cfg, step)
      if need != run.need_reference:  # two_stage's switch inside a round: prompt-only rows
        run.writer.write(step, apply_round(run, round_, need))
      batch = next(run.pipeline)
      on_policy = (cfg.loss.mode in ("on_policy", "self_distill")
                   or (cfg.loss.mode == "two_stage" and
                       step_lib.stage_of(cfg, step) == "reverse_kl"))
      if on_policy:  # the student's own rollouts replace the reference responses
        batch = on_policy_batch(run, state, batch, step)
      index = batch["index"]
      state, metrics = run.step_fn(state, run.teacher_params, batch)
      if on_policy and run.fresh is not None:
        metrics = {**metrics, "rollouts/reused_rows": np.float32(run.reused_rows)}
      run.compute["train_flops"] += _step_flops(run.cfg, batch["tokens"].shape)
      if pending is not None:  # read back step-1 while step runs
        last = _finish_step(run, pending, bar, t0, start)
      pending = (step, metrics, index, dict(run.compute), run.pass_rates)
      step += 1
      signals.step = step
      boundary = (step % cfg.train.ckpt_every == 0 or step == cfg.train.steps
                  or run.budget_spent())
      preempted = (signals.received is not None
                   or (stop_after is not None and step - start >= stop_after))
      if boundary or preempted:
        last = _finish_step(run, pending, bar, t0, start)
        pending = None
        _save(run, mgr, state, step, round_, force=preempted)
        if preempted:
          break
    signals.in_loop = False
    if pending is not None:
      last = _finish_step(run, pending, bar, t0, start)
    ckpt.wait(mgr)  # a failed last write is an error, not a silent loss
    ckpt.rotate(mgr)
    bar.close()
    if signals.received is not None or (stop_after is not None and step < cfg.train.steps):
      by = signal.Signals(signals.received).name if signals.received else "stop_after"
      log.warning("stopped by %s at step %d (checkpoint saved); run the same command to "
                  "resume", by, step)
      last["stopped_by"] = signals.received
    if run.budget_spent() and step < cfg.train.steps:
      log.info("train.max_flops=%.3g reached at step %d", cfg.train.max_flops, step)
    if run.eval_sets and (step == cfg.train.steps or run.budget_spent()) and \
        last.get("stopped_by") is None:
      after = run_eval(run, state, step, progress)
      if is_main():
        (run.workdir / "eval_after.json").write_text(json.dumps(after, indent=1))
      last.update(after)
  finally:
    signals.in_loop = False
    ckpt.close(mgr)
    if bar is not None:
      bar.close()
    run.pipeline.close()
    run.writer.close()
  last["step"] = step
  last.update(_compute_metrics(run.compute))
  return last


def _write_round(run: Run, step: int, metrics: dict) -> None:
  """A refresh's metrics (with this round's verifier incidents) and one INFO line."""
  from paced_jax.verify import take_counts

  metrics.update(take_counts())
  run.writer.write(step, metrics)
  log.info("round %d at step %d: %d problems estimated, mean p %.3f, p=0 %.1f%%, p=1 %.1f%%%s",
           metrics.get("frontier/round", 0), step, metrics.get("frontier/estimated", 0),
           metrics.get("frontier/mean_p", float("nan")),
           100 * metrics.get("frontier/frac_p0", float("nan")),
           100 * metrics.get("frontier/frac_p1", float("nan")),
           f", {metrics['verify/timeouts']:.0f} verifier timeouts"
           if metrics.get("verify/timeouts") else "")


def _compute_metrics(compute: dict) -> dict:
  """compute/train_flops, compute/rollout_flops and their sum compute/flops."""
  return {**{f"compute/{k}": v for k, v in compute.items()}, "compute/flops": sum(compute.values())}


def _step_flops(cfg: Config, shape) -> float:
  """Model FLOPs of one train step on a [B, T] batch (the step scores at most
  data.max_response_len positions per row)."""
  B, T = shape
  teacher = {"sft": None, "self_distill": cfg.model}.get(cfg.loss.mode, cfg.teacher)
  return flops_lib.step_flops(cfg.model, teacher, B, T, min(cfg.data.max_response_len, T),
                              chunk=cfg.loss.chunk_size)


def run_eval(run: Run, state, step: int, progress: bool) -> dict:
  m = evaluate(_student(run, state), run.eval_sets, run.tokenizer, run.verifier, run.cfg,
               run.mesh, progress=progress)
  run.writer.write(step, m)
  return m


def _finish_step(run: Run, pending, bar, t0: float, start: int) -> dict:
  step, metrics, index, compute, pass_rates = pending
  m = _host_metrics(run, metrics, to_host(index), pass_rates)
  m.update(_compute_metrics(compute))
  if not (np.isfinite(m["loss"]) and np.isfinite(m["param_norm"])):
    raise TrainingDiverged(f"loss {m['loss']}, parameter norm {m['param_norm']} at step {step}: "
                           "training diverged; the run stopped and saved "
                           "nothing from this step on (lower train.lr or raise train.grad_clip; "
                           "earlier checkpoints are intact)")
  m["steps_per_s"] = (step + 1 - start) / max(time.perf_counter() - t0, 1e-9)
  if step % run.cfg.train.log_every == 0 or step + 1 == run.cfg.train.steps:
    run.writer.write(step, m)
  bar.update(1)
  bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens'] * m['steps_per_s']:,.0f}",
                  refresh=False)
  return m


def _main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread() and os.name == "posix"
