"""`paced train`, `paced sft`, `paced estimate`, `paced eval`, `paced smoke` and
`paced teacher-logits`."""

from __future__ import annotations

import dataclasses
import sys

from paced_jax.config import add_config_args


def add_parser(sub) -> None:
  p = sub.add_parser("train", help="PACED distillation (resumes when --workdir has a checkpoint)")
  add_config_args(p)
  p.add_argument("--workdir", required=True, help="run directory (config, metrics, checkpoints)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.set_defaults(func=cmd_train, mode=None)

  p = sub.add_parser("sft", help="plain cross-entropy training on reference responses (used "
                     "to make teachers and students)")
  add_config_args(p)
  p.add_argument("--workdir", required=True)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_train, mode="sft")

  p = sub.add_parser("estimate", help="estimate the pass rates of a student on a pool")
  add_config_args(p)
  p.add_argument("--checkpoint", default="", help="model checkpoint or Hugging Face directory "
                 "(default: train.init_student)")
  p.add_argument("--out", required=True, help="output directory (table + PNG histograms)")
  p.add_argument("--split", default="train")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_estimate)

  p = sub.add_parser("eval", help="accuracy avg@k per difficulty on the held-out splits, and "
                     "forgetting on the probe split relative to a baseline student")
  add_config_args(p)
  p.add_argument("--checkpoint", required=True, help="student: model checkpoint, Hugging Face "
                 "directory or training step directory")
  p.add_argument("--baseline", default=None, help="the starting student (default: "
                 "train.init_student; 'none' to skip)")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser("smoke", help="load the configured models (or init them randomly), size "
                     "the run against device memory, forward pass and cached-decode check")
  add_config_args(p)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=32)
  p.set_defaults(func=cmd_smoke)

  p = sub.add_parser("teacher-logits", help="run the teacher once over every reference response "
                     "and store its top-k log-probabilities; train on them with --set "
                     "loss.teacher=offline:DIR (no teacher in training memory)")
  add_config_args(p)
  p.add_argument("--out", required=True, help="output directory (ArrayRecord shards and "
                 "manifest.json); a rerun resumes, writing only what is missing")
  p.add_argument("--k", type=int, default=None, help="token ids kept per scored position "
                 "(default: loss.offline_k)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_teacher_logits)


def cmd_train(args) -> int:
  import signal

  from paced_jax.config import load_config
  from paced_jax.train import Interrupted, TrainingDiverged, train

  from paced_jax.models.resolve import shape_overrides

  cfg = load_config(args.config, args.overrides)
  if args.mode == "sft":  # cross-entropy whatever divergence the (distillation) config names
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, mode="sft",
                                                            divergence="auto"))
  try:
    # The init paths decide the architectures; a --set shape that contradicts one is an error.
    last = train(cfg, args.workdir, progress=not args.quiet,
                 explicit=shape_overrides(args.overrides))
  except TrainingDiverged as e:
    print(f"paced: error: {e}", file=sys.stderr)
    return 1
  except Interrupted as e:
    print(f"paced: {e}", file=sys.stderr)
    return 128 + e.signum
  from paced_jax.distributed import is_main

  if last.get("finished"):  # a rerun of a finished run: nothing written, the summary again
    if is_main():
      print(f"{args.workdir}: finished at step {last['step']} (train.steps="
            f"{cfg.train.steps}); nothing to do: raise train.steps or train.max_flops to train "
            "on, or use a new --workdir")
      _print_summary(args.workdir, cfg, plots=False)
    return 0
  if last.get("stopped_by") is not None:  # saved at a step boundary; the line was logged
    # SIGTERM is a preemption the scheduler asked for (exit 0); Ctrl-C is the user's (130).
    return 130 if last["stopped_by"] == signal.SIGINT else 0
  if is_main():  # one report per run, not one per host
    print(f"done: step {last.get('step')} loss {last.get('loss', float('nan')):.4f}; "
          f"run directory {args.workdir}")
    _print_summary(args.workdir, cfg)
  return 0


