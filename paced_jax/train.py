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

import errno
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Iterable

import jax
import numpy as np

from paced_jax import checkpoint as ckpt
from paced_jax import flops as flops_lib
from paced_jax import divergences
from paced_jax import step as step_lib
from paced_jax.build import (FIXED_SECTIONS, Run, load_or_init, prepare_workdir, record_config,
                             saved_config, set_pool, setup)
from paced_jax.config import Config, ConfigError, to_dict
from paced_jax.distributed import is_main, to_host
from paced_jax.evaluate import eval_off_reason, evaluate
from paced_jax.data.schema import pool_changes
from paced_jax.frontier import PassRateTable
from paced_jax.metrics import progress_bar
from paced_jax.rollout_data import on_policy_batch
from paced_jax.rounds import apply_round, refresh, samplable, write_round

log = logging.getLogger("paced_jax.train")

# The public names, with those of build.py (setting a run up) and rounds.py (the frontier rounds).
__all__ = ["Interrupted", "Run", "TrainingDiverged", "apply_round", "finished", "load_or_init",
           "prepare_workdir", "record_config", "refresh", "run_eval", "samplable", "setup",
           "train"]


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


# ----------------------------------------------------------------------------- loop


def _save(run: Run, mgr, state, step: int, round_: int, force: bool = False) -> None:
  meta = {"step": step, "round": round_, "data": run.pipeline.get_state(),
          "need_reference": run.need_reference, "pool": run.pool_record,
          "model_config": to_dict(run.cfg.model), "compute": dict(run.compute),
          "expected_flops": {"refresh": run.refresh_flops, "step": run.step_flops}}
  if run.fresh is not None:
    meta["reuse"] = run.fresh.state()
  if run.synthesis is not None:
    meta["generate"] = run.synthesis.state(run.problems)
  ckpt.save(mgr, step, params=state.params, opt_state=state.opt_state,
            passrates=run.table.state_dict(), meta=meta, force=force)


def _restore(run: Run, mgr, state):
  """The newest intact checkpoint (unreadable newer ones are set aside with one warning line
  each, kept). Checks the data stream against the config before anything is written."""
  out, bad = ckpt.restore_newest_intact(mgr, params=state.params, opt_state=state.opt_state)
  meta = out["meta"]
  where = f"{mgr.directory}/{meta.get('step')}"
  if run.synthesis is not None:  # the round's problems, the cell table and the maker
    if "generate" not in meta:
      raise ConfigError(f"checkpoint {where} was written by a run without generate.source; "
                        "resume with the config it was written with or use a new --workdir")
    set_pool(run, run.synthesis.restore(meta["generate"]))
  saved_pool, reordered = meta.get("pool"), False
  if saved_pool is not None:  # checkpoints written before the pool record: by position
    changes = pool_changes(saved_pool["problems"], run.pool_record["problems"])
    if changes:
      raise ConfigError(f"the pool changed since checkpoint {where}: {changes}; resume with the "
                        "pool it was trained on, or use a new --workdir")
    reordered = saved_pool["order"] != [p.id for p in run.problems]
    if reordered:
      log.warning("the pool's problems are in another order than at checkpoint %s; pass rates "
                  "are restored by problem id and the data stream restarts its round (its "
                  "draws from here on differ from the uninterrupted run's)", where)
  try:
    table = PassRateTable.from_state_dict(out["passrates"])
    if saved_pool is not None:
      table = table.reindexed([p.id for p in run.problems])
    apply_round(run, meta["round"], meta.get("need_reference", True), table=table)
    if not reordered:  # its positions index the saved order
      run.pipeline.set_state(meta["data"])
  except (ValueError, KeyError) as e:
    raise ConfigError(f"checkpoint {where} does not match this "
                      f"config ({str(e).splitlines()[0][:200]}); resume with the config it was "
                      f"written with ({run.workdir}/configs/) or use a new --workdir") from None
  for step, why in bad:
    kept = ckpt.set_aside(run.workdir, Path(str(mgr.directory)), step)
    log.warning("%s; kept as %s, resuming from step %d", why, kept, meta["step"])
  if bad:
    mgr.reload()
  run.compute.update(meta.get("compute", {}))
  expected = meta.get("expected_flops", {})  # absent in older checkpoints: refresh as before
  run.refresh_flops, run.step_flops = expected.get("refresh", 0.0), expected.get("step", 0.0)
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
          stop_after: int | None = None, explicit: Iterable[str] = ()) -> dict:
  """Runs (or resumes) training; returns the last logged metrics. `stop_after` ends the run
  (with a checkpoint) after that many steps of this invocation, as a preemption would.
  `explicit`: model shape fields the user set (`models.resolve.shape_overrides`)."""
  done = finished(cfg, workdir) if str(workdir).strip() else None
  if done is not None:  # the console script says so (and prints the summary); nothing written
    return done
  with _Signals() as signals, _workdir_lock(workdir):
    try:
      return _train(cfg, workdir, progress and is_main(), stop_after, signals, explicit)
    except OSError as e:  # a full or failing disk under any write of the run: one line
      if e.errno not in _DISK_ERRNOS:
        raise
      raise ConfigError(
          f"writing {e.filename or workdir} failed ({e.strerror}); free space on (or repair) "
          f"that filesystem and run the same command to resume: the checkpoints already "
          f"written under {workdir}/checkpoints are intact") from None


