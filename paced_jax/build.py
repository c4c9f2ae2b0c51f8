"""Builds a run: mesh, models, data, pass-rate table and the compiled step; cheap checks first."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from paced_jax import checkpoint as ckpt
from paced_jax import divergences
from paced_jax import step as step_lib
from paced_jax.config import Config, ConfigError, to_dict
from paced_jax.distributed import is_main
from paced_jax.data.pipeline import FrontierPipeline
from paced_jax.data.schema import Problem, problem_digests
from paced_jax.data.sources import ListSource, load_pool
from paced_jax.data.tokenizer import Tokenizer, load_tokenizer
from paced_jax.evaluate import EvalSet, eval_off_reason, load_eval_sets
from paced_jax.frontier import PassRateTable
from paced_jax.metrics import MetricsWriter
from paced_jax.preflight import check_run as preflight
from paced_jax.rollout_data import FreshRollouts, teacher_references
from paced_jax.rollouts import Rollouts, make_engine
from paced_jax.models.resolve import resolve_models
from paced_jax.models.transformer import Decoder
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.step import TrainState
from paced_jax.synthesis import RoundMaker, ScoredVerifier, Synthesis, make_generator
from paced_jax.teacher_logits import open_for_run
from paced_jax.verify import Verifier, VerifyCounts, verifier_from_config

log = logging.getLogger("paced_jax.train")  # the loop's logger: one name in every log line


@dataclasses.dataclass
class Run:
  """What a training run holds besides the train state. `setup` builds it; the loop, the
  rounds (`rounds.py`) and the on-policy rows (`rollout_data.py`) update the fields below the
  line, nothing else."""

  cfg: Config  # resolved: models from their init paths, loss.chunk_size for these devices
  recorded: Config  # what config.json records (models resolved, auto fields as given)
  workdir: Path
  mesh: Mesh
  tokenizer: Tokenizer
  student_def: nnx.GraphDef
  teacher_def: nnx.GraphDef | None  # None: loss.mode=sft (no teacher), or loss.teacher=offline
  teacher_params: nnx.State | None
  tx: optax.GradientTransformation
  problems: list[Problem]  # the pool (generated runs: the round's problems)
  pipeline: FrontierPipeline | None  # None only before a generated run's first round
  verifier: Verifier
  verify_counts: VerifyCounts  # the verifier's incidents, read once per round
  writer: MetricsWriter
  # The run's one rollout engine (sample.engine): estimation, evaluation and on-policy rows
  # sample the student through it (`student_engine` hands it the current weights first).
  engine: Rollouts
  step_fn: Callable[..., tuple[TrainState, dict]]
  # What checkpoints record of the pool: each problem's content digest, and the id order.
  pool_record: dict[str, dict[str, str] | list[str]]
  eval_sets: list[EvalSet] = dataclasses.field(default_factory=list)
  synthesis: Synthesis | None = None  # generate.source: the generator, its cell table, ...
  # ---- updated while the run goes on
  table: PassRateTable | None = None  # the pass-rate table (set by setup; replaced on restore)
  # Model FLOPs spent so far (flops.py conventions); checkpointed, so `train.max_flops` holds
  # across resumes. Not counted: evaluation, and the teacher's one-off reference generation
  # (data.reference=teacher), which is cached and shared by every run on the pool.
  compute: dict[str, float] = dataclasses.field(
      default_factory=lambda: {"train_flops": 0.0, "rollout_flops": 0.0})
  # Whether this round's rows carry reference responses (False in on-policy / reverse-KL
  # phases, where the student samples them), and the pass rates the round was built on.
  need_reference: bool = True
  pass_rates: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  # paced.reuse_rollouts: this round's estimation rollouts as on-policy rows, and how many rows
  # of the last on-policy batch came from them.
  fresh: FreshRollouts | None = None
  reused_rows: int = 0
  # The rollout FLOPs of the last refresh and of the last train step: what the loop expects
  # the next of each to cost, so that under train.max_flops it starts no refresh the budget
  # cannot pay for (checkpointed with the compute).
  refresh_flops: float = 0.0
  step_flops: float = 0.0

  def flops(self) -> float:
    return sum(self.compute.values())

  def budget_spent(self) -> bool:
    return 0 < self.cfg.train.max_flops <= self.flops()

  def budget_pays_refresh(self) -> bool:
    """Whether the budget left (train.max_flops) pays for a refresh as costly as the last one
    and one more step. When it does not, the run trains its last steps on the round it has
    (a refresh then would overshoot the budget by most of its cost, and the step after it
    would spend the rest): so every arm of an equal-FLOP comparison stops within one step of
    the budget."""
    budget = self.cfg.train.max_flops
    return budget <= 0 or self.flops() + self.refresh_flops + self.step_flops < budget

  def student(self, state: TrainState) -> Decoder:
    """The student with the train state's parameters."""
    return nnx.merge(self.student_def, state.params)

  def student_engine(self, state: TrainState) -> Rollouts:
    """The run's engine, holding the train state's student parameters."""
    self.engine.set_params(state.params)
    return self.engine


