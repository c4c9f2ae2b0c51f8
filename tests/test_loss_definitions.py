"""The published definitions behind the losses and weights, against independent numpy
references written from the papers (not from our code): JSD(beta) as in GKD / TRL, AKL as in
Wu et al. 2024's reference implementation, the teacher top-k option, one normalisation for both
uses of the frontier weights, the eps floor, the all-zero fallback, and the warmup."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import losses
from paced_jax.config import (Config, ConfigError, DataConfig, LossConfig, MeshConfig,
                              PacedConfig, TrainConfig, load_config)
from paced_jax.frontier import frontier_round, sampling_probs
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import make_mesh, shard_init
from paced_jax.divergences import stage_of
from paced_jax.step import (compile_train_step, divergence_at, init_train_state, learning_rate,
                            loss_fn, make_optimizer)

V = 13


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_kl(p, q):
  return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), 0.0), -1)


def _pair(seed, shape=(3, 4, V)):
  rng = np.random.default_rng(seed)
  return rng.normal(size=shape) * 2.0, rng.normal(size=shape) * 2.0


# ----------------------------------------------------------------------------- JSD


def _np_jsd(p, q, beta):
  m = beta * p + (1 - beta) * q
  return beta * _np_kl(p, m) + (1 - beta) * _np_kl(q, m)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_interior_matches_definition(beta):
  t, s = _pair(0)
  want = _np_jsd(_np_softmax(t), _np_softmax(s), beta)
  got = losses.token_divergence(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32), "jsd",
                                jsd_beta=beta)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_jsd_endpoints_are_forward_then_reverse_kl_and_continuous():
  t, s = _pair(1)
  p, q = _np_softmax(t), _np_softmax(s)
  div = lambda beta: np.asarray(losses.token_divergence(
      jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32), "jsd", jsd_beta=beta), np.float64)
  np.testing.assert_allclose(div(0.0), _np_kl(p, q), rtol=1e-4)  # forward KL(teacher||student)
  np.testing.assert_allclose(div(1.0), _np_kl(q, p), rtol=1e-4)  # reverse KL(student||teacher)
  # Continuity of the generalised JSD at the ends (computed in float64 from the definition):
  # JSD/beta -> KL(p||q) as beta -> 0 and JSD/(1-beta) -> KL(q||p) as beta -> 1.
  b = 1e-5
  np.testing.assert_allclose(_np_jsd(p, q, b) / b, div(0.0), rtol=1e-3)
  np.testing.assert_allclose(_np_jsd(p, q, 1 - b) / b, div(1.0), rtol=1e-3)


@pytest.mark.parametrize("bad", ["loss.jsd_beta=-0.1", "loss.jsd_beta=1.5", "loss.akl_mu=0",
                                 "loss.akl_mu=1", "loss.temperature=0", "loss.chunk_size=-2",
                                 "loss.two_stage_switch=1", "loss.two_stage_switch=0",
                                 "loss.teacher_top_k=-2", "train.warmup_steps=-1"])
def test_loss_config_validation(bad):
  with pytest.raises(ConfigError, match=bad.split("=")[0]) as e:
    load_config("configs/demo.py:tiny", [bad])
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- AKL


def _np_akl(p, q, mu):
  """Wu et al. 2024 (AKL), reference code: sort by teacher probability; errors |p - q| on the
  sorted ranks; mask = cumsum(p_sorted) > mu with rank 0 forced into the head; head share s1
  (errors where not mask), tail share s2; loss = s1/(s1+s2) FKL + s2/(s1+s2) RKL."""
  out = np.zeros(p.shape[:-1])
  for idx in np.ndindex(*p.shape[:-1]):
    order = np.argsort(-p[idx], kind="stable")
    ps, qs = p[idx][order], q[idx][order]
    err = np.abs(ps - qs)
    tail = np.cumsum(ps) > mu
    tail[0] = False
    s1, s2 = err[~tail].sum(), err[tail].sum()
    out[idx] = (s1 * _np_kl(p[idx], q[idx]) + s2 * _np_kl(q[idx], p[idx])) / (s1 + s2)
  return out


@pytest.mark.parametrize("mu", [0.3, 0.5, 0.8])
def test_akl_matches_reference_implementation(mu):
  t, s = _pair(2, (4, 6, V))
  want = _np_akl(_np_softmax(t), _np_softmax(s), mu)
  got = losses.token_divergence(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32), "akl",
                                akl_mu=mu)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_akl_head_excludes_the_token_that_crosses_mu():
  # Teacher 0.4 / 0.35 / 0.25: with mu = 0.5 the head is rank 0 alone (0.4 <= 0.5, 0.75 > 0.5).
  # Counting the crossing token into the head (the old rule) gives a different loss.
  p = np.array([[0.4, 0.35, 0.25]])
  q = np.array([[0.2, 0.2, 0.6]])
  got = losses.akl(jnp.log(jnp.asarray(p, jnp.float32)), jnp.log(jnp.asarray(q, jnp.float32)),
                   mu=0.5)
  s1, s2 = 0.2, 0.15 + 0.35
  want = (s1 * _np_kl(p, q) + s2 * _np_kl(q, p)) / (s1 + s2)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ----------------------------------------------------------------------------- the step


def _step_cfg(**loss):
  student = get_preset("tiny-qwen2")
  teacher = dataclasses.replace(student, hidden=96, num_layers=2, mlp_dim=160)
  return Config(model=student, teacher=teacher, data=DataConfig(batch_size=4, max_response_len=8),
                loss=LossConfig(**{"chunk_size": 3, **loss}),
                train=TrainConfig(steps=10, lr=1e-2, warmup_steps=2))


def _models(cfg):
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  student = shard_init(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=0)
  teacher = shard_init(lambda r: Decoder(cfg.teacher, rngs=r), mesh, seed=1)
  return mesh, student, teacher


def _batch(seed=0, B=4, T=10, lengths=(2, 5, 3, 6)):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 128, (B, T)).astype(np.int32)
  t = np.arange(T)
  mask = np.stack([(t >= 2) & (t < 2 + n) for n in lengths]).astype(np.float32)
  return {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(np.broadcast_to(t, (B, T))),
          "loss_mask": jnp.asarray(mask),
          "weights": jnp.asarray(rng.uniform(0.2, 2.0, B).astype(np.float32))}


def _loss(cfg, student, teacher, batch, kind="forward_kl"):
  sdef, sparams = nnx.split(student)
  tdef, tparams = nnx.split(teacher)
  return loss_fn(sparams, tparams, batch, kind, cfg=cfg, student_def=sdef, teacher_def=tdef)


def test_teacher_top_k_reaches_the_loss():
  cfg = _step_cfg()
  _, student, teacher = _models(cfg)
  batch = _batch()
  full, _ = _loss(cfg, student, teacher, batch)
  V_ = cfg.model.vocab_size
  # k = V is full forward KL. The step passes a fixed divergence by name (top-k needs it known
  # on the host; a traced index is refused).
  kind = divergence_at(cfg, jnp.int32(0))
  assert kind == "forward_kl"
  all_k, _ = _loss(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, teacher_top_k=V_)),
                   student, teacher, batch, kind)
  few, _ = _loss(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, teacher_top_k=4)),
                 student, teacher, batch, kind)
  np.testing.assert_allclose(all_k, full, rtol=1e-5)
  assert abs(float(few) - float(full)) > 1e-3 * abs(float(full))


@pytest.mark.parametrize("over", [["loss.divergence=reverse_kl"], ["loss.mode=on_policy"],
                                  ["loss.mode=two_stage"], ["loss.mode=self_distill"]])
def test_teacher_top_k_refused_outside_forward_kl(over):
  with pytest.raises(ConfigError, match="teacher_top_k") as e:
    load_config("configs/demo.py:tiny", over + ["loss.teacher_top_k=8"])
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="exceeds the teacher's vocabulary"):
    load_config("configs/demo.py:tiny", ["loss.teacher_top_k=100000"])


def test_one_normalisation_for_both_uses_of_the_weights():
  sums = jnp.asarray([2.0, 9.0, 0.0, 4.0])
  counts = jnp.asarray([2.0, 3.0, 0.0, 8.0])
  w = jnp.asarray([1.0, 0.5, 3.0, 2.0])
  # token: sum_b w_b S_b / sum_b w_b n_b; sequence: sum_b w_b S_b/n_b / sum_{b: n_b>0} w_b.
  assert float(losses.normalise(sums, counts, w, "token")) == pytest.approx(
      (2 + 4.5 + 8) / (2 + 1.5 + 16))
  assert float(losses.normalise(sums, counts, w, "sequence")) == pytest.approx(
      (1 * 1.0 + 0.5 * 3.0 + 2 * 0.5) / 3.5)
  assert float(losses.normalise(sums, counts, None, "token")) == pytest.approx(15 / 13)
  # The step uses the configured normalisation in sampling mode and in loss-weight mode alike.
  batch = _batch()
  for use in ("sample", "loss_weight"):
    vals = {}
    for norm in ("token", "sequence"):
      cfg = _step_cfg(normalise=norm)
      cfg = dataclasses.replace(cfg, paced=PacedConfig(use=use))
      _, student, teacher = _models(cfg)
      loss, (s, c) = _loss(cfg, student, teacher, batch)
      w = np.asarray(batch["weights"]) if use == "loss_weight" else np.ones(4)
      s, c = np.asarray(s, np.float64), np.asarray(c, np.float64)
      want = (np.sum(w * s) / np.sum(w * c) if norm == "token"
              else np.sum(w * s / c) / np.sum(w))
      assert float(loss) == pytest.approx(want, rel=1e-5), (use, norm)
      vals[norm] = float(loss)
    assert vals["token"] != pytest.approx(vals["sequence"], rel=1e-3)


def test_masked_nan_hidden_state_never_reaches_the_gradient():
  rng = np.random.default_rng(0)
  B, R, D = 2, 5, 8
  h_s = rng.normal(size=(B, R, D)).astype(np.float32)
  h_t = rng.normal(size=(B, R, D)).astype(np.float32)
  mask = np.ones((B, R), np.float32)
  mask[0, 3:] = 0
  h_s[0, 4] = np.nan  # a padded position whose hidden state is not finite
  h_t[0, 4] = np.inf
  w_s = jnp.asarray(rng.normal(size=(D, V)).astype(np.float32))
  w_t = jnp.asarray(rng.normal(size=(D, V)).astype(np.float32))
  f = lambda w, h: jnp.sum(losses.linear_divergence(h_t, w_t, h, w, mask, "forward_kl")[0])
  val, (g_w, g_h) = jax.value_and_grad(f, argnums=(0, 1))(w_s, jnp.asarray(h_s))
  assert np.isfinite(float(val)) and np.isfinite(np.asarray(g_w)).all()
  assert np.isfinite(np.asarray(g_h)).all() and not np.asarray(g_h)[0, 3:].any()


def test_all_zero_loss_weights_do_not_step_adamw():
  cfg = _step_cfg()
  cfg = dataclasses.replace(cfg, paced=PacedConfig(use="loss_weight"))
  mesh, student, teacher = _models(cfg)
  tx = make_optimizer(cfg.train)
  state = init_train_state(student, tx, mesh)
  tdef, tparams = nnx.split(teacher)
  step = compile_train_step(cfg, mesh, state, nnx.graphdef(student), tparams, tdef, tx)
  batch = _batch()
  state, _ = step(state, tparams, batch)  # a live step first: the moments are non-zero
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  dead = dict(batch, weights=jnp.zeros(4, jnp.float32))
  state, m = step(state, tparams, dead)
  after = jax.tree.map(np.asarray, (state.params, state.opt_state))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert float(m["loss"]) == 0.0 and int(state.step) == 2
  state, _ = step(state, tparams, batch)  # and a live batch moves them again
  assert any(not np.array_equal(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(after[0]), jax.tree.leaves(state.params)))


# ----------------------------------------------------------------------------- weights


def test_eps_means_one_mixture_in_both_modes():
  w = np.array([0.0, 0.25, 0.0, 0.16, 0.09])
  eps, N = 0.1, 5
  pi = (1 - eps) * w / w.sum() + eps / N
  s = frontier_round(w, PacedConfig(eps=eps, use="sample"))
  np.testing.assert_allclose(s.probs, pi)
  np.testing.assert_array_equal(s.loss_weights, 1.0)
  lw = frontier_round(w, PacedConfig(eps=eps, use="loss_weight"))
  assert lw.probs is None
  np.testing.assert_allclose(lw.loss_weights, N * pi, rtol=1e-6)  # the same mixture, mean 1
  assert lw.loss_weights.mean() == pytest.approx(1.0)
  # Problems that cannot be drawn carry nothing; eps / N counts the drawable ones.
  usable = np.array([True, True, False, True, True])
  u = frontier_round(w, PacedConfig(eps=eps), usable)
  assert u.probs[2] == 0 and u.probs.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(u.probs[0], eps / 4)


def test_all_zero_weights_fall_back_to_uniform():
  assert PacedConfig().eps == 0.02
  assert load_config("configs/qwen3_8b_to_0p6b.py").paced.eps == 0.02
  for use in ("sample", "loss_weight"):
    fr = frontier_round(np.zeros(4), PacedConfig(eps=0.0, use=use))
    assert fr.fallback_uniform
    if use == "sample":
      np.testing.assert_allclose(fr.probs, 0.25)
    else:
      np.testing.assert_allclose(fr.loss_weights, 1.0)
  assert not frontier_round(np.ones(4), PacedConfig(eps=0.0)).fallback_uniform
  np.testing.assert_allclose(sampling_probs(np.zeros(3), eps=0.0), 1 / 3)


# ----------------------------------------------------------------------------- schedule, modes


def test_warmup_learns_from_step_zero():
  cfg = TrainConfig(steps=20, lr=0.4, warmup_steps=4)
  got = [float(learning_rate(cfg, s)) for s in range(6)]
  np.testing.assert_allclose(got[:4], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  np.testing.assert_allclose(got[4], 0.4, rtol=1e-6)  # cosine starts at the peak
  assert float(learning_rate(cfg, 20)) == pytest.approx(0.04)
  # cosine midway between warmup and the end: lr_end + (lr - lr_end) / 2
  assert float(learning_rate(cfg, 12)) == pytest.approx(0.04 + 0.36 * 0.5)
  assert float(learning_rate(dataclasses.replace(cfg, warmup_steps=0), 0)) == pytest.approx(0.4)


def test_on_policy_defaults_to_reverse_kl():
  cfg = load_config("configs/demo.py:tiny", ["loss.mode=on_policy", "loss.divergence=auto"])
  assert stage_of(cfg, 0) == "reverse_kl"
  assert stage_of(load_config("configs/demo.py:tiny", ["loss.divergence=auto"]), 0) == "forward_kl"
  explicit = load_config("configs/demo.py:tiny", ["loss.mode=on_policy",
                                                  "loss.divergence=jsd"])
  assert stage_of(explicit, 0) == "jsd"


def test_vocab_limit_cuts_padding_rows_from_both_models():
  # One tokenizer, padded embeddings: the teacher has 68 more rows than the student. With
  # loss.vocab_limit = the real vocabulary, the loss equals the loss of the same models with the
  # padding rows removed (softmaxes over real ids only), and the padding rows get no gradient.
  cfg = _step_cfg(vocab_limit=100)
  student_cfg = dataclasses.replace(cfg.model, tie_embeddings=False)
  cfg = dataclasses.replace(cfg, model=student_cfg,
                            teacher=dataclasses.replace(cfg.teacher, vocab_size=168))
  _, student, teacher = _models(cfg)
  batch = _batch()
  batch["tokens"] = batch["tokens"] % 100
  # The reference: the same weights with the unembeddings cut to 100 ids, no limit.
  cut_cfg = dataclasses.replace(cfg, model=dataclasses.replace(student_cfg, vocab_size=100),
                                teacher=dataclasses.replace(cfg.teacher, vocab_size=100),
                                loss=dataclasses.replace(cfg.loss, vocab_limit=0))
  _, s2, t2 = _models(cut_cfg)
  for src, dst in ((student, s2), (teacher, t2)):
    dst.embed[...] = src.embed[...][:100]
    if dst.lm_head is not None:
      dst.lm_head[...] = src.lm_head[...][:, :100]
    nnx.update(dst.layers, nnx.state(src.layers))
    nnx.update(dst.final_norm, nnx.state(src.final_norm))

  def value_and_grad(c, s, t):
    sdef, sparams = nnx.split(s)
    tdef, tparams = nnx.split(t)
    f = jax.jit(jax.value_and_grad(lambda p, tp: loss_fn(
        p, tp, batch, "forward_kl", cfg=c, student_def=sdef, teacher_def=tdef)[0]))
    return f(sparams, tparams)

  (loss, grads), (want, _) = value_and_grad(cfg, student, teacher), value_and_grad(cut_cfg, s2, t2)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert not np.asarray(grads["lm_head"][...])[:, 100:].any()
  assert np.asarray(grads["lm_head"][...])[:, :100].any()
  with pytest.raises(ConfigError, match="vocab_limit"):
    Config(model=cfg.model, teacher=cfg.teacher, loss=LossConfig(vocab_limit=500))


def test_sampler_never_draws_padding_ids():
  from paced_jax.sampler import Greedy, Knobs, Sample, generate

  model = Decoder(get_preset("tiny-qwen2"), rngs=nnx.Rngs(0))
  V = model.cfg.vocab_size
  # Push all the mass onto the padding rows: without the limit they would be drawn.
  w = np.asarray(model.embed[...]).copy()
  w[V - 8:] *= 50.0
  model.embed[...] = jnp.asarray(w)
  free = generate(model, [[1, 2, 3]], rng=0, knobs=Knobs(max_new_tokens=8), rollouts=4)
  assert (np.asarray(free.tokens_BS) >= V - 8).any()
  for strategy in (Sample(vocab_limit=V - 8), Greedy(vocab_limit=V - 8)):
    out = generate(model, [[1, 2, 3]], rng=0, knobs=Knobs(max_new_tokens=8), rollouts=4,
                   strategy=strategy)
    assert (np.asarray(out.tokens_BS) < V - 8).all()