# Write failures that are the disk's, not the program's: full, over quota, read-only, I/O.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


def _workdir_lock(workdir):
  """One run per workdir (paced_jax/lock.py), taken before anything is written there and held
  to the end. Only process 0 takes it: the other hosts' processes belong to the same run. A URL
  or empty workdir gets no lock and prepare_workdir's own one-line error."""
  import contextlib

  from paced_jax.lock import WorkdirLock

  if not is_main() or "://" in str(workdir) or not str(workdir).strip():
    return contextlib.nullcontext()
  return WorkdirLock(workdir)


def finished(cfg: Config, workdir: str | Path) -> dict | None:
  """{"step", "finished": True} when `workdir` holds a run that this config has nothing left to
  do for: its newest checkpoint is at or past train.steps (or the `finished.json` the end of a
  run writes says train.max_flops was reached there), and its final evaluation is written (or
  the config evaluates nothing). Cheap (reads directory names and two small files), so a rerun
  of a finished run touches nothing. None otherwise (a run to start, resume, or whose final
  evaluation was interrupted and is redone)."""
  wd = Path(workdir)
  steps = ckpt.committed_steps(wd / "checkpoints")
  if not steps:
    return None
  newest = steps[-1]
  try:
    mark = json.loads((wd / "finished.json").read_text())
  except (OSError, ValueError):
    mark = {}
  by_budget = mark.get("step") == newest and 0 < cfg.train.max_flops <= mark.get("flops", 0)
  if newest < cfg.train.steps and not by_budget:
    return None
  if not (wd / "eval_after.json").exists() and not eval_off_reason(cfg):
    return None
  # A config that may not resume this run is not "finished" here: setup refuses it in one
  # line. (Sections whose model comes from an init path are compared after resolve_models.)
  fixed = [s for s in FIXED_SECTIONS
           if not (s == "model" and cfg.train.init_student)
           and not (s == "teacher" and cfg.train.init_teacher)]
  try:
    if ckpt.config_mismatch(json.loads(saved_config(wd).read_text()), to_dict(cfg), fixed):
      return None
  except (OSError, ValueError):  # no readable record: setup says what is wrong
    return None
  return {"step": newest, "finished": True}


def _mark_finished(run: Run, step: int) -> None:
  if is_main():
    tmp = run.workdir / "finished.json.tmp"
    tmp.write_text(json.dumps({"step": step, "flops": run.flops()}))
    os.replace(tmp, run.workdir / "finished.json")


