"""On-policy and self-distillation rows: exactly the student's sampled tokens after the prompt,
scored up to and including their EOS, the teacher's privileged rows aligned on the same response
tokens, and the step's loss equal to a numpy computation on those rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import rollout_data, rollouts
from paced_jax import train as train_lib
from paced_jax.config import Config, LossConfig, load_config
from paced_jax.data.tokenizer import encode_prompt
from paced_jax.distributed import to_host
from paced_jax.divergences import stage_of

TINY = "configs/demo.py:tiny"


@pytest.fixture
def recorded(monkeypatch):
  """Wraps the rollout engine: rows 0 and 3 stop early with EOS (as an engine that drew EOS
  would report them); records what on_policy_batch got and from which parameters."""
  seen = {}
  real = rollouts.Engine.sample

  def sample(self, prompts, **kw):
    out = real(self, prompts, **kw)
    toks, lens = np.array(out.tokens_BS), np.array(out.lengths_B)
    eos = int(np.atleast_1d(kw["stop_ids"])[0])
    for b, n in ((0, 3), (3, 1)):
      toks[b, n - 1], toks[b, n:], lens[b] = eos, kw["pad_id"], n
    seen.update(eos=eos, tokens=toks, lengths=lens, prompts=[list(p) for p in prompts],
                params=jax.tree.leaves(nnx.state(self.model, nnx.Param)))
    return dataclasses.replace(out, tokens_BS=toks, lengths_B=lens)

  monkeypatch.setattr(rollouts.Engine, "sample", sample)
  return seen


def _setup(tmp_path, mode, *over):
  cfg = load_config(TINY, [f"loss.mode={mode}", "loss.divergence=reverse_kl",
                           "eval.max_problems=0", "paced.weighting=uniform", *over])
  run, state = train_lib.setup(cfg, tmp_path / mode, progress=False)
  train_lib.refresh(run, state, 0, 0, progress=False)  # uniform weighting: no estimate
  return run, state


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _check_rows(rows, prompts, responses, pad_id):
  for b, (p, r) in enumerate(zip(prompts, responses)):
    P, L = len(p), len(r)
    tok, mask = rows["tokens"][b], rows["loss_mask"][b]
    np.testing.assert_array_equal(tok[:P], p)
    np.testing.assert_array_equal(tok[P:P + L], r)
    assert (tok[P + L:] == pad_id).all()
    # The logits at t predict tokens[t + 1]: exactly the response tokens (EOS included).
    np.testing.assert_array_equal(np.nonzero(mask)[0], np.arange(P - 1, P + L - 1))


@pytest.mark.parametrize("mode", ["on_policy", "self_distill"])
def test_rows_are_the_students_samples_and_the_loss_matches_numpy(tmp_path, recorded, mode):
  run, state = _setup(tmp_path, mode)
  tok, cfg = run.tokenizer, run.cfg
  batch = next(run.pipeline)
  index = to_host(batch["index"])
  prompts = [run.pipeline.pool.prompt(int(i)) for i in index]
  rows_g = rollout_data.on_policy_batch(run, state, batch, step=0)
  rows = {k: to_host(v) for k, v in rows_g.items()}
  # Sampled by the current student from the batch's own prompts.
  assert recorded["prompts"] == [p.tolist() for p in prompts]
  for a, b in zip(recorded["params"], jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lens = recorded["lengths"]
  responses = [recorded["tokens"][b, :lens[b]] for b in range(len(index))]
  assert responses[0][-1] == recorded["eos"] and len(responses[3]) == 1
  _check_rows(rows, prompts, responses, tok.pad_id)
  np.testing.assert_array_equal(rows["index"], index)
  t_tokens = rows.get("teacher_tokens", rows["tokens"])
  t_mask = rows.get("teacher_loss_mask", rows["loss_mask"])
  if mode == "self_distill":
    priv = [encode_prompt(tok, cfg.loss.privileged_template.format(
        prompt=run.problems[int(i)].prompt, solution=run.problems[int(i)].solution or ""),
        cfg.data.chat_template) for i in index]
    assert all(len(q) > len(p) for q, p in zip(priv, prompts))
    _check_rows({"tokens": t_tokens, "loss_mask": t_mask}, priv, responses, tok.pad_id)
  # The k-th scored position of the student and of the teacher predicts the same token.
  for b in range(len(index)):
    s_pos, t_pos = np.nonzero(rows["loss_mask"][b])[0], np.nonzero(t_mask[b])[0]
    np.testing.assert_array_equal(rows["tokens"][b, s_pos + 1], t_tokens[b, t_pos + 1])

  # The step's loss: reverse KL(q || p) on those rows, token mean, computed in numpy.
  student = nnx.merge(run.student_def, state.params)
  teacher = nnx.merge(run.teacher_def, run.teacher_params)
  logq = _log_softmax(student(jnp.asarray(rows["tokens"])))
  logp = _log_softmax(teacher(jnp.asarray(t_tokens)))
  total, count = 0.0, 0
  for b in range(len(index)):
    s_pos, t_pos = np.nonzero(rows["loss_mask"][b])[0], np.nonzero(t_mask[b])[0]
    lq, lp = logq[b, s_pos], logp[b, t_pos]
    total += float(np.sum(np.exp(lq) * (lq - lp)))
    count += len(s_pos)
  want = total / count
  _, metrics = run.step_fn(state, run.teacher_params, rows_g)
  assert float(metrics["tokens"]) == count
  # Self-distillation starts from the student's own copy, so the KL is ~1e-4 and float32 rounding
  # of log-prob differences shows at ~2e-4 relative; any row or mask error is far larger.
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-3)
  run.pipeline.close()


def test_rows_are_capped_to_the_largest_bucket(tmp_path, recorded):
  run, state = _setup(tmp_path, "on_policy")
  batch = next(run.pipeline)
  index = to_host(batch["index"])
  prompts = [run.pipeline.pool.prompt(int(i)) for i in index]
  longest = max(len(p) for p in prompts) + 3  # the longest prompt leaves room for 3 tokens
  run.cfg = dataclasses.replace(run.cfg, data=dataclasses.replace(
      run.cfg.data, length_buckets=(longest,)))
  rows = {k: to_host(v) for k, v in rollout_data.on_policy_batch(run, state, batch, 0).items()}
  assert rows["tokens"].shape[1] == longest
  lens = recorded["lengths"]
  responses = [recorded["tokens"][b, :min(lens[b], longest - len(p))]
               for b, p in enumerate(prompts)]
  assert min(len(r) for r in responses) < max(lens)  # some response was cut
  _check_rows(rows, prompts, responses, run.tokenizer.pad_id)
  run.pipeline.close()


def test_on_policy_modes_default_to_reverse_kl():
  for mode in ("on_policy", "self_distill"):
    assert stage_of(Config(loss=LossConfig(mode=mode)), 0) == "reverse_kl"
  assert stage_of(Config(loss=LossConfig(mode="distill")), 0) == "forward_kl"
