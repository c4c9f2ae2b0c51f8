"""Rollout engine: equals the static sampler token for token (greedy and temperature, any slot
count or wave size, reused slots), shared prefill == separate prefill, bounded attention == full
attention, traced knobs, one-line errors, FLOP and waste counters."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import rollouts as RO
from paced_jax import sampler as S
from paced_jax.config import ConfigError
from paced_jax.flops import attention_flops_per_token, body_flops_per_token, unembed_flops
from test_sampler import PROMPTS, random_model

BUDGETS = np.array([12, 3, 9, 12, 1, 7])  # per prompt: long, short, a 1-token rollout
PR = PROMPTS[:6]
K = 3


@pytest.fixture(scope="module")
def model():
  # Untied embeddings: a tied random model's greedy decode just repeats the last prompt token,
  # which would hide attention, cache and prefill bugs from the greedy comparison.
  return random_model("tiny-qwen3")


def _static(model, temperature, eos):
  knobs = S.Knobs(temperature=temperature, max_new_tokens=np.repeat(BUDGETS, K))
  out = S.generate(model, PR, rng=4, knobs=knobs, rollouts=K, eos_id=eos,
                   budget_buckets=(32,))
  return jax.tree.map(np.asarray, out)


def _engine(model, temperature, eos, **kw):
  kw.setdefault("budget_buckets", (32,))
  kw.setdefault("block", 8)
  eng = RO.Engine(model, **kw)
  return eng.sample(PR, rollouts=K, rng=4, stop_ids=eos, pad_id=0,
                    knobs=S.Knobs(temperature=temperature, max_new_tokens=BUDGETS))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_engine_equals_static_sampler_token_for_token(model, temperature):
  free = _static(model, 0.0, None)
  eos = [int(free.tokens_BS[0, 4]), 127]  # a stop id that really ends some rollouts early
  ref = _static(model, temperature, eos)
  assert ref.lengths_B.min() >= 1 and (ref.lengths_B < np.repeat(BUDGETS, K)).any()
  # slots=1: every rollout reuses the slot of a longer one (a leak would change its tokens);
  # wave=1: one prompt's K rollouts per prefill; 5 slots and 4-prompt waves straddle prompts.
  for kw in (dict(slots=1, wave=1), dict(slots=5, wave=4), dict(slots=32)):
    out = _engine(model, temperature, eos, **kw)
    np.testing.assert_array_equal(out.lengths_B, ref.lengths_B, err_msg=str(kw))
    np.testing.assert_array_equal(out.tokens_BS, ref.tokens_BS[:, :12], err_msg=str(kw))
    np.testing.assert_allclose(out.logprobs_BS, ref.logprobs_BS[:, :12], atol=1e-5)
    assert out.tokens_BS.shape == (len(PR) * K, 12)


def test_stale_cache_entries_never_leak(model):
  """A slot poisoned with huge KV values past its prompt decodes as a clean one would."""
  cfg = model.cfg
  P, S_ = 32, 64
  prompts_BP, lens_B = S.pad_prompts([PROMPTS[0], PROMPTS[0]], P, 0)
  h, clean = model.extend_hidden(jnp.asarray(prompts_BP), model.init_cache(2, S_),
                                 jnp.asarray(lens_B))
  poison = lambda c: c.at[1, :, lens_B[1]:].set(1e4)
  dirty = clean.replace(k=tuple(map(poison, clean.k)), v=tuple(map(poison, clean.v)))
  tok = jnp.asarray([[7], [7]])
  a, _ = model.decode_hidden(tok, dirty, 2, 32)
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(a[0]), atol=1e-5)
  del cfg


def test_bounded_attention_equals_full_attention(model):
  prompts_BP, lens_B = S.pad_prompts(PROMPTS[:4], 32, 0)
  cache = model.init_cache(4, 64)
  _, cache = model.extend_hidden(jnp.asarray(prompts_BP), cache, jnp.asarray(lens_B))
  tok = jnp.asarray([[3], [9], [27], [100]])
  full, full_cache = model.extend_hidden(tok, cache)
  need = int(-(-(lens_B.max() + 1) // 8))
  for blocks in (need, need + 2, 8):  # more blocks than filled: same result
    bounded, b_cache = jax.jit(model.decode_hidden, static_argnums=3)(tok, cache, blocks, 8)
    np.testing.assert_allclose(np.asarray(bounded), np.asarray(full), atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(b_cache.end_B), np.asarray(full_cache.end_B))
  np.testing.assert_allclose(np.asarray(b_cache.k[0]), np.asarray(full_cache.k[0]), atol=1e-6)


def test_shared_prefill_equals_separate_prefill(model):
  prompts_BP, lens_B = S.pad_prompts(PR[:3], 32, 0)
  kn = S.Knobs(*(np.full((16,), v, d) for v, d in ((1.0, np.float32), (0, np.int32),
                                                   (1.0, np.float32), (8, np.int32))))
  graphdef, params = nnx.split(model)
  wave, _ = RO.prefill_jit(graphdef, params, prompts_BP, lens_B, kn, jax.random.key(4),
                        np.arange(16, dtype=np.int32), np.int32(0), rollouts=K,
                        strategy=S.Sample())
  for i in range(3):  # each prompt alone, as sampler.generate prefills it (K copies)
    rows = np.repeat(prompts_BP[i:i + 1], K, 0)
    _, c = model.extend_hidden(jnp.asarray(rows), model.init_cache(K, 32),
                               jnp.full((K,), lens_B[i]))
    for k in range(K):
      np.testing.assert_allclose(np.asarray(wave.k[1][i]), np.asarray(c.k[1][k]), atol=1e-5)
      np.testing.assert_allclose(np.asarray(wave.v[0][i]), np.asarray(c.v[0][k]), atol=1e-5)
  # The K first tokens are K different draws (each rollout's own key), not one copied draw.
  assert len(set(np.asarray(wave.first_Q).tolist())) > K


def test_knobs_never_recompile_and_errors_are_one_line(model):
  _engine(model, 1.0, [5], slots=4)
  before = (RO.decode_jit._cache_size(), RO.prefill_jit._cache_size())
  eng = RO.Engine(model, slots=4, block=8, budget_buckets=(32,))
  for kn in (S.Knobs(temperature=0.3, top_k=5, max_new_tokens=BUDGETS),
             S.Knobs(temperature=np.linspace(0, 2, 18), top_p=0.8, max_new_tokens=4)):
    eng.sample(PR, rollouts=K, rng=1, knobs=kn, stop_ids=[9])
  assert (RO.decode_jit._cache_size(), RO.prefill_jit._cache_size()) == before
  for bad, match in [(dict(knobs=S.Knobs(top_p=0.0)), "top_p"),
                     (dict(knobs=S.Knobs(max_new_tokens=10_000)), "budget_buckets"),
                     (dict(knobs=S.Knobs(temperature=[1.0] * 4)), "one value per prompt"),
                     (dict(rollouts=0), "rollouts"), (dict(prompts=[[1], []]), "empty"),
                     (dict(prompts=[[1] * 300]), "prompt_buckets")]:
    kw = dict(prompts=PR, rollouts=K) | bad
    with pytest.raises(ConfigError, match=match) as e:
      eng.sample(kw.pop("prompts"), **kw)
    assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="slots"):
    RO.Engine(model, slots=0)


def test_counters_flops_and_waste(model):
  out = _engine(model, 1.0, None, slots=4)
  real = int(out.lengths_B.sum())
  assert out.busy == real - len(PR) * K  # token 0 of every rollout comes from the prefill
  assert out.steps * out.slots >= out.busy and 0 <= out.wasted_fraction < 1
  cfg = model.cfg
  want = (out.prefill_rows * 32 * (body_flops_per_token(cfg) + attention_flops_per_token(cfg, 32))
          + out.prefill_rows * unembed_flops(cfg)
          + out.steps * 4 * (body_flops_per_token(cfg) + unembed_flops(cfg))
          + 4 * attention_flops_per_token(cfg, out.attended))
  assert out.flops(cfg) == pytest.approx(want)
  assert out.flops() == pytest.approx(want)  # the engine counted them itself
  assert out.attended % 8 == 0 and out.attended <= out.steps * 64  # whole blocks, bounded


def test_a_small_call_computes_only_the_slots_it_fills(model):
  """A call of R rollouts decodes in min(slots, R rounded up to a power of two) slots (a step's
  few on-policy rows must not pay for the whole slot table) and draws the same rollouts."""
  big = _engine(model, 0.9, [5], slots=256)
  small = _engine(model, 0.9, [5], slots=4)
  R = len(PR) * K
  assert big.slots == 1 << (R - 1).bit_length() < 256
  np.testing.assert_array_equal(big.tokens_BS, small.tokens_BS)
  full = RO.engine_flops(model.cfg, big.prefill_rows, big.prompt_len, 256 * big.steps,
                         256 * big.attended)
  assert big.flops() < full / 4  # what a 256-slot decode of the same steps would have computed


def test_last_wave_prefills_only_its_live_prompts(model):
  """A call's last wave prefills its prompts rounded up to an eighth of a wave (not a whole wave
  of padding rows) and draws the same rollouts as one-prompt waves."""
  prompts = [PROMPTS[i % len(PROMPTS)] + [3 + i] for i in range(19)]
  kn = S.Knobs(temperature=0.9, max_new_tokens=5)
  draw = lambda **kw: RO.Engine(model, block=8, budget_buckets=(8,), **kw).sample(
      prompts, rollouts=2, rng=4, stop_ids=[5], pad_id=0, knobs=kn)
  one, fitted = draw(slots=4, wave=1), draw(slots=4, wave=16)
  assert one.prefill_rows == 19
  assert fitted.prefill_rows == 16 + 4  # 3 live prompts, rounded up to a multiple of 16 / 8
  np.testing.assert_array_equal(fitted.tokens_BS, one.tokens_BS)
  np.testing.assert_array_equal(fitted.lengths_B, one.lengths_B)
  np.testing.assert_allclose(fitted.logprobs_BS, one.logprobs_BS, atol=1e-5)
  assert draw(slots=4, wave=4).prefill_rows == 16 + 3  # grain 1: exactly the live prompts


def test_sharded_engine_equals_unsharded(model, mesh_2x4):
  from paced_jax.sharding import state_shardings

  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh_2x4)))
  a = _engine(model, 0.9, [5], slots=4)
  b = _engine(sharded, 0.9, [5], slots=4, mesh=mesh_2x4)  # slots rounded up to 2 batch shards
  assert b.slots == 4
  np.testing.assert_array_equal(a.tokens_BS, b.tokens_BS)
  np.testing.assert_allclose(a.logprobs_BS, b.logprobs_BS, atol=1e-4)


def test_estimate_through_any_rollouts_equals_the_engine(model):
  """estimate_pass_rates takes any `Rollouts` (here the static-sampler double of an external
  server): the same verified draws as the built-in engine a Decoder gets."""
  from oracle_rollouts import OracleRollouts
  from paced_jax.data.schema import Problem
  from paced_jax.estimate import estimate_pass_rates

  problems = [Problem(f"p{i}", str(i), str(i % 3)) for i in range(6)]
  kw = dict(encode_prompt=lambda p: PR[int(p.prompt)], verifier=lambda text, p: text.endswith(
      p.answer), decode=lambda toks: " ".join(map(str, toks)), rollouts=K, rng=2, eos_id=[3],
      pad_id=0, batch_size=6, knobs=S.Knobs(temperature=1.0, max_new_tokens=9),
      budget_buckets=(32,), progress=False, verify_workers=1)
  static = estimate_pass_rates(OracleRollouts(model), problems, **kw)
  cont = estimate_pass_rates(model, problems, **kw)
  np.testing.assert_array_equal(cont.successes, static.successes)
  np.testing.assert_array_equal(cont.trials, static.trials)
  assert [r.tokens.tolist() for r in cont.rollouts] == [r.tokens.tolist() for r in static.rollouts]
  assert cont.generated_tokens == static.generated_tokens and cont.flops > 0
  assert static.flops == 0  # an implementation that counts nothing reports nothing


def test_engine_set_params_samples_the_new_weights(model):
  """The run's one engine follows the student: after set_params it samples exactly as an
  engine built on the new weights, and keeps no reference to the old ones."""
  graphdef, params = nnx.split(model)
  other = jax.tree.map(lambda x: x * 1.5, params)
  eng = RO.Engine(model, slots=4, budget_buckets=(32,))
  kw = dict(rollouts=K, rng=4, knobs=S.Knobs(temperature=1.0, max_new_tokens=9), pad_id=0)
  before = eng.sample(PR, **kw)
  eng.set_params(other)
  after = eng.sample(PR, **kw)
  fresh = RO.Engine(nnx.merge(graphdef, other), slots=4, budget_buckets=(32,)).sample(PR, **kw)
  np.testing.assert_array_equal(after.tokens_BS, fresh.tokens_BS)
  assert not np.array_equal(after.tokens_BS, before.tokens_BS)
  leaves = jax.tree.leaves(nnx.state(eng.model))
  assert all(a is b for a, b in zip(leaves, jax.tree.leaves(other)))


def test_shrinking_drain_draws_the_same_rollouts_for_fewer_flops(model):
  """Long-tailed lengths: once nothing is pending, a call's busy slots are gathered into
  tables of half the size (down to min_slots) instead of every slot decoding until the
  longest rollout ends. The rollouts are the same; the decode slot-steps and FLOPs fall, and
  the counters still add up (busy slot-steps <= slot-steps, FLOPs from the counters)."""
  prompts = [PROMPTS[i % len(PROMPTS)] + [3 + i] for i in range(16)]
  # Budgets from 1 to 24 tokens, one long rollout per prompt: the drain is a long tail.
  budgets = np.tile(np.asarray([24, 2, 3, 1], np.int32), 16)
  kn = S.Knobs(temperature=0.9, max_new_tokens=budgets)
  draw = lambda **kw: RO.Engine(model, slots=32, block=8, budget_buckets=(24,), **kw).sample(
      prompts, rollouts=4, rng=4, stop_ids=None, pad_id=0, knobs=kn)
  fixed, shrunk = draw(min_slots=32), draw(min_slots=4)
  np.testing.assert_array_equal(shrunk.tokens_BS, fixed.tokens_BS)
  np.testing.assert_array_equal(shrunk.lengths_B, fixed.lengths_B)
  np.testing.assert_allclose(shrunk.logprobs_BS, fixed.logprobs_BS, atol=1e-5)
  assert fixed.slot_steps == fixed.steps * 32 and fixed.busy == shrunk.busy
  assert shrunk.busy <= shrunk.slot_steps < 0.6 * fixed.slot_steps  # 444 vs 800 (busy 416)
  assert shrunk.wasted_fraction < fixed.wasted_fraction
  want = RO.engine_flops(model.cfg, shrunk.prefill_rows, shrunk.prompt_len, shrunk.slot_steps,
                         shrunk.slot_attended)
  assert shrunk.flops() == pytest.approx(want) and shrunk.flops() < fixed.flops()


def test_waves_prefill_in_their_own_prompt_bucket(model):
  """Prompts of mixed lengths: the engine prefills shortest first, each wave in the smallest
  bucket holding its longest prompt. The rollouts (in the caller's order) are those of one
  bucket for all; the prefill FLOPs are what the waves' buckets computed, fewer."""
  prompts = [([1] + [7 + i % 5] * (2 + (11 * i) % 27)) for i in range(12)]  # 3..29 tokens
  kn = S.Knobs(temperature=0.9, max_new_tokens=np.arange(1, 13, dtype=np.int32) % 6 + 2)
  draw = lambda buckets: RO.Engine(model, slots=8, wave=3, block=8, budget_buckets=(8,),
                                   prompt_buckets=buckets, min_slots=8).sample(
      prompts, rollouts=2, rng=3, stop_ids=[5], pad_id=0, knobs=kn)
  one, many = draw((32,)), draw((8, 16, 32))
  np.testing.assert_array_equal(many.tokens_BS, one.tokens_BS)
  np.testing.assert_array_equal(many.lengths_B, one.lengths_B)
  np.testing.assert_allclose(many.logprobs_BS, one.logprobs_BS, atol=1e-5)
  # Sorted lengths 3..29 in waves of 3: buckets 8, 16, 32, 32 (the waves' longest prompts).
  lens = sorted(len(p) for p in prompts)
  want = sum(RO.prefill_flops(model.cfg, 3, next(b for b in (8, 16, 32) if b >= max(lens[w:w + 3])))
             for w in range(0, 12, 3))
  decode = RO.decode_flops(model.cfg, many.slot_steps, many.slot_attended)
  assert many.flops() == pytest.approx(want + decode)
  assert many.flops() < one.flops() and many.prompt_len == 32
  # A rollout's row is the caller's: prompt i's rows are i * K + k whatever the order.
  solo = RO.Engine(model, slots=8, block=8, budget_buckets=(8,), prompt_buckets=(32,)).sample(
      [prompts[5]], rollouts=2, rng=3, stop_ids=[5], pad_id=0, row_offset=10,
      knobs=S.Knobs(temperature=0.9, max_new_tokens=int(kn.max_new_tokens[5])))
  np.testing.assert_array_equal(solo.tokens_BS, one.tokens_BS[10:12, :solo.tokens_BS.shape[1]])


def test_min_slots_from_the_config_reaches_the_runs_engine(model):
  """sample.min_slots is the engine's: at the tiny config's 64 slots (min_slots 64) the table
  never shrinks; at min_slots=8 a long-tailed call drains in smaller tables."""
  from paced_jax.config import load_config

  prompts = [PROMPTS[i % len(PROMPTS)] + [3 + i] for i in range(16)]
  kn = S.Knobs(temperature=0.9, max_new_tokens=np.tile(np.asarray([8, 1], np.int32), 32))
  outs = {}
  for m in (64, 8):
    cfg = load_config("configs/demo.py:tiny", [f"sample.min_slots={m}"])
    eng = RO.make_engine(cfg, model, None)
    assert eng.min_slots == m
    outs[m] = eng.sample(prompts, rollouts=4, rng=1, stop_ids=None, pad_id=0, knobs=kn)
  assert outs[64].slot_steps == outs[64].steps * 64
  assert outs[8].slot_steps < outs[64].slot_steps
  np.testing.assert_array_equal(outs[8].tokens_BS, outs[64].tokens_BS)


def test_calls_with_other_prompt_counts_reuse_the_decode_program(model):
  """A call's wave is at most its prompt count rounded up to a power of two, so calls of 5, 6
  and 7 prompts (an adaptive stage's live problems differ every refresh) run one decode
  program: compiling one per count grew a long run's programs, and its memory maps, without
  bound."""
  eng = RO.Engine(model, slots=64, block=8, budget_buckets=(8,), prompt_buckets=(32,))
  kn = S.Knobs(temperature=0.9, max_new_tokens=4)
  call = lambda n: eng.sample([PROMPTS[i % len(PROMPTS)] for i in range(n)], rollouts=2,
                              rng=0, stop_ids=None, pad_id=0, knobs=kn)
  call(5)
  before = RO.decode_jit._cache_size()
  for n in (6, 7, 8):
    call(n)
  assert RO.decode_jit._cache_size() == before


def _staged(eng, prompts, kn, cache: bool):
  """Two calls as an adaptive estimate makes them: rollouts 0-1 of every prompt, then rollouts
  2-3 of a regrouped subset (other waves, other buckets)."""
  later = [7, 2, 9, 4, 0]
  first_streams = (np.arange(len(prompts))[:, None] * 4 + np.arange(2)).reshape(-1)
  later_streams = (np.asarray(later)[:, None] * 4 + np.arange(2, 4)).reshape(-1)
  with eng.prompt_cache() if cache else contextlib.nullcontext():
    a = eng.sample(prompts, rollouts=2, rng=3, stop_ids=[5], pad_id=0, knobs=kn,
                   streams=first_streams)
    b = eng.sample([prompts[i] for i in later], rollouts=2, rng=3, stop_ids=[5], pad_id=0,
                   knobs=kn, streams=later_streams)
  return a, b


@pytest.mark.parametrize("sharded", [False, True])
def test_prompt_cache_draws_the_same_rollouts_without_prefilling_again(model, mesh_2x4,
                                                                       sharded):
  """Inside `prompt_cache()` a second call on kept prompts copies their KV back: the same
  rollouts token for token as prefilling them again, no prefill rows, and FLOPs lower by the
  prefill less one unembedding per prompt. Outside it (and at prompt_cache_mb=0) every call
  prefills."""
  from paced_jax.sharding import state_shardings

  if sharded:
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh_2x4)))
  else:
    m = model
  prompts = [([1] + [7 + i % 5] * (2 + (11 * i) % 27)) for i in range(12)]  # 3..29 tokens
  kn = S.Knobs(temperature=0.9, max_new_tokens=6)
  eng = lambda mb: RO.Engine(m, slots=8, wave=4, block=8, budget_buckets=(8,),
                             prompt_buckets=(8, 16, 32), min_slots=8, prompt_cache_mb=mb,
                             mesh=mesh_2x4 if sharded else None)
  plain_a, plain_b = _staged(eng(64), prompts, kn, cache=False)
  a, b = _staged(eng(64), prompts, kn, cache=True)
  pairs = [(a, plain_a), (b, plain_b)]
  if not sharded:  # prompt_cache_mb=0: the context is there, the cache is not
    _, off_b = _staged(eng(0), prompts, kn, cache=True)
    pairs.append((off_b, plain_b))
    assert off_b.cached_prompts == 0 and off_b.flops() == pytest.approx(plain_b.flops())
  for x, y in pairs:
    np.testing.assert_array_equal(x.tokens_BS, y.tokens_BS)
    np.testing.assert_array_equal(x.lengths_B, y.lengths_B)
    np.testing.assert_allclose(x.logprobs_BS, y.logprobs_BS, atol=1e-4)
  assert a.cached_prompts == 0 and a.prefill_rows == plain_a.prefill_rows
  assert b.cached_prompts == 5 and b.prefill_rows == 0 and plain_b.prefill_rows > 0
  # The later call's prompts, shortest first: 3, 20, 21, 25 | 26 tokens: waves of 4 and 1
  # prompts (the last rounded up to W / 8 = 1 row), both in the 32 bucket.
  saved = RO.prefill_flops(model.cfg, 4, 32) + RO.prefill_flops(model.cfg, 1, 32)
  assert plain_b.flops() - b.flops() == pytest.approx(saved - 5 * unembed_flops(model.cfg))