def saved_config(wd: Path) -> Path:
  """The record of a workdir's config: `config.json`, or when it was deleted the newest
  invocation's `configs/<start>.json` (the returned path may not exist: a new run)."""
  saved = wd / "config.json"
  if saved.exists() or not (wd / "configs").is_dir():
    return saved
  history = sorted((p for p in (wd / "configs").glob("*.json") if p.stem.isdigit()),
                   key=lambda p: int(p.stem))
  return history[-1] if history else saved


def prepare_workdir(workdir: str | Path, cfg: Config) -> Path:
  """Creates the run directory and refuses a checkpoint written by an incompatible config.
  Writes nothing else (`record_config` does, once everything is validated)."""
  if not str(workdir).strip():
    raise ConfigError("--workdir is empty; pass the run directory, e.g. --workdir runs/demo")
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
  saved = saved_config(wd)
  if saved.exists() and ckpt.committed_steps(wd / "checkpoints"):
    try:
      old = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ConfigError(f"{saved} is not valid JSON; restore it from {wd}/configs/ or use a new "
                        "--workdir") from None
    now = to_dict(cfg)
    diff = ckpt.config_mismatch(old, now, sections=FIXED_SECTIONS)
    if diff:
      raise ConfigError(f"workdir {str(wd)!r} holds checkpoints of a different config ({diff}); "
                        "use a new --workdir or the config it was written with")
    changed = ckpt.config_changes(old, now, [k for k in now if k not in FIXED_SECTIONS])
    if changed:
      log.warning("resuming %s with %d changed setting(s) (recorded in configs/): %s", wd,
                  len(changed), "; ".join(changed))
  return wd


# What a resumed run may not change (the models, the teacher, the data and tokenizer, the
# loss, the seed); everything else may change and is named in one warning line on resume.
FIXED_SECTIONS = ("model", "teacher", "data", "loss", "seed", "generate")


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


def degenerate(cfg: Config, n_problems: int) -> list[str]:
  """Settings under which PACED runs but means little: one warning line each."""
  out = []
  if cfg.paced.rollouts == 1 and cfg.paced.weighting in ("paced", "dapo", "band"):
    out.append(f"paced.rollouts=1: every estimated pass rate is 0 or 1, so "
               f"paced.weighting={cfg.paced.weighting} gives every estimated problem weight 0 "
               "(the round falls back to the eps floor or uniform); use paced.rollouts >= 2 or "
               "paced.weighting=paced_posterior")
  if n_problems == 1:
    out.append("the pool holds one problem: frontier weights cannot choose between problems")
  elif cfg.data.batch_size > n_problems:
    out.append(f"data.batch_size={cfg.data.batch_size} exceeds the pool's {n_problems} "
               "problems: every batch repeats problems")
  return out


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