def _train(cfg: Config, workdir, progress: bool, stop_after, signals: _Signals,
           explicit) -> dict:
  run, state = setup(cfg, workdir, progress=progress, explicit=explicit)
  cfg = run.recorded  # config.json records the models actually trained
  mgr = ckpt.manager(run.workdir / "checkpoints", cfg.train.max_to_keep)
  bar, failing = None, False
  try:
    start, round_ = 0, 0
    if ckpt.committed_steps(mgr.directory):
      state, start, round_ = _restore(run, mgr, state)
      signals.step = start
    if start < cfg.train.steps:  # else only the final evaluation is left to redo
      record_config(run.workdir, cfg, start)
      run.writer.truncate(start)  # steps >= start are recomputed: each step is logged once
    if start:
      log.info("resumed from step %d (round %d)", start, round_)
    else:
      if run.eval_sets:
        before = run_eval(run, state, 0, progress)
        if is_main():
          (run.workdir / "eval_before.json").write_text(json.dumps(before, indent=1))
      write_round(run, 0, refresh(run, state, 0, 0, progress=progress))
    R = max(cfg.paced.refresh_every, 1)
    bar = progress_bar(cfg.train.steps, start, enabled=progress)
    last, pending, t0 = {}, None, time.perf_counter()
    step, refresh_skipped = start, False
    signals.in_loop = True
    while step < cfg.train.steps and not run.budget_spent():
      if run.eval_sets and step > 0 and step % cfg.train.eval_every == 0:
        run_eval(run, state, step, progress)
      if step // R > round_ and run.budget_pays_refresh():  # a new round: fresh pass rates
        round_ = step // R
        write_round(run, step, refresh(run, state, round_, step, progress=progress))
      elif step // R > round_ and not refresh_skipped:
        refresh_skipped = True
        log.info("round %d at step %d not started: train.max_flops=%.3g leaves %.3g FLOPs, "
                 "less than a refresh (%.3g) and a step; the last steps train on round %d",
                 step // R, step, cfg.train.max_flops, cfg.train.max_flops - run.flops(),
                 run.refresh_flops, round_)
      need = divergences.needs_reference(cfg, step)
      if need != run.need_reference:  # two_stage's switch inside a round: prompt-only rows
        run.writer.write(step, apply_round(run, round_, need))
      batch = next(run.pipeline)
      on_policy = divergences.on_policy(cfg, step)
      if on_policy:  # the student's own rollouts replace the reference responses
        batch = on_policy_batch(run, state, batch, step)
      index = batch["index"]
      state, metrics = run.step_fn(state, run.teacher_params, batch)
      if on_policy and run.fresh is not None:
        metrics = {**metrics, "rollouts/reused_rows": np.float32(run.reused_rows)}
      run.step_flops = _step_flops(
          run.cfg, batch["tokens"].shape,
          batch["teacher_tokens"].shape[1] if "teacher_tokens" in batch else None)
      run.compute["train_flops"] += run.step_flops
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
    if step == cfg.train.steps or run.budget_spent():
      _mark_finished(run, step)
  except BaseException:
    failing = True
    raise
  finally:
    signals.in_loop = False
    ckpt.close(mgr)
    if bar is not None:
      bar.close()
    if run.pipeline is not None:
      run.pipeline.close()
    try:
      run.writer.close()
    except OSError:  # a full disk: the error on its way out (a checkpoint's) is the one to say
      if not failing:
        raise
  last["step"] = step
  last.update(_compute_metrics(run.compute))
  return last

def _compute_metrics(compute: dict) -> dict:
  """compute/train_flops, compute/rollout_flops and their sum compute/flops."""
  return {**{f"compute/{k}": v for k, v in compute.items()}, "compute/flops": sum(compute.values())}


def _step_flops(cfg: Config, shape, teacher_len: int | None = None) -> float:
  """Model FLOPs of one train step on a [B, T] batch (the step scores at most
  data.max_response_len positions per row; the teacher reads `teacher_len` tokens per row
  where it sees its own, privileged, rows)."""
  B, T = shape
  teacher = divergences.teacher_of(cfg)
  return flops_lib.step_flops(cfg.model, teacher, B, T, min(cfg.data.max_response_len, T),
                              chunk=cfg.loss.chunk_size, teacher_seq_len=teacher_len)


def run_eval(run: Run, state, step: int, progress: bool) -> dict:
  m = evaluate(run.student_engine(state), run.eval_sets, run.tokenizer, run.verifier, run.cfg,
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