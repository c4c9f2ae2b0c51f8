"""The train state, the optimizer, and ONE pure jitted distillation step.

`train_step(state, teacher_params, batch) -> (state, metrics)` runs the teacher forward (under
stop_gradient), the student forward and backward, the divergence over response tokens and the
optax update in a single XLA program, with explicit in/out shardings and the state donated. The
teacher's parameters are an argument: frozen, not in the optimizer, never checkpointed.

Batch (dict of global arrays, rows sharded over the `batch` logical axis):
  tokens, positions, loss_mask [B, T]; optional segment_ids [B, T]; weights [B] (frontier
  weights, used in loss-weight mode); for self-distillation optional teacher_tokens,
  teacher_positions, teacher_loss_mask [B, T'] (the teacher sees a privileged prompt; the k-th
  scored position of both sequences is the same response token); for an offline teacher
  (loss.teacher=offline:DIR, teacher_params None) teacher_ids [B, R, k] int, teacher_logp
  [B, R, k] (any float dtype), teacher_log_tail [B, R]: its stored top-k log-probabilities at
  the first R = min(data.max_response_len, T) scored positions (data/pipeline.py).
loss_mask[b, t] = 1 iff the logits at t are scored, i.e. tokens[b, t + 1] is a response token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from paced_jax import divergences, losses
from paced_jax.fused_loss import fused_divergence_loss, fused_offline_forward_kl
from paced_jax.memory import auto_loss_chunk
from paced_jax.config import Config, ConfigError, TrainConfig
from paced_jax.sharding import LOGICAL_RULES, batch_shards, constrain, logical_sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any  # nnx.State of the student's parameters
  opt_state: Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay and global-norm clipping; no decay on vectors
  (norm scales, biases)."""
  schedule = functools.partial(learning_rate, cfg)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                  mask=decay_mask))


def learning_rate(cfg: TrainConfig, step):
  """Linear warmup over `warmup_steps` steps that starts at lr / warmup_steps (step 0 already
  learns: a zero rate would move the Adam moments and not the parameters), reaching lr at step
  warmup_steps - 1; then flat (schedule=constant) or cosine decay to lr/10 at `steps`."""
  W = cfg.warmup_steps
  step = jnp.asarray(step, jnp.float32)
  warm = cfg.lr * jnp.minimum(1.0, (step + 1.0) / max(W, 1))
  if cfg.schedule == "constant":
    after = jnp.float32(cfg.lr)
  else:
    end, span = cfg.lr * 0.1, max(cfg.steps - W, 1)
    frac = jnp.clip((step - W) / span, 0.0, 1.0)
    after = end + (cfg.lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return jnp.where(step < W, warm, after)


def init_train_state(student: nnx.Module, tx: optax.GradientTransformation,
                     mesh: Mesh) -> TrainState:
  """Optimizer moments (any part of the optimizer state shaped like the parameters: AdamW's mu
  and nu) are sharded exactly like their parameters; everything else (counts) is replicated.
  `zeros_like` inside a plain jit would not inherit the shardings: moments would be copied on
  every device, 2x the parameter bytes per device."""
  params = nnx.state(student, nnx.Param)
  replicated = NamedSharding(mesh, P())
  param_def = jax.tree.structure(params)
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  like_params = lambda sub: jax.tree.structure(sub) == param_def
  out_sh = jax.tree.map(
      lambda sub: param_sh if like_params(sub) else jax.tree.map(lambda _: replicated, sub),
      jax.eval_shape(tx.init, params), is_leaf=like_params)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init, out_shardings=out_sh)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
  return TrainState(step=step, params=params, opt_state=opt_state)


def divergence_at(cfg: Config, step):
  """The divergence of `step`: its name when the run has one (host-known, so one branch is
  compiled and teacher top-k applies), else (two_stage) the traced index into
  divergences.NAMES, so that one compiled step switches mid-run. The loop's host-side twin is
  divergences.stage_of."""
  fixed = divergences.fixed_divergence(cfg)
  if fixed is not None:
    return fixed
  switch = divergences.switch_step(cfg)
  first, second = (divergences.index(divergences.stage_of(cfg, s)) for s in (0, switch))
  return jnp.where(step < switch, first, second).astype(jnp.int32)