def _print_summary(workdir, cfg, plots: bool = True) -> None:
  """The before/after accuracy table and (`plots`) the report plots, when the run evaluated.
  The run has finished by now: a summary or plot that cannot be read or written is one warning
  line, never a failure of the run."""
  import logging

  try:
    _summary(workdir, cfg, plots)
  except Exception as e:  # noqa: BLE001 -- a report must not fail a finished run
    from paced_jax.config import ConfigError

    why = str(e) if isinstance(e, ConfigError) else (
        f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
    logging.getLogger("paced_jax.report").warning(
        "the end-of-run report was not completed: %s; the run itself finished: run "
        "`paced report %s` once that is fixed", why, workdir)


def _summary(workdir, cfg, plots: bool) -> None:
  import json
  from pathlib import Path

  from paced_jax.evaluate import eval_off_reason, summary_table
  from paced_jax.report import make_report

  wd = Path(workdir)
  if (wd / "eval_before.json").exists() and (wd / "eval_after.json").exists():
    print(summary_table(json.loads((wd / "eval_before.json").read_text()),
                        json.loads((wd / "eval_after.json").read_text())))
  elif eval_off_reason(cfg):
    print(f"evaluation: off ({eval_off_reason(cfg)})")
  for p in make_report(wd) if plots else ():
    print(f"wrote {p}")


def cmd_estimate(args) -> int:
  from pathlib import Path

  import jax

  from paced_jax.config import ConfigError, load_config
  from paced_jax.data.sources import load_pool
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.estimate import plot_frontier
  from paced_jax.estimate import estimate_for_config
  from paced_jax.rollouts import make_engine
  from paced_jax.frontier import PassRateTable, frontier_stats, frontier_weights, sampling_probs
  from paced_jax.sharding import make_mesh
  from paced_jax.distributed import is_main
  from paced_jax.verify import verifier_from_config

  from paced_jax.models.io import check_model_path, load_model_checked
  from paced_jax.preflight import check_data_files

  cfg = load_config(args.config, args.overrides)
  path = args.checkpoint or cfg.train.init_student
  if not path:
    raise ConfigError("no student to estimate: pass --checkpoint PATH or set "
                      "train.init_student")
  flag = "--checkpoint" if args.checkpoint else "train.init_student="
  check_model_path(path, flag)
  check_data_files(cfg.data)
  out = Path(args.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--out {args.out!r} cannot be created ({e.strerror})") from None
  mesh = make_mesh(cfg.mesh)
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  # The checkpoint defines the shape; the config the dtypes, as in `paced train` (bf16 weights
  # computed in float32 score differently from bf16 compute).
  model, _ = load_model_checked(path, flag, mesh=mesh, dtype=cfg.model.dtype,
                                param_dtype=cfg.model.param_dtype)
  if tok.vocab_size > model.cfg.vocab_size:
    raise ConfigError(f"checkpoint {path!r} has vocab_size={model.cfg.vocab_size} but the "
                      f"tokenizer {cfg.data.tokenizer!r} has {tok.vocab_size} ids")
  verifier = verifier_from_config(cfg.paced)
  if cfg.generate.source:  # a generated run: the first round's probes of every cell
    from paced_jax.synthesis import ScoredVerifier, make_generator

    gen = make_generator(cfg.generate)
    problems = [p for c in gen.cells() for p in gen.make(c, cfg.seed, 0,
                                                          cfg.generate.probes_per_cell)]
    verifier = ScoredVerifier(gen, verifier)
  else:
    source = load_pool(cfg.data, args.split, seed=cfg.seed)
    problems = [source[i] for i in range(len(source))]
  est = estimate_for_config(make_engine(cfg, model, mesh), problems, tok, verifier, cfg, mesh,
                            rollouts=cfg.paced.rollouts, rng=jax.random.key(cfg.seed),
                            progress=not args.quiet and is_main(),
                            screen=cfg.paced.screen_rollouts,
                            adaptive=cfg.paced.adaptive_rollouts)
  if not is_main():  # every process sampled its share; one writes
    return 0
  table = PassRateTable([p.id for p in problems])
  table.update([p.id for p in problems], est.successes, est.trials, step=0)
  table.to_jsonl(out / "passrates.jsonl")
  w = frontier_weights(est.successes, est.trials, cfg.paced)
  if cfg.generate.source:  # the weight that decides a round is the cell's, on pooled counts
    w = _cell_weights(problems, est.successes, est.trials, cfg.paced)
  plot_frontier(out / "passrates.png", table.pass_rates(), w, trials=table.counts()[1])
  stats = frontier_stats(est.successes, est.trials, sampling_probs(w, cfg.paced.eps))
  print(pass_rate_table(problems, est.successes, est.trials, w))
  print(f"{len(problems)} problems x {cfg.paced.rollouts} rollouts: mean p {stats.mean_p:.3f}, "
        f"p=0 {stats.frac_p0:.1%}, p=1 {stats.frac_p1:.1%}, weight ESS {stats.ess:.0f}; "
        f"wrote {out}/passrates.jsonl and passrates.png")
  return 0


def _cell_weights(problems, successes, trials, paced_cfg):
  """Each problem's share of its cell's frontier weight (weights on the cell's pooled counts,
  split evenly over the cell's problems): the column sums then read as the round's cell mass."""
  import numpy as np

  from paced_jax.frontier import frontier_weights

  cells = [p.metadata["cell"] for p in problems]
  names = list(dict.fromkeys(cells))
  at = np.asarray([names.index(c) for c in cells])
  s, n = np.bincount(at, successes, len(names)), np.bincount(at, trials, len(names))
  w = frontier_weights(s, n, paced_cfg)
  return w[at] / np.bincount(at, minlength=len(names))[at]


def pass_rate_table(problems, successes, trials, weights) -> str:
  """Per difficulty (and overall): problems, mean p, shares at p = 0 and p = 1, the share of
  the frontier weight."""
  import numpy as np

  p = successes / np.maximum(trials, 1)
  w = np.asarray(weights, np.float64)
  levels = np.asarray([-1 if q.difficulty is None else q.difficulty for q in problems])
  groups = [(f"level {v}", levels == v) for v in np.unique(levels[levels >= 0])]
  cells = [q.metadata.get("cell") for q in problems]
  if all(cells):  # generated problems: one line per cell (task/level) too
    cells = np.asarray(cells, object)
    groups += [(str(c), cells == c) for c in dict.fromkeys(cells)]
  lines = [f"{'problems':<12}{'n':>6}{'mean p':>9}{'p=0':>8}{'p=1':>8}{'weight':>9}"]
  for name, sel in groups + [("all", np.ones(len(p), bool))]:
    lines.append(f"{name:<12}{int(sel.sum()):>6}{p[sel].mean():>9.3f}{(p[sel] == 0).mean():>8.1%}"
                 f"{(p[sel] == 1).mean():>8.1%}{w[sel].sum() / max(w.sum(), 1e-12):>9.1%}")
  return "\n".join(lines)


def cmd_eval(args) -> int:
  import json

  from paced_jax.config import load_config
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.evaluate import evaluate, load_eval_sets, summary_table
  from paced_jax.models.io import check_model_path, load_model_checked
  from paced_jax.preflight import check_data_files
  from paced_jax.sharding import make_mesh
  from paced_jax.distributed import is_main
  from paced_jax.verify import verifier_from_config

  cfg = load_config(args.config, args.overrides)
  baseline = cfg.train.init_student if args.baseline is None else args.baseline
  models = [(name, flag, path) for name, flag, path in (
      ("baseline", "--baseline" if args.baseline else "train.init_student=", baseline),
      ("student", "--checkpoint", args.checkpoint)) if path and path != "none"]
  for _, flag, path in models:  # cheap checks before any model is built or evaluated
    check_model_path(path, flag)
  check_data_files(cfg.data)
  mesh = make_mesh(cfg.mesh)
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  verifier = verifier_from_config(cfg.paced)
  from paced_jax.config import ConfigError
  from paced_jax.data.sources import load_pool
  from paced_jax.evaluate import eval_off_reason

  if eval_off_reason(cfg):
    raise ConfigError(f"nothing to evaluate: {eval_off_reason(cfg)}")
  pool = load_pool(cfg.data, "train", seed=cfg.seed)
  sets = load_eval_sets(cfg, train=[pool[i] for i in range(len(pool))])
  results = {}
  for name, flag, path in models:
    model, _ = load_model_checked(path, flag, mesh=mesh, dtype=cfg.model.dtype,
                                  param_dtype=cfg.model.param_dtype)  # as `paced train` does
    results[name] = evaluate(model, sets, tok, verifier, cfg, mesh,
                             progress=not args.quiet and is_main())
  if not is_main():
    return 0
  if "baseline" in results:
    print(summary_table(results["baseline"], results["student"]))
  else:
    print(json.dumps(results["student"], indent=1))
  return 0


def _device_memory() -> int | None:
  """Bytes one device can allocate (`memory_stats()["bytes_limit"]`), None when unreported."""
  import jax

  return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")


def cmd_smoke(args) -> int:
  """Checks what the config names, cheaply first: paths, tokenizer and data files; the models
  the init paths hold (their directories decide the architectures); the planner's per-device
  estimate against the device memory (refused in one line when it will not fit); then loads
  (or randomly initialises) each model on the mesh and compares a forward pass with the
  cached decode."""
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from paced_jax.config import ConfigError, load_config
  from paced_jax.models import Decoder, param_count
  from paced_jax.models.io import load_model_checked
  from paced_jax.models.resolve import resolve_models, shape_overrides
  from paced_jax.plan import GiB, estimate
  from paced_jax.preflight import check_run
  from paced_jax.sharding import make_mesh, shard_init

  if args.batch < 1 or args.seq < 2:
    raise ConfigError(f"paced smoke needs --batch >= 1 and --seq >= 2 (got --batch {args.batch}, "
                      f"--seq {args.seq})")
  cfg = load_config(args.config, args.overrides)
  check_run(cfg)
  cfg = resolve_models(cfg, shape_overrides(args.overrides))
  mesh = make_mesh(cfg.mesh)
  print(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
  memory = _device_memory()
  if memory:
    e = estimate(cfg, dict(mesh.shape), memory)
    print(f"plan: {e.total / GiB:.2f} GiB per device of {memory / GiB:.2f} GiB")
    if not e.fits:
      top = sorted(e.rows, key=lambda r: -r[2])[:3]
      raise ConfigError(
          f"the run needs about {e.total / GiB:.2f} GiB per device on mesh {dict(mesh.shape)} "
          f"but a device has {memory / GiB:.2f} GiB (largest: " + ", ".join(
              f"{c} {b / GiB:.2f} GiB" for _, c, b in top) + "); see `paced plan "
          f"{args.config}` for a mesh that fits, or lower data.batch_size / set model.remat=full")
  roles = [("student", cfg.model, cfg.train.init_student, "train.init_student=")]
  if cfg.teacher is not None:
    roles.append(("teacher", cfg.teacher, cfg.train.init_teacher, "train.init_teacher="))
  for role, mcfg, path, flag in roles:
    t0 = time.perf_counter()
    if path:
      model, _ = load_model_checked(path, flag, mesh=mesh, dtype=mcfg.dtype,
                                    param_dtype=mcfg.param_dtype)
    else:
      model = shard_init(lambda rngs, c=mcfg: Decoder(c, rngs=rngs), mesh, seed=cfg.seed)
    B, T = args.batch, min(args.seq, mcfg.max_seq_len)
    tokens = jax.random.randint(jax.random.key(cfg.seed), (B, T), 0, mcfg.vocab_size)
    with jax.set_mesh(mesh):
      logits = nnx.jit(lambda m, t: m(t))(model, tokens)
      half = T // 2
      step = nnx.jit(lambda m, t, c: m.extend(t, c))
      _, cache = step(model, tokens[:, :half], model.init_cache(B, T))
      cached = []
      for i in range(half, T):
        out, cache = step(model, tokens[:, i:i + 1], cache)
        cached.append(out[:, 0])
    # cached[j] is the prediction after token half + j, i.e. full logits at position half + j.
    diff = float(jnp.abs(jnp.stack(cached, 1) - logits[:, half:]).max())
    ok = bool(np.isfinite(np.asarray(logits)).all())
    where = f"loaded from {path}" if path else "random init"
    print(f"{role}: {mcfg.arch} {param_count(mcfg):,} params ({mcfg.num_layers} layers, hidden "
          f"{mcfg.hidden}, vocab {mcfg.vocab_size}), {where}, logits {tuple(logits.shape)} "
          f"finite={ok}, cached-vs-full max |diff| {diff:.2e}, {time.perf_counter() - t0:.1f}s")
    if not ok:
      return 1
  return 0


def cmd_teacher_logits(args) -> int:
  """The teacher's top-k log-probabilities (and the log of the rest's mass) at every scored
  position of every reference response of the pool, as training packs them: the same pool,
  chat template, truncation and length buckets (data/packing.py build_pool), the same scored
  positions (losses.scored_positions over the first min(data.max_response_len, T)), the same
  vocabulary cut (loss.vocab_limit) and temperature (loss.temperature). Rows go through the
  teacher in global batches of data.batch_size on the config's mesh, sorted by length; every
  process writes its rows' records (teacher_logits.TeacherLogitsWriter, keyed by
  teacher_logits.record_key), process 0 the manifest. A rerun skips what is stored."""
  import os
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from tqdm.auto import tqdm

  from paced_jax import divergences, losses
  from paced_jax import flops as flops_lib
  from paced_jax import teacher_logits as tl
  from paced_jax.build import load_or_init
  from paced_jax.config import ConfigError, load_config, pick_bucket, to_dict
  from paced_jax.data.packing import build_pool
  from paced_jax.data.pipeline import to_global_batch
  from paced_jax.data.sources import load_pool
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.distributed import is_main, to_host
  from paced_jax.models.resolve import resolve_models, shape_overrides
  from paced_jax.preflight import check_run
  from paced_jax.sharding import constrain, make_mesh
  from paced_jax.step import resolve_loss_chunk

  cfg = load_config(args.config, args.overrides)
  # The training config may name these logits already (loss.teacher=offline:DIR): they are
  # made with the teacher it configures.
  cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, teacher=""))
  k = cfg.loss.offline_k if args.k is None else args.k
  if k < 1:
    raise ConfigError(f"--k {k} must be >= 1 (token ids kept per scored position)")
  if not divergences.needs_teacher(cfg.loss.mode) or cfg.teacher is None:
    raise ConfigError(f"paced teacher-logits runs the config's teacher, and loss.mode="
                      f"{cfg.loss.mode} with {'a' if cfg.teacher else 'no'} teacher section has "
                      "none to run; set the config's teacher (and train.init_teacher) and "
                      "loss.mode=distill")
  if cfg.data.reference != "dataset" or cfg.generate.source:
    raise ConfigError("paced teacher-logits stores the teacher's logits on a fixed pool's "
                      "dataset references; set data.reference=dataset and generate.source=''")
  check_run(cfg)
  cfg = resolve_models(cfg, shape_overrides(args.overrides))
  if not cfg.loss.vocab_limit and cfg.teacher.vocab_size != cfg.model.vocab_size:
    raise ConfigError(f"teacher vocab_size={cfg.teacher.vocab_size} differs from student "
                      f"vocab_size={cfg.model.vocab_size}: distillation compares distributions "
                      "over one vocabulary")
  V = cfg.loss.vocab_limit or cfg.teacher.vocab_size
  if k > V:
    raise ConfigError(f"--k {k} exceeds the teacher's vocabulary of {V} ids (loss.vocab_limit, "
                      "else its vocab_size); use at most that")
  try:
    os.makedirs(args.out, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--out {args.out!r} cannot be created ({e.strerror})") from None
  P, me = jax.process_count(), jax.process_index()
  B = cfg.data.batch_size
  if B % P:
    raise ConfigError(f"data.batch_size={B} does not divide over {P} processes; use a "
                      f"multiple of {P}")
  mesh = make_mesh(cfg.mesh)
  cfg = resolve_loss_chunk(cfg, mesh)  # logits are taken in chunks of this many positions
  tok = load_tokenizer(cfg.data.tokenizer, cfg.data.chat_template_kwargs)
  if tok.vocab_size > cfg.teacher.vocab_size:
    raise ConfigError(f"tokenizer {cfg.data.tokenizer!r} has {tok.vocab_size} ids but the "
                      f"teacher's vocab_size is {cfg.teacher.vocab_size}")
  source = load_pool(cfg.data, "train", seed=cfg.seed)
  pool = build_pool(source, tok, cfg.data, None, prompts_only=False)  # as the pipeline does
  keys = pool.reference_keys()
  path = cfg.train.init_teacher
  meta = {"k": k, **tl.token_meta(cfg),
          "teacher": {"path": path, "hash": tl.files_hash(path) if path else None,
                      "model": to_dict(cfg.teacher), "seed": None if path else cfg.seed + 1}}

  def barrier(name):
    if P > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(name)

  def writer_for(process):
    return tl.TeacherLogitsWriter(args.out, meta, process=process)

  writer = writer_for(0) if me == 0 else None  # process 0 writes meta.json (or checks it)
  barrier("paced teacher-logits: meta")
  writer = writer or writer_for(me)
  refs = [(int(i), int(r)) for i in np.nonzero(pool.usable)[0]
          for r in range(int(pool.ref_offsets[i]), int(pool.ref_offsets[i + 1]))]
  todo = [(i, r) for i, r in refs if keys[r] not in writer.done]
  lengths = pool.row_lengths(np.asarray([i for i, _ in todo], np.int64),
                            np.asarray([r for _, r in todo], np.int64))
  todo = [todo[j] for j in np.argsort(lengths, kind="stable")]  # similar lengths batch together

  teacher = load_or_init(path, cfg.teacher, mesh, cfg.seed + 1, "teacher")  # as `paced train`
  tdef, tparams = nnx.split(teacher)
  del teacher
  limit, chunk, temperature = cfg.loss.vocab_limit, cfg.loss.chunk_size, cfg.loss.temperature

  @jax.jit
  def forward(params, batch):
    """(ids [B, R, k], logp [B, R, k], log_tail [B, R]) at the step's scored positions."""
    model = nnx.merge(tdef, params)
    R = min(cfg.data.max_response_len, batch["tokens"].shape[1])
    h = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"],
                     lambda x, axes: constrain(x, mesh, axes))
    idx, valid = losses.scored_positions(batch["loss_mask"], R)
    h = jnp.where(valid[..., None], losses.gather_positions(h, idx), jnp.zeros((), h.dtype))
    w = model.unembedding()
    w = w[:, :limit] if limit else w  # the step's vocabulary cut
    C = chunk if 0 < chunk < R else R
    n = -(-R // C)
    h = jnp.pad(h, ((0, 0), (0, n * C - R), (0, 0)))
    rows = h.shape[0]

    def body(c, carry):  # one chunk's [B, C, V] logits at a time, as the fused loss
      hc = jax.lax.dynamic_slice_in_dim(h, c * C, C, axis=1)
      z = jnp.einsum("BCD,DV->BCV", hc, w, preferred_element_type=jnp.float32)
      return tuple(jax.lax.dynamic_update_slice_in_dim(a, x, c * C, axis=1)
                   for a, x in zip(carry, tl.topk_from_logits(z, k, temperature)))

    init = (jnp.zeros((rows, n * C, k), jnp.int32), jnp.zeros((rows, n * C, k), jnp.float32),
            jnp.zeros((rows, n * C), jnp.float32))
    return tuple(a[:, :R] for a in jax.lax.fori_loop(0, n, body, init))

  t_cfg, L = cfg.teacher, B // P
  bar = tqdm(total=len(todo), desc="teacher logits", unit="row", dynamic_ncols=True,
             disable=args.quiet or not is_main())
  t0, tokens, positions = time.perf_counter(), 0, 0
  try:
    for start in range(0, len(todo), B):
      chunk_rows = todo[start:start + B]
      real = len(chunk_rows)
      chunk_rows = chunk_rows + [chunk_rows[-1]] * (B - real)  # the last batch: padded rows
      gidx = np.asarray([i for i, _ in chunk_rows], np.int64)
      gref = np.asarray([r for _, r in chunk_rows], np.int64)
      T = pick_bucket(int(pool.row_lengths(gidx, gref).max()), cfg.data.length_buckets)
      R = min(cfg.data.max_response_len, T)
      mine = slice(me * L, (me + 1) * L)
      local = pool.pack(gidx[mine], gref[mine], T, tok.pad_id)
      batch = to_global_batch({key: local[key] for key in ("tokens", "positions", "segment_ids",
                                                           "loss_mask")}, mesh, P)
      with jax.set_mesh(mesh):
        out = forward(tparams, batch)
      ids, logp, tail = (to_host(a) for a in out)  # every process: its rows are among them
      C = chunk if 0 < chunk < R else R
      # flops.py: the teacher forward of every row of the bucket, logits at whole chunks.
      batch_flops = B * T * (flops_lib.body_flops_per_token(t_cfg)
                             + flops_lib.attention_flops_per_token(t_cfg, T)) + (
          B * -(-R // C) * C * flops_lib.unembed_flops(t_cfg))
      for g in range(me * L, min((me + 1) * L, real)):
        i, r = chunk_rows[g]
        n = len(pool.response(r))
        writer.add(keys[r], ids[g, :n], logp[g, :n], tail[g, :n],
                   tokens=pool.row_tokens(i, r), flops=batch_flops / real)
      tokens += int(pool.row_lengths(gidx[:real], gref[:real]).sum())
      positions += int(sum(len(pool.response(r)) for _, r in chunk_rows[:real]))
      bar.update(real)
    writer.close(finalize=False)
  except OSError as e:
    raise ConfigError(f"writing {e.filename or args.out} failed ({e.strerror}); free space on "
                      "(or repair) that filesystem and run the same command to resume: the "
                      f"shards already committed in {args.out} are kept") from None
  finally:
    bar.close()
  barrier("paced teacher-logits: shards")
  if not is_main():
    return 0
  manifest = tl.write_manifest(args.out)
  dt = time.perf_counter() - t0
  print(f"teacher logits: {len(todo)} reference(s) written ({positions:,} scored positions, "
        f"{tokens:,} tokens) in {dt:.1f}s, {tokens / max(dt, 1e-9):,.0f} tokens/s; "
        f"{len(refs) - len(todo)} already stored. {args.out} holds {manifest['records']} "
        f"(k={k}, {manifest['bytes'] / 2**20:.1f} MiB; teacher forward "
        f"{manifest['compute']['offline_teacher_flops']:.3g} FLOPs): train on them with "
        f"--set loss.teacher=offline:{args.out}" + ("" if k == cfg.loss.offline_k else
                                                     f" --set loss.offline_k={k}"))
  return 0
