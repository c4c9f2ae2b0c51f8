"""One FLOP convention (hand counts), what a refresh estimates, which rows a phase can draw,
and the loop's per-step bookkeeping (loss_by_p with the step's own pass rates)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from paced_jax import flops
from paced_jax.config import DataConfig, ModelConfig, load_config
from paced_jax.data import CharTokenizer, FrontierPipeline, ListSource, Problem, build_pool
from paced_jax.metrics import read_metrics
from paced_jax.models import Decoder
from paced_jax.sampler import Knobs, generate
from paced_jax.train import _host_metrics, train

TINY = "configs/demo.py:tiny"

# ModelConfig() by hand: V=256, D=64, L=2, N=4, K=2, H=16, F=128.
BLOCK = 64 * 64 + 2 * 64 * 2 * 16 + 64 * 64 + 3 * 64 * 128  # q + k,v + o + mlp = 36864
BODY = 2 * 2 * BLOCK  # per token, both layers
ATTN = lambda S: 4 * 2 * S * 4 * 16  # per query over S key slots
UNEMBED = 2 * 64 * 256


def test_generate_flops_hand_count():
  assert BLOCK == 36864
  cfg = ModelConfig()
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
  # No stop id: every row runs to max_new_tokens = 12. 3 prompts x 2 rollouts = 6 rows, padded
  # to 8 rows; prompt bucket 8, budget bucket 16: the cache has S = 24 slots.
  out = generate(model, prompts, rng=0, knobs=Knobs(max_new_tokens=12), rollouts=2,
                 prompt_buckets=(8,), budget_buckets=(16,), pad_rows_to=8)
  assert (out.rows, out.prompt_len, out.cache_len, int(out.steps)) == (8, 8, 24, 12)
  prefill = 8 * 8 * (BODY + ATTN(24)) + 8 * UNEMBED
  decode = 11 * 8 * (BODY + ATTN(24) + UNEMBED)
  assert flops.output_flops(cfg, out) == prefill + decode
  # A stop id ends the loop when the last row stops: the count follows the longest row.
  first = np.asarray(out.tokens_BS)[:, 0]
  stopped = generate(model, prompts, rng=0, knobs=Knobs(max_new_tokens=12), rollouts=2,
                     prompt_buckets=(8,), budget_buckets=(16,), eos_id=list(set(first.tolist())))
  assert int(stopped.steps) == int(np.asarray(stopped.lengths_B).max()) == 1


def test_train_step_flops_hand_count():
  cfg = ModelConfig()
  rows, T, R, chunk = 2, 16, 10, 4
  layer = BODY + ATTN(T)
  scored = rows * 12  # 10 scored positions, computed as 3 whole chunks of 4
  # The fused loss: logits, dh and dW per student position (3), logits per teacher one (1).
  student = 3 * rows * T * layer + 3 * scored * UNEMBED
  teacher = rows * T * layer + scored * UNEMBED
  assert flops.step_flops(cfg, cfg, rows, T, R, chunk=chunk) == student + teacher
  # Unchunked: no chunk padding.
  assert flops.step_flops(cfg, None, rows, T, R) == 3 * rows * T * layer + 3 * rows * R * UNEMBED
  # remat="full" recomputes the student's forward of every block.
  import dataclasses
  full = dataclasses.replace(cfg, remat="full")
  assert flops.step_flops(full, None, rows, T, R) == 4 * rows * T * layer + 3 * rows * R * UNEMBED


def test_estimate_counts_what_its_engine_computed():
  """An estimate's FLOPs are the sum of what its engine reported for every call (the engine's
  own count is checked by hand in tests/test_rollouts.py), screening's second pass included."""
  from paced_jax.estimate import estimate_pass_rates
  from paced_jax.rollouts import Engine
  from paced_jax.verify import load_verifier

  cfg = ModelConfig()
  model = Decoder(cfg, rngs=nnx.Rngs(1))
  problems = [Problem(f"p{i}", "x" * (1 + i), str(i)) for i in range(5)]
  tok = CharTokenizer()
  outs = []

  class Recording(Engine):
    def sample(self, *a, **kw):
      outs.append(super().sample(*a, **kw))
      return outs[-1]

  for screen in (0, 1):
    outs.clear()
    est = estimate_pass_rates(Recording(model, slots=4, prompt_buckets=(8,), budget_buckets=(8,)),
                              problems, lambda p: [1] + tok.encode(p.prompt), tok.decode,
                              lambda text, p: len(text) % 2 == 0, rollouts=2,
                              knobs=Knobs(max_new_tokens=6), rng=0, eos_id=None, pad_id=0,
                              batch_size=4, prompt_buckets=(8,), progress=False, screen=screen)
    assert outs and est.flops > 0
    assert est.flops == pytest.approx(sum(o.flops(cfg) for o in outs))


