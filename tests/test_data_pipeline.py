"""The Grain frontier pipeline: sampling law, refresh, exact resume, process shards, packing."""

import numpy as np
import pytest
from scipy import stats

from paced_jax.config import DataConfig
from paced_jax.data import (CharTokenizer, FrontierPipeline, ListSource, Problem, build_pool,
                            pack_rows, uniforms)

N = 40


def _problems(n=N):
  # Prompt and solution lengths vary with i, so rows land in different buckets.
  return [Problem(id=f"p{i}", prompt="Q" * (1 + i % 7) + f" {i}?", answer=str(i),
                  solution="s" * (i % 23) + f"#### {i}") for i in range(n)]


@pytest.fixture(scope="module")
def pool_and_src():
  cfg = DataConfig(batch_size=8, length_buckets=(16, 32, 64))
  src = ListSource(_problems())
  return build_pool(src, CharTokenizer(), cfg), src, cfg


def _pipe(pool_and_src, batch_size=8, seed=3, **kw):
  pool, src, cfg = pool_and_src
  cfg = DataConfig(batch_size=batch_size, length_buckets=cfg.length_buckets)
  return FrontierPipeline(src, CharTokenizer(), cfg, seed=seed, pool=pool, **kw)


def _draw_indices(pipe, n_batches):
  return np.concatenate([next(pipe)["index"] for _ in range(n_batches)])


def test_frequencies_match_probs_chi_square(pool_and_src):
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.2, 1.0, N)
  probs[[3, 11, 29]] = 0.0  # never drawn
  pipe = _pipe(pool_and_src, batch_size=64)
  pipe.set_round(0, probs)
  idx = _draw_indices(pipe, 80)  # 5120 draws
  counts = np.bincount(idx, minlength=N)
  assert counts[[3, 11, 29]].sum() == 0
  nz = probs > 0
  expected = probs[nz] / probs.sum() * len(idx)
  _, pvalue = stats.chisquare(counts[nz], expected)
  assert pvalue > 1e-3, (pvalue, counts)
  # A wrong law (uniform) is rejected by the same test: it has the power to notice.
  _, p_uniform = stats.chisquare(counts[nz], np.full(nz.sum(), len(idx) / nz.sum()))
  assert p_uniform < 1e-6


def test_zero_probability_never_drawn_and_refresh_takes_effect(pool_and_src):
  pipe = _pipe(pool_and_src, batch_size=32)
  probs = np.zeros(N)
  probs[[0, N - 1]] = 1.0  # mass at both ends: edge indices of the cdf
  pipe.set_round(0, probs)
  assert set(_draw_indices(pipe, 20)) == {0, N - 1}
  new = np.zeros(N)
  new[[5, 6, 7]] = [1.0, 0.0, 3.0]
  pipe.set_round(1, new)
  idx = _draw_indices(pipe, 20)
  assert set(idx) == {5, 7}
  assert abs((idx == 7).mean() - 0.75) < 0.08
  # Rounds are different streams: the same probs in another round give other draws.
  pipe.set_round(2, new)
  assert not np.array_equal(_draw_indices(pipe, 20), idx)


def test_state_restore_mid_round_gives_identical_continuation(pool_and_src, tmp_path):
  import orbax.checkpoint as ocp

  probs = np.linspace(0.0, 1.0, N)
  a = _pipe(pool_and_src)
  a.set_round(4, probs)
  for _ in range(3):
    next(a)
  # The state goes through an Orbax checkpoint as a JSON item, as the trainer saves it.
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(7, args=ocp.args.Composite(data=ocp.args.JsonSave(a.get_state())))
    mngr.wait_until_finished()
    restored = mngr.restore(7, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  expected = [next(a) for _ in range(4)]
  b = _pipe(pool_and_src)
  with pytest.raises(ValueError, match="call set_round"):
    b.set_round(3, probs)
    b.set_state(restored)
  b.set_round(4, probs * 2.0)  # same law, different numbers: must be refused
  with pytest.raises(ValueError, match="probs_digest"):
    b.set_state(restored)
  b.set_round(restored["round"], probs)
  b.set_state(restored)
  for want in expected:
    got = next(b)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_two_processes_get_disjoint_shards_forming_the_global_batch(pool_and_src):
  probs = np.arange(N, dtype=float) % 5
  single = _pipe(pool_and_src, batch_size=8)
  single.set_round(0, probs)
  procs = [_pipe(pool_and_src, batch_size=8, process_index=p, process_count=2) for p in (0, 1)]
  for p in procs:
    p.set_round(0, probs)
  for _ in range(5):
    g = next(single)
    parts = [next(p) for p in procs]
    assert parts[0]["tokens"].shape == parts[1]["tokens"].shape == (4, g["tokens"].shape[1])
    for k in g:
      np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), g[k], err_msg=k)
  # Positions are disjoint by construction; the same pool index may still be drawn twice.
  assert procs[0]._spec.position(0) != procs[1]._spec.position(0)