def test_prompt_cache_keeps_what_fits_and_forgets_on_new_weights(model):
  """prompt_cache_mb bounds what is kept (least recently used out first: a wave with a prompt
  that was dropped is prefilled); set_params empties the cache (kept KV is the old weights');
  leaving the context drops it."""
  prompts = [([1] + [7 + i % 5] * (2 + (11 * i) % 27)) for i in range(12)]
  kn = S.Knobs(temperature=0.9, max_new_tokens=6)
  eng = RO.Engine(model, slots=8, wave=4, block=8, budget_buckets=(8,),
                  prompt_buckets=(8, 16, 32), min_slots=8, prompt_cache_mb=64)
  call = lambda ps: eng.sample(ps, rollouts=2, rng=3, stop_ids=[5], pad_id=0, knobs=kn)
  with eng.prompt_cache():
    call(prompts)
    per_prompt = eng._kept.bytes / len(eng._kept)
    assert len(eng._kept) == 12
    assert call(prompts[:4]).cached_prompts == 4
    eng.set_params(nnx.state(model, nnx.Param))
    assert len(eng._kept) == 0 and call(prompts[:4]).cached_prompts == 0
  assert eng._kept is None and call(prompts[:4]).cached_prompts == 0
  # Room for about 5 of the 12 (entries differ by prompt bucket): the first ones are dropped.
  eng.prompt_cache_mb = 5.5 * per_prompt / 2 ** 20
  with eng.prompt_cache():
    call(prompts)
    assert 0 < len(eng._kept) < 12 and eng._kept.bytes <= eng.prompt_cache_mb * 2 ** 20
    kept = [p for p in prompts if tuple(p) in eng._kept]
    dropped = [p for p in prompts if tuple(p) not in eng._kept]
    assert call(kept[:4]).prefill_rows == 0
    out = call(dropped[:4])
    assert out.cached_prompts == 0 and out.prefill_rows == 4