def _real_vocab(w_DV, vocab_limit: int):
  """The unembedding's columns of real token ids: padding rows (ids >= loss.vocab_limit) are cut
  from both models' logits, so softmaxes and divergences run over the tokenizer's ids only."""
  return w_DV[:, :vocab_limit] if vocab_limit else w_DV


def loss_fn(params, teacher_params, batch, kind, *, cfg: Config, student_def, teacher_def,
            mesh: Mesh | None = None):
  student = nnx.merge(student_def, params)
  R = min(cfg.data.max_response_len, batch["tokens"].shape[1])
  idx_s, valid = losses.scored_positions(batch["loss_mask"], R)
  # Activations keep their rows over the batch mesh axes (forward and backward).
  rows = (lambda x, axes: constrain(x, mesh, axes)) if mesh is not None else None
  h_s = student.hidden(batch["tokens"], batch["positions"], batch.get("segment_ids"), rows)
  h_s_BRD = losses.gather_positions(h_s, idx_s)
  targets = losses.gather_positions(batch["tokens"], jnp.minimum(idx_s + 1,
                                                                 batch["tokens"].shape[1] - 1))
  h_t_BRD = w_t = None
  if teacher_params is not None:
    teacher = nnx.merge(teacher_def, teacher_params)
    t_tokens = batch.get("teacher_tokens", batch["tokens"])
    t_pos = batch.get("teacher_positions", batch["positions"])
    t_seg = None if "teacher_tokens" in batch else batch.get("segment_ids")
    idx_t = idx_s
    if "teacher_loss_mask" in batch:
      idx_t, _ = losses.scored_positions(batch["teacher_loss_mask"], R)
    h_t_BRD = jax.lax.stop_gradient(
        losses.gather_positions(teacher.hidden(t_tokens, t_pos, t_seg, rows), idx_t))
    w_t = jax.lax.stop_gradient(_real_vocab(teacher.unembedding(), cfg.loss.vocab_limit))
  lc = cfg.loss
  opts = dict(targets_BR=targets, temperature=lc.temperature, jsd_beta=lc.jsd_beta,
              akl_mu=lc.akl_mu, teacher_top_k=lc.teacher_top_k)
  counts = jnp.sum(valid.astype(jnp.float32), axis=-1)
  weights = batch["weights"] if cfg.paced.use == "loss_weight" else None
  coef = losses.normalise_coefs(counts, weights, lc.normalise)
  w_s = _real_vocab(student.unembedding(), lc.vocab_limit)
  row_sharding = (logical_sharding(mesh, ("batch",), h_s_BRD.shape[:1])
                  if mesh is not None else None)
  if "teacher_ids" in batch:  # offline teacher: its stored top-k log-probabilities
    ids, logp_t, tail = batch["teacher_ids"], batch["teacher_logp"], batch["teacher_log_tail"]
    if lc.chunk_size > 0:
      loss, sums = fused_offline_forward_kl(h_s_BRD, w_s, ids, logp_t, tail, valid, coef,
                                            chunk=lc.chunk_size, temperature=lc.temperature,
                                            row_sharding=row_sharding)
    else:  # the unchunked reference: [B, R, V] logits, plain autodiff
      keep = valid[..., None]
      # Padded positions score ids 0..k-1 with no tail (as the fused loss): any stored padding
      # then keeps NaN and out-of-range ids out of the (masked) loss and its gradient.
      K = ids.shape[-1]
      ids = jnp.where(keep, ids.astype(jnp.int32), jnp.arange(K, dtype=jnp.int32) % w_s.shape[1])
      logp_t = jnp.where(keep, logp_t.astype(jnp.float32), -jnp.log(K))
      tail = jnp.where(valid, tail.astype(jnp.float32), -jnp.inf)
      h = jnp.where(keep, h_s_BRD, jnp.zeros((), h_s_BRD.dtype))
      logits = jnp.einsum("BRD,DV->BRV", h, w_s, preferred_element_type=jnp.float32)
      tok = losses.offline_forward_kl(ids, logp_t, tail, logits, lc.temperature)
      sums, _ = losses.masked_sums(tok, valid)
      loss = jnp.sum(coef * sums)
  elif lc.chunk_size > 0:  # fused: chunked logits, gradients in the same pass, no recompute
    loss, sums = fused_divergence_loss(
        h_t_BRD, w_t, h_s_BRD, w_s, valid, coef, kind, chunk=lc.chunk_size,
        # The rows' sharding as the model lays out its activations (a mesh axis that does not
        # divide B is dropped): a mismatch makes XLA replicate the hidden-state gradient.
        row_sharding=row_sharding, **opts)
  else:  # the unchunked reference: [B, R, V] logits, plain autodiff
    sums, _ = losses.linear_divergence(h_t_BRD, w_t, h_s_BRD, w_s, valid, kind, **opts)
    loss = jnp.sum(coef * sums)
  return loss, (sums, counts)