def test_packing_convention_targets_and_loss_mask():
  tok = CharTokenizer()
  prompt = np.asarray([tok.bos_id] + tok.encode("1+2="), np.int32)
  resp = np.asarray(tok.encode("3") + [tok.eos_id], np.int32)
  b = pack_rows([prompt, prompt[:2]], [resp, None], T=10, pad_id=tok.pad_id)
  P, L = len(prompt), len(prompt) + len(resp)
  np.testing.assert_array_equal(b["tokens"][0, :L], np.concatenate([prompt, resp]))
  assert (b["tokens"][0, L:] == tok.pad_id).all()
  np.testing.assert_array_equal(b["targets"][0, :-1], b["tokens"][0, 1:])
  # Exactly the response tokens (EOS included) are predicted, from positions P-1 .. L-2.
  np.testing.assert_array_equal(b["targets"][0][b["loss_mask"][0] > 0], resp)
  np.testing.assert_array_equal(np.nonzero(b["loss_mask"][0])[0], np.arange(P - 1, L - 1))
  np.testing.assert_array_equal(b["positions"][0], [0, 1, 2, 3, 4, 5, 6, 0, 0, 0])
  np.testing.assert_array_equal(b["segment_ids"][0], [1] * L + [0] * (10 - L))
  assert b["loss_mask"][1].sum() == 0 and b["lengths"][1] == 2 and b["prompt_lens"][0] == P


def test_batches_use_smallest_bucket_and_end_with_eos(pool_and_src):
  pool, _, _ = pool_and_src
  tok = CharTokenizer()
  pipe = _pipe(pool_and_src, batch_size=4)
  pipe.set_round(0, None)
  seen = set()
  for _ in range(30):
    b = next(pipe)
    T = b["tokens"].shape[1]
    need = int(b["lengths"].max())
    seen.add(T)
    assert need <= T and not any(need <= s for s in (16, 32, 64) if s < T)
    for row in range(4):
      last = b["lengths"][row] - 1
      assert b["tokens"][row, last] == tok.eos_id
      i = b["index"][row]
      assert tok.decode(b["tokens"][row, :b["prompt_lens"][row]]) == _problems()[i].prompt
  assert len(seen) >= 2  # the pool spans buckets, and padding follows the batch


def test_uniform_mode_carries_loss_weights(pool_and_src):
  w = np.linspace(0.0, 1.0, N).astype(np.float32)
  pipe = _pipe(pool_and_src, batch_size=16)
  pipe.set_round(0, None, weights=w)
  b = next(pipe)
  np.testing.assert_allclose(b["weights"], w[b["index"]])
  assert b["weights"].dtype == np.float32


def test_truncation_drops_eos_and_long_prompts_are_errors():
  from paced_jax.data import DataError

  tok = CharTokenizer()
  src = ListSource([Problem("a", "hi", "1", solution="x" * 50), Problem("b", "y" * 40, "2", "z")])
  cfg = DataConfig(max_prompt_len=16, max_response_len=8, length_buckets=(16, 32))
  with pytest.raises(DataError, match=r"problem 'b': prompt has 41 tokens.*on_error=skip"):
    build_pool(src, tok, cfg)
  pool = build_pool(src, tok, DataConfig(max_prompt_len=16, max_response_len=8,
                                         length_buckets=(16, 32), on_error="skip"))
  assert pool.usable.tolist() == [True, False] and pool.truncated == 1
  assert pool.response(0).tolist() == tok.encode("x" * 8)  # cut, no EOS
  pipe = FrontierPipeline(src, tok, DataConfig(batch_size=4), pool=pool)
  pipe.set_round(0, np.ones(2))
  assert (next(pipe)["index"] == 0).all()  # the unusable problem is never sampled


def test_global_arrays_on_mesh(pool_and_src, mesh_2x4):
  import jax

  pipe = _pipe(pool_and_src, batch_size=8, mesh=mesh_2x4)
  pipe.set_round(0, None)
  b = next(pipe)
  assert isinstance(b["tokens"], jax.Array) and b["tokens"].shape[0] == 8
  # "batch" maps to (data, fsdp): rows split over fsdp=2, replicated over tensor.
  assert b["tokens"].sharding.spec[0] in ("fsdp", ("data", "fsdp"))
  assert len(b["tokens"].addressable_shards) == 8
  assert b["tokens"].addressable_shards[0].data.shape[0] == 4


def test_uniforms_are_counter_based():
  pos = np.arange(1000, dtype=np.uint64)
  u = uniforms(1, 2, pos)
  np.testing.assert_array_equal(u[500:], uniforms(1, 2, pos[500:]))  # no carried state
  assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.03
  assert not np.array_equal(u, uniforms(1, 3, pos)) and not np.array_equal(u, uniforms(2, 2, pos))


def test_prompts_only_rows_for_on_policy_sampling():
  tok = CharTokenizer()
  cfg = DataConfig(batch_size=4, length_buckets=(8, 16, 64), chat_template="Q:{prompt}")
  src = ListSource(_problems(6))
  pipe = FrontierPipeline(src, tok, cfg, prompts_only=True)
  pipe.set_round(0, None)
  b = next(pipe)
  assert b["loss_mask"].sum() == 0
  assert b["tokens"].shape[1] == min(x for x in (8, 16, 64) if x >= b["lengths"].max())
  for row, i in enumerate(b["index"]):
    want = [tok.bos_id] + tok.encode("Q:" + src[i].prompt)
    assert b["tokens"][row, :b["lengths"][row]].tolist() == want