def test_cut_reference_gets_no_eos():
  tok = CharTokenizer()
  src = ListSource([Problem("a", "hi", "1"), Problem("b", "yo", "2")])
  refs = [[{"text": "abc", "eos": False}], ["abc"]]
  pool = build_pool(src, tok, DataConfig(length_buckets=(16, 32)), references=refs)
  assert pool.response(0).tolist() == tok.encode("abc")
  assert pool.response(1).tolist() == tok.encode("abc") + [tok.eos_id]


def test_prompt_only_rounds_draw_problems_without_reference():
  tok = CharTokenizer()
  problems = [Problem(f"p{i}", f"q{i}", str(i), solution=None if i % 2 else f"s{i}")
              for i in range(8)]
  src = ListSource(problems)
  cfg = DataConfig(batch_size=8, length_buckets=(16, 32))
  pipe = FrontierPipeline(src, tok, cfg, seed=1)
  pipe.set_round(0, None)
  assert set(np.concatenate([next(pipe)["index"] for _ in range(4)]) % 2) == {0}
  pipe.set_round(0, None, need_reference=False)  # the student samples the responses
  b = next(pipe)
  drawn = np.concatenate([b["index"]] + [next(pipe)["index"] for _ in range(3)])
  assert set(drawn % 2) == {0, 1} and b["loss_mask"].sum() == 0


def test_host_metrics_bucket_by_the_steps_own_pass_rates():
  m = {"loss": np.float32(1.0), "example_loss": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}
  p_then = np.array([0.0, 0.25, 0.75, 1.0])
  out = _host_metrics(None, m, np.array([0, 1, 2, 3]), p_then)
  assert out["loss_by_p/0.0-0.0"] == 1.0 and out["loss_by_p/0.0-0.5"] == 2.0
  assert out["loss_by_p/0.5-1.0"] == 3.0 and out["loss_by_p/1.0-1.0"] == 4.0


def _jsonl_pool(path, n=24):
  # Every third problem has no reference solution.
  with open(path, "w") as f:
    for i in range(n):
      a, b = i % 7 + 1, i % 5 + 2
      rec = {"id": f"q{i}", "prompt": f"{a}+{b}=", "answer": str(a + b),
             "solution": None if i % 3 == 0 else f"#### {a + b}"}
      f.write(json.dumps(rec) + "\n")


@pytest.mark.parametrize("mode", ["distill", "on_policy"])
def test_refresh_estimates_only_what_can_be_drawn(tmp_path, mode):
  pool = tmp_path / "pool.jsonl"
  _jsonl_pool(pool)
  over = ["data.source=jsonl", f"data.path={pool}", "eval.max_problems=0", "train.steps=1",
          "paced.refresh_subset=0", f"loss.mode={mode}"]
  wd = tmp_path / mode
  train(load_config(TINY, over), wd, progress=False)
  rows = [json.loads(line) for line in open(wd / "passrates" / "round_00000.jsonl")]
  estimated = {r["id"] for r in rows if r["trials"] > 0}
  no_ref = {f"q{i}" for i in range(24) if i % 3 == 0}
  if mode == "distill":  # rows need a reference: problems without one are never drawn
    assert estimated == {f"q{i}" for i in range(24)} - no_ref
  else:  # on-policy rows need none: every problem can be drawn and is estimated
    assert estimated == {f"q{i}" for i in range(24)}


def test_no_estimate_when_weights_cannot_change_anything(tmp_path):
  over = ["paced.weighting=uniform", "paced.use=loss_weight", "eval.max_problems=0",
          "train.steps=1"]
  out = train(load_config(TINY, over), tmp_path / "run", progress=False)
  assert out["compute/rollout_flops"] == 0
  first = [m for m in read_metrics(tmp_path / "run") if "frontier/round" in m][0]
  assert "frontier/estimate_seconds" not in first and first["frontier/fallback_uniform"] == 0


def test_on_policy_rows_are_capped_to_the_largest_bucket(tmp_path):
  # Prompts of ~15 tokens + up to 64 sampled ones do not fit the largest bucket of 48: responses
  # are cut to fit instead of failing mid-run.
  over = ["loss.mode=on_policy", "paced.weighting=uniform", "eval.max_problems=0",
          "train.steps=2", "data.length_buckets=32,48", "data.max_prompt_len=40",
          "sample.max_new_tokens=64", "sample.budget_buckets=64", "sample.temperature=1.0"]
  out = train(load_config(TINY, over), tmp_path / "run", progress=False)
  assert out["step"] == 2 and np.isfinite(out["loss"]) and out["tokens"] > 0


def test_self_distillation_counts_the_teachers_longer_rows():
  """The privileged teacher reads its own, longer rows: its forward is counted at their length
  (it was counted at the student's, 16% low at T = 256 vs 512)."""
  cfg = ModelConfig()
  short = flops.step_flops(cfg, cfg, 4, 256, 128)
  long = flops.step_flops(cfg, cfg, 4, 256, 128, teacher_seq_len=512)
  body = flops.body_flops_per_token(cfg)
  want = 4 * (512 * (body + flops.attention_flops_per_token(cfg, 512))
              - 256 * (body + flops.attention_flops_per_token(cfg, 256)))
  assert long - short == pytest.approx(want)