def setup(cfg: Config, workdir: str | Path, *, progress: bool = True,
          explicit: Iterable[str] = ()) -> tuple[Run, TrainState]:
  """Builds mesh, models, data, table and the compiled step. Returns (run, initial state).
  Cheap checks (paths, data files, vocabularies, the pool) come before any model is built.
  The init paths decide the architectures (`resolve_models`, once per run; `explicit`: the
  shape fields the user set, which may not contradict them); `run.recorded` is that config
  as `config.json` keeps it (auto fields such as loss.chunk_size=-1 unresolved)."""
  preflight(cfg)
  cfg = resolve_models(cfg, explicit)
  recorded = cfg
  wd = prepare_workdir(workdir, cfg)
  mesh = make_mesh(cfg.mesh)
  if cfg.loss.chunk_size < 0:  # auto: what fits these devices (config.json keeps "-1")
    cfg = step_lib.resolve_loss_chunk(cfg, mesh)
    log.info("loss.chunk_size=-1 (auto): %d scored positions per chunk", cfg.loss.chunk_size)
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  # loss.teacher=offline:DIR: no teacher model; its stored logits are checked against the run
  # (manifest, shards) here, before any model is built, and against the pool by the pipeline.
  offline = open_for_run(cfg) if divergences.offline(cfg) else None
  live_teacher = divergences.needs_teacher(cfg.loss.mode) and offline is None
  if live_teacher and cfg.teacher is None:
    raise ConfigError(f"loss.mode={cfg.loss.mode!r} needs a teacher: set the config's teacher "
                      "(and train.init_teacher), or use loss.mode=sft")
  if (live_teacher and not cfg.loss.vocab_limit  # resolve_models
      and cfg.teacher.vocab_size != cfg.model.vocab_size):  # sets it for a padded pair
    raise ConfigError(f"teacher vocab_size={cfg.teacher.vocab_size} differs from student "
                      f"vocab_size={cfg.model.vocab_size}: distillation compares distributions "
                      "over one vocabulary")
  if tok.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f"tokenizer {cfg.data.tokenizer!r} has {tok.vocab_size} ids but "
                      f"model.vocab_size={cfg.model.vocab_size}; raise model.vocab_size")
  generator = make_generator(cfg.generate) if cfg.generate.source else None
  if generator is not None:
    _check_generated(cfg, generator)
    source, problems = None, []
  else:
    source = load_pool(cfg.data, "train", seed=cfg.seed)
    problems = [source[i] for i in range(len(source))]
  for line in degenerate(cfg, len(problems) if source is not None else cfg.generate.per_round):
    log.warning("%s", line)
  off = eval_off_reason(cfg)
  if off:
    log.info("evaluation off: %s", off)
  eval_sets = [] if off else load_eval_sets(cfg, train=problems or None)
  counts = VerifyCounts()
  verifier = verifier_from_config(cfg.paced, counts)
  synthesis = None
  if generator is not None:
    verifier = ScoredVerifier(generator, verifier)
    heldout = [p for es in eval_sets for p in es.problems]
    synthesis = Synthesis(generator, RoundMaker(generator, cfg.seed, heldout))
  student = load_or_init(cfg.train.init_student, cfg.model, mesh, cfg.seed, "student")
  teacher_def = teacher_params = None
  if divergences.teacher_is_student(cfg.loss.mode):  # a frozen copy of the initial student
    teacher = load_or_init(cfg.train.init_student, cfg.model, mesh, cfg.seed, "student")
    teacher_def, teacher_params = nnx.split(teacher)
  elif live_teacher:
    teacher = load_or_init(cfg.train.init_teacher, cfg.teacher, mesh, cfg.seed + 1, "teacher")
    teacher_def, teacher_params = nnx.split(teacher)
  references = None
  if cfg.data.reference == "teacher":
    if teacher_params is None:
      raise ConfigError("data.reference=teacher needs a teacher; loss.mode=sft has none")
    references = teacher_references(
        cfg, wd, source, make_engine(cfg, nnx.merge(teacher_def, teacher_params), mesh), tok,
        verifier, progress=progress)
  # A mode whose rows never carry a reference (on_policy: the student samples every response)
  # can draw problems without one too.
  pipeline = None if source is None else FrontierPipeline(
      source, tok, cfg.data, seed=cfg.seed, mesh=mesh, references=references,
      prompts_only=divergences.prompts_only(cfg.loss.mode), offline=offline)
  table = PassRateTable([p.id for p in problems])
  tx = step_lib.make_optimizer(cfg.train)
  state = step_lib.init_train_state(student, tx, mesh)
  student_def = nnx.graphdef(student)
  step_fn = step_lib.compile_train_step(cfg, mesh, state, student_def, teacher_params,
                                        teacher_def, tx)
  run = Run(cfg=cfg, recorded=recorded, workdir=wd, mesh=mesh, tokenizer=tok, student_def=student_def,
            teacher_def=teacher_def, teacher_params=teacher_params, tx=tx, problems=problems,
            pipeline=pipeline, table=table, verifier=verifier, verify_counts=counts,
            writer=MetricsWriter(wd, enabled=is_main()), eval_sets=eval_sets,
            engine=make_engine(cfg, student, mesh), step_fn=step_fn,
            pool_record={"problems": problem_digests(problems),
                         "order": [p.id for p in problems]},
            fresh=FreshRollouts(cfg.paced.reuse_rollouts) if cfg.paced.reuse_rollouts else None,
            synthesis=synthesis)
  return run, state


def set_pool(run: Run, problems: list[Problem]) -> None:
  """Makes `problems` the pool of a generated run (a round's): a new pipeline over them (its
  round is set by `rounds.apply_round`), a new pass-rate table, the checkpoint's pool record."""
  cfg = run.cfg
  if run.pipeline is not None:
    run.pipeline.close()
  run.problems = list(problems)
  run.pipeline = FrontierPipeline(ListSource(run.problems, name="generated round"), run.tokenizer,
                                  cfg.data, seed=cfg.seed, mesh=run.mesh,
                                  prompts_only=divergences.prompts_only(cfg.loss.mode))
  run.table = PassRateTable([p.id for p in run.problems])
  run.pool_record = {"problems": problem_digests(run.problems),
                     "order": [p.id for p in run.problems]}


def _check_generated(cfg: Config, generator) -> None:
  """What a generated run cannot do, one line each, before any model is built."""
  if cfg.data.reference == "teacher":
    raise ConfigError("data.reference=teacher with generate.source: teacher references are "
                      "sampled once for a fixed pool, and a generated run makes new problems "
                      "every round; use the generator's solutions (generate.source=synthetic) "
                      "or an on-policy loss.mode (on_policy, self_distill)")
  if not generator.has_solutions() and not divergences.prompts_only(cfg.loss.mode):
    raise ConfigError(f"generate.source={cfg.generate.source} problems have no worked "
                      f"solutions, and loss.mode={cfg.loss.mode} trains on reference "
                      "responses; use loss.mode=on_policy or self_distill (the student samples "
                      "its own), or generate.source=synthetic")
