"""The optimizer and several train steps against an independent AdamW written in numpy: linear
warmup from lr / W, cosine to lr / 10 or constant, global-norm clipping, b1/b2, bias correction,
decoupled weight decay on matrices only."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax.config import Config, DataConfig, LossConfig, MeshConfig, TrainConfig
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.step import (compile_train_step, init_train_state, learning_rate,
                            make_optimizer)


def lr_ref(c: TrainConfig, s: int) -> float:
  W = c.warmup_steps
  if s < W:
    return c.lr * (s + 1) / W
  if c.schedule == "constant":
    return c.lr
  D, end = max(c.steps - W, 1), c.lr / 10
  return end + (c.lr - end) * 0.5 * (1 + math.cos(math.pi * min(s - W, D) / D))


class AdamW:
  """float64 AdamW over a list of arrays; returns the clipping factor it applied."""

  def __init__(self, c: TrainConfig, params):
    self.c, self.t = c, 0
    self.m = [np.zeros(p.shape) for p in params]
    self.v = [np.zeros(p.shape) for p in params]

  def step(self, params, grads):
    c = self.c
    g = [np.asarray(x, np.float64) for x in grads]
    norm = math.sqrt(sum(float(np.sum(x * x)) for x in g))
    scale = min(1.0, c.grad_clip / norm) if c.grad_clip > 0 else 1.0
    lr, out = lr_ref(c, self.t), []
    self.t += 1
    for i, (p, gi) in enumerate(zip(params, g)):
      gi = gi * scale
      self.m[i] = c.b1 * self.m[i] + (1 - c.b1) * gi
      self.v[i] = c.b2 * self.v[i] + (1 - c.b2) * gi * gi
      mhat, vhat = self.m[i] / (1 - c.b1 ** self.t), self.v[i] / (1 - c.b2 ** self.t)
      u = mhat / (np.sqrt(vhat) + 1e-8)
      if p.ndim >= 2:
        u = u + c.weight_decay * p
      out.append(p - lr * u)
    return out, scale


SCHEDULES = [
    TrainConfig(steps=5, lr=0.1, warmup_steps=2, weight_decay=0.3, b1=0.8, b2=0.9, grad_clip=1.0),
    TrainConfig(steps=5, lr=0.05, warmup_steps=3, weight_decay=0.1, b1=0.9, b2=0.99,
                grad_clip=0.0, schedule="constant"),
    TrainConfig(steps=4, lr=0.1, warmup_steps=0, weight_decay=0.2, b1=0.5, b2=0.7, grad_clip=2.0),
]


@pytest.mark.parametrize("c", SCHEDULES)
def test_learning_rate_schedule(c):
  got = [float(learning_rate(c, s)) for s in range(10)]
  np.testing.assert_allclose(got, [lr_ref(c, s) for s in range(10)], rtol=1e-6)
  assert got[0] > 0  # step 0 learns


@pytest.mark.parametrize("c", SCHEDULES)
def test_make_optimizer_matches_numpy_adamw(c):
  rng = np.random.default_rng(0)
  shapes = {"w": (3, 4), "b": (4,), "e": (2, 3, 2), "s": (1,)}
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  tx = make_optimizer(c)
  keys = sorted(params)
  ref = AdamW(c, [params[k].astype(np.float64) for k in keys])
  ref_p = [params[k].astype(np.float64) for k in keys]
  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  update = jax.jit(tx.update)
  # Gradient norms far above and below the clip: clipping changes the moments' history.
  scales, clipped = [30.0, 0.01, 3.0, 0.2, 1.0, 10.0, 0.05, 2.0], []
  for t, sc in enumerate(scales):
    g = {k: (sc * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    upd, state = update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, upd)
    ref_p, scale = ref.step(ref_p, [g[k] for k in keys])
    clipped.append(scale < 1)
    for k, want in zip(keys, ref_p):
      np.testing.assert_allclose(np.asarray(p[k]), want, rtol=2e-5, atol=2e-6, err_msg=(t, k))
  assert any(clipped) == (c.grad_clip > 0)


# ----------------------------------------------------------------------------- train_step

B, T = 8, 12


def _batch(seed):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 128, (B, T)).astype(np.int32)
  prompt, resp, t = rng.integers(2, 6, B), rng.integers(3, T - 6, B), np.arange(T)
  mask = ((t >= prompt[:, None] - 1) & (t < (prompt + resp)[:, None] - 1)).astype(np.float32)
  return {"tokens": tokens, "positions": np.broadcast_to(t, (B, T)).astype(np.int32),
          "loss_mask": mask, "weights": np.ones(B, np.float32)}


def _ref_loss(student, teacher, batch):
  # Full [B, T, V] logits, no chunking or gathering; forward KL, token mean.
  logq = jax.nn.log_softmax(student(jnp.asarray(batch["tokens"])))
  logp = jax.nn.log_softmax(teacher(jnp.asarray(batch["tokens"])))
  tok = jnp.sum(jnp.exp(logp) * (logp - logq), -1)
  m = jnp.asarray(batch["loss_mask"])
  return jnp.sum(tok * m) / jnp.sum(m)


@pytest.mark.slow
def test_train_steps_match_numpy_adamw():
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student_cfg = get_preset("tiny-qwen2")
  teacher_cfg = dataclasses.replace(student_cfg, hidden=96, num_layers=3, mlp_dim=160)
  student = shard_init(lambda r: Decoder(student_cfg, rngs=r), mesh, seed=0)
  teacher = shard_init(lambda r: Decoder(teacher_cfg, rngs=r), mesh, seed=1)
  graphdef, state0 = nnx.split(student)
  leaves0, treedef = jax.tree.flatten(state0)
  ref_p = [np.asarray(x, np.float64) for x in leaves0]

  def ref_grads(params, batch):
    model = nnx.merge(graphdef, treedef.unflatten([jnp.asarray(x, jnp.float32) for x in params]))
    return jax.tree.leaves(nnx.grad(lambda m: _ref_loss(m, teacher, batch))(model))

  # The clip sits below the first gradient's norm: the step must clip.
  norm0 = math.sqrt(sum(float(np.sum(np.square(g))) for g in ref_grads(ref_p, _batch(0))))
  train = TrainConfig(steps=6, lr=1e-2, warmup_steps=2, weight_decay=0.5, b1=0.8, b2=0.9,
                      grad_clip=0.7 * norm0)
  cfg = Config(model=student_cfg, teacher=teacher_cfg,
               data=DataConfig(batch_size=B, max_response_len=T),
               loss=LossConfig(divergence="forward_kl", chunk_size=4), train=train)
  tx = make_optimizer(train)
  state = init_train_state(student, tx, mesh)
  tdef, tparams = nnx.split(teacher)
  step = compile_train_step(cfg, mesh, state, graphdef, tparams, tdef, tx)
  adam = AdamW(train, ref_p)
  put = lambda b: jax.device_put(b, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  for t in range(3):
    batch = _batch(t)
    before = ref_p
    ref_p, scale = adam.step(ref_p, ref_grads(ref_p, batch))
    if t == 0:
      assert scale < 1  # clipping is exercised
    state, m = step(state, tparams, put(batch))
    assert float(m["lr"]) == pytest.approx(lr_ref(train, t), rel=1e-6)
    got = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
    moved = max(float(np.abs(b - a).max()) for a, b in zip(before, ref_p))
    assert moved > 0.5 * lr_ref(train, t)  # the parameters really moved this step
    # Adam moves each element by ~lr; float32 gradients through another path differ at ~1e-6,
    # which matters only where |g| ~ Adam's eps (a handful of elements).
    step_d = np.concatenate([(a - old).ravel() for a, old in zip(got, before)])
    ref_d = np.concatenate([(b - old).ravel() for b, old in zip(ref_p, before)])
    err = np.abs(step_d - ref_d)
    assert np.linalg.norm(step_d - ref_d) < 1e-3 * np.linalg.norm(ref_d), t
    assert np.mean(err > 2e-3 * lr_ref(train, t)) < 1e-3 and err.max() < lr_ref(train, t), t
    ref_p = got  # follow the step's parameters: no drift across steps
