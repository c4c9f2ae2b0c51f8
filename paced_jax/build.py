"""Builds a run: mesh, models, data, pass-rate table and the compiled step; cheap checks first."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from paced_jax import checkpoint as ckpt
from paced_jax import step as step_lib
from paced_jax.config import Config, ConfigError, to_dict
from paced_jax.distributed import is_main
from paced_jax.data.pipeline import FrontierPipeline
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import load_tokenizer
from paced_jax.evaluate import eval_off_reason, load_eval_sets
from paced_jax.frontier import PassRateTable
from paced_jax.metrics import MetricsWriter
from paced_jax.preflight import check_run as preflight
from paced_jax.rollout_data import FreshRollouts, teacher_references
from paced_jax.models.resolve import resolve_models
from paced_jax.models.transformer import Decoder
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.verify import verifier_from_config

log = logging.getLogger("paced_jax.train")  # the loop's logger: one name in every log line


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