def train_step(state: TrainState, teacher_params, batch, *, cfg: Config, student_def,
               teacher_def, tx, mesh: Mesh | None = None) -> tuple[TrainState, dict]:
  kind = divergence_at(cfg, state.step)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, cfg=cfg, student_def=student_def, teacher_def=teacher_def,
                        mesh=mesh),
      has_aux=True)
  (loss, (sums, counts)), grads = grad_fn(state.params, teacher_params, batch, kind)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if cfg.paced.use == "loss_weight":
    # A batch whose loss weights are all zero carries no signal: keep the parameters AND the
    # Adam moments (an update on zero gradients would still move both through the moments).
    live = jnp.sum(batch["weights"].astype(jnp.float32) * counts) > 0
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  metrics = {
      "loss": loss,
      "grad_norm": optax.tree_utils.tree_norm(grads),
      # Checked on the host with the loss: a finite loss can still leave NaN parameters.
      "param_norm": optax.tree_utils.tree_norm(params),
      "lr": learning_rate(cfg.train, state.step),
      "tokens": jnp.sum(counts),
      # The index into divergences.NAMES (a number, as in two_stage's traced switch).
      "divergence": jnp.int32(divergences.index(kind)) if isinstance(kind, str) else kind,
      "example_loss": sums / jnp.maximum(counts, 1.0),  # [B], for per-p-bucket losses
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over the `batch` logical axis; every batch array shares this leading-dim spec."""
  return NamedSharding(mesh, P(LOGICAL_RULES["batch"]))


def resolve_loss_chunk(cfg: Config, mesh: Mesh) -> Config:
  """The config with loss.chunk_size=-1 (auto) replaced by what fits this mesh's devices
  (memory.auto_loss_chunk, the planner's count); any other value is returned unchanged."""
  if cfg.loss.chunk_size >= 0:
    return cfg
  stats = mesh.devices.flat[0].memory_stats() or {}
  chunk = auto_loss_chunk(cfg, dict(mesh.shape), stats.get("bytes_limit"))
  return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, chunk_size=chunk))


def compile_train_step(cfg: Config, mesh: Mesh, state: TrainState, student_def, teacher_params,
                       teacher_def, tx):
  """`jax.jit(train_step)` with explicit shardings and the state donated (updated in place)."""
  if cfg.loss.chunk_size < 0:  # auto (a run's setup has resolved it already)
    cfg = resolve_loss_chunk(cfg, mesh)
  rows = batch_shards(mesh)
  if cfg.data.batch_size % rows:
    raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be a multiple of "
                      f"mesh data*fsdp={rows} (rows are split over those axes)")
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  state_sh = shardings(state)
  step = functools.partial(train_step, cfg=cfg, student_def=student_def, teacher_def=teacher_def,
                           mesh=mesh,
                           tx=tx)
  return jax.jit(step, in_shardings=(state_sh, shardings(teacher_params), batch_sharding(mesh)),
                 out_shardings=(state_sh, None), donate_argnums=0)