def test_adaptive_estimate_prefills_each_prompt_once(model):
  """An adaptive estimate through the run's engine (sample.prompt_cache_mb from the config):
  the same counts with the cache as without, and fewer FLOPs; prompt_cache_mb=0 is the old
  cost."""
  from paced_jax.config import load_config
  from paced_jax.data.schema import Problem
  from paced_jax.estimate import estimate_pass_rates

  problems = [Problem(f"p{i}", str(i), str(i % 3)) for i in range(6)]
  kw = dict(encode_prompt=lambda p: PR[int(p.prompt)], verifier=lambda text, p: text.endswith(
      p.answer), decode=lambda toks: " ".join(map(str, toks)), rollouts=6, rng=2, eos_id=[3],
      pad_id=0, batch_size=8, knobs=S.Knobs(temperature=1.0, max_new_tokens=9),
      progress=False, verify_workers=1, adaptive=2, adaptive_sd=0.01)
  est = {}
  for mb in (0, 16):
    cfg = load_config("configs/demo.py:tiny", [f"sample.prompt_cache_mb={mb}",
                                               "sample.budget_buckets=32"])
    eng = RO.make_engine(cfg, model, None)
    assert eng.prompt_cache_mb == mb
    est[mb] = estimate_pass_rates(eng, problems, **kw)
  np.testing.assert_array_equal(est[16].successes, est[0].successes)
  np.testing.assert_array_equal(est[16].trials, est[0].trials)
  assert est[0].trials.min() == 6  # three stages ran (the rule never settles at sd 0.01)
  assert est[16].flops < est[0].flops
