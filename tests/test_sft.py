"""SFT mode: the cross-entropy branch of the traced divergence switch equals -log q(target)
computed directly, and `paced sft` lowers the loss on a tiny set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import losses
from paced_jax.cli import main
from paced_jax.config import Config, DataConfig, LossConfig, MeshConfig, TrainConfig
from paced_jax.metrics import read_metrics
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.step import compile_train_step, init_train_state, make_optimizer

B, T = 8, 12


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 128, (B, T)).astype(np.int32)
  prompt, resp, t = rng.integers(2, 6, B), rng.integers(1, T - 6, B), np.arange(T)
  mask = ((t >= prompt[:, None] - 1) & (t < (prompt + resp)[:, None] - 1)).astype(np.float32)
  return {"tokens": tokens, "positions": np.broadcast_to(t, (B, T)).astype(np.int32),
          "loss_mask": mask, "weights": np.ones(B, np.float32)}


@pytest.mark.parametrize("normalise", ["token", "sequence"])
def test_sft_step_is_cross_entropy_on_the_next_token(normalise):
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  loss_kw = {} if normalise == "token" else {"normalise": normalise}
  cfg = Config(model=get_preset("tiny-qwen2"), data=DataConfig(batch_size=B, max_response_len=T),
               loss=LossConfig(mode="sft", chunk_size=4, **loss_kw), train=TrainConfig(steps=4))
  student = shard_init(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=0)
  batch = _batch()
  # Directly: logits at t predict tokens[t + 1] where loss_mask[t] = 1.
  logits = np.asarray(student(jnp.asarray(batch["tokens"])), np.float64)
  logq = logits - logits.max(-1, keepdims=True)
  logq -= np.log(np.exp(logq).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logq[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
  m = batch["loss_mask"][:, :-1]
  if normalise == "token":
    want = (nll * m).sum() / m.sum()
  else:
    want = np.mean((nll * m).sum(1) / m.sum(1))
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  step = compile_train_step(cfg, mesh, state, nnx.graphdef(student), None, None, tx)
  put = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  _, metrics = step(state, None, jax.device_put(batch, put))
  assert int(metrics["divergence"]) == losses.DIVERGENCES.index("ce")  # the traced index
  assert float(metrics["tokens"]) == m.sum()
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_paced_sft_lowers_the_loss(tmp_path, capsys):
  wd = tmp_path / "sft"
  sets = ["data.synthetic_size=8", "train.steps=12", "train.lr=1e-2", "train.warmup_steps=1",
          "train.schedule=constant", "train.log_every=1", "train.ckpt_every=100",
          "eval.max_problems=0", "paced.weighting=uniform"]
  assert main(["sft", "configs/demo.py:tiny", "--workdir", str(wd), "--quiet",
               *[a for s in sets for a in ("--set", s)]]) == 0
  rows = [r for r in read_metrics(wd) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(12))
  assert all(r["divergence"] == losses.DIVERGENCES.index("ce") for r in rows)
  first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
  assert last < 0.8 * first, (first, last)
  assert "done: step 12" in capsys.readouterr().out
