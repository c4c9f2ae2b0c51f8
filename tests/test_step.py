"""The jitted distillation step: golden one-step metrics, sharding invariance, modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paced_jax.config import Config, LossConfig, MeshConfig, PacedConfig, TrainConfig, DataConfig
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.divergences import stage_of
from paced_jax.step import compile_train_step, init_train_state, make_optimizer

B, T = 8, 12


def _cfg(**loss):
  student = get_preset("tiny-qwen2")
  teacher = dataclasses.replace(student, hidden=96, num_layers=3, mlp_dim=160)
  return Config(model=student, teacher=teacher,
                data=DataConfig(batch_size=B, max_response_len=T),
                loss=LossConfig(**{"chunk_size": 4, **loss}),
                train=TrainConfig(steps=10, lr=1e-2, warmup_steps=2))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 128, (B, T)).astype(np.int32)
  prompt = rng.integers(2, 6, B)
  resp = rng.integers(3, T - 6, B)
  t = np.arange(T)
  # Scored positions: logits at prompt-1 .. prompt+resp-2 predict the response tokens.
  mask = ((t >= prompt[:, None] - 1) & (t < (prompt + resp)[:, None] - 1)).astype(np.float32)
  return {"tokens": tokens, "positions": np.broadcast_to(t, (B, T)).astype(np.int32),
          "loss_mask": mask, "weights": rng.uniform(0.1, 1.0, B).astype(np.float32)}


def _setup(cfg, mesh):
  student = shard_init(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=0)
  teacher = shard_init(lambda r: Decoder(cfg.teacher, rngs=r), mesh, seed=1)
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  sdef = nnx.graphdef(student)
  tdef, tparams = nnx.split(teacher)
  step = compile_train_step(cfg, mesh, state, sdef, tparams, tdef, tx)
  return student, teacher, tx, state, tparams, step


def _put(batch, mesh):
  return jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      ("data", "fsdp"))))


def _reference_loss(student, teacher, batch, kind="forward_kl", weights=None):
  # Independent path: full [B, T, V] logits, no chunking, no gathering.
  logq = jax.nn.log_softmax(student(jnp.asarray(batch["tokens"])))
  logp = jax.nn.log_softmax(teacher(jnp.asarray(batch["tokens"])))
  if kind == "forward_kl":
    tok = jnp.sum(jnp.exp(logp) * (logp - logq), -1)
  else:
    tok = jnp.sum(jnp.exp(logq) * (logq - logp), -1)
  m = jnp.asarray(batch["loss_mask"])
  if weights is None:
    return jnp.sum(tok * m) / jnp.sum(m)
  # loss.normalise=token (the default): sum_b w_b sum_t l_bt / sum_b w_b n_b
  return jnp.sum(weights * jnp.sum(tok * m, 1)) / jnp.sum(weights * jnp.sum(m, 1))


@pytest.mark.slow
def test_golden_one_step():
  cfg = _cfg()
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student, teacher, tx, state, tparams, step = _setup(cfg, mesh)
  batch = _batch()
  want_loss, grads = nnx.value_and_grad(
      lambda m: _reference_loss(m, teacher, batch))(student)
  params0 = nnx.state(student, nnx.Param)
  updates, _ = tx.update(grads, tx.init(params0), params0)
  want_params = optax.apply_updates(params0, updates)

  before = [np.asarray(x).copy() for x in jax.tree.leaves(params0)]  # the step donates them
  new_state, metrics = step(state, tparams, _put(batch, mesh))
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree_utils.tree_norm(grads), rtol=1e-4)
  assert int(metrics["tokens"]) == int(batch["loss_mask"].sum())
  assert int(new_state.step) == 1
  # Step 0 learns at lr / warmup_steps = 5e-3; Adam's first update is ~lr * sign(g), so an
  # element whose gradient is near float noise (chunked vs full path) may differ by a few 1e-5:
  # the tolerance is 1% of the update's size (tests/test_optimizer.py checks AdamW exactly).
  moved = 0
  for a, b, p0 in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want_params), before):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
    moved += int(np.sum(np.abs(np.asarray(a) - np.asarray(p0)) > 1e-3))
  assert moved > 0  # the parameters really moved


def test_sharded_step_equals_single_device(mesh_2x4):
  cfg = _cfg()
  single = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  results = []
  for mesh in (single, mesh_2x4):
    _, _, _, state, tparams, step = _setup(cfg, mesh)
    losses = []
    for i in range(3):
      state, m = step(state, tparams, _put(_batch(i), mesh))
      losses.append(float(m["loss"]))
    results.append((losses, jax.tree.leaves(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  # Adam normalises updates, so float reassociation differences in tiny gradients show up at
  # a few 1e-5 absolute (elements whose gradient is near rounding noise); updates themselves are
  # ~lr = 1e-2, so 5e-5 is 0.5% of one update.
  for a, b in zip(results[0][1], results[1][1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


def test_loss_weight_mode_and_two_stage():
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  cfg = dataclasses.replace(_cfg(mode="two_stage", two_stage_switch=0.2),
                            paced=PacedConfig(use="loss_weight"))
  student, teacher, _, state, tparams, step = _setup(cfg, mesh)
  batch = _batch(3)
  w = jnp.asarray(batch["weights"])
  want0 = _reference_loss(student, teacher, batch, weights=w)  # before the state is donated
  state, m0 = step(state, tparams, _put(batch, mesh))  # step 0: forward KL
  np.testing.assert_allclose(m0["loss"], want0, rtol=1e-5)
  state, _ = step(state, tparams, _put(batch, mesh))  # step 1: forward KL
  params2 = nnx.merge(nnx.graphdef(student), jax.tree.map(jnp.copy, state.params))
  state, m2 = step(state, tparams, _put(batch, mesh))  # step 2 = 0.2 * 10: reverse KL
  np.testing.assert_allclose(
      m2["loss"], _reference_loss(params2, teacher, batch, "reverse_kl", weights=w), rtol=1e-5)
  assert [stage_of(cfg, s) for s in (0, 1, 2)] == ["forward_kl", "forward_kl", "reverse_kl"]


def test_batch_not_divisible_is_an_error(mesh_2x4):
  from paced_jax.config import ConfigError
  cfg = dataclasses.replace(_cfg(), data=DataConfig(batch_size=3))
  with pytest.raises(ConfigError, match="multiple of mesh data\\*fsdp=2"):
    _setup(cfg, mesh_2x4)


def test_adamw_moments_are_sharded_like_their_parameters(mesh_2x4):
  # Replicated moments would cost 2x the parameter bytes on every device.
  state = _setup(_cfg(), mesh_2x4)[3]
  mu = state.opt_state[1][0].mu
  specs = lambda tree: [x.sharding.spec for x in jax.tree.leaves(tree)]
  assert specs(mu) == specs(state.params)
  assert any(s != jax.sharding.PartitionSpec() for s in specs(mu))
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.opt_state)
             if x.ndim == 0)
