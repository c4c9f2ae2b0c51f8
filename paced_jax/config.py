"""Typed, frozen run configuration and the `--set key.sub=value` override mechanism.

A config file is a Python module under `configs/` exposing `get_config(arg: str = "") -> Config`;
`load_config("configs/demo.py:tiny")` imports it and passes `"tiny"` as `arg`. Every field is
typed; overrides are parsed by that type, so a typo or a wrong type fails at load time with one
line naming the key and what it accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from paced_jax import divergences


class ConfigError(ValueError):
  """A user error in a config file or an override; its message is one line."""


def pick_bucket(n: int, buckets: typing.Sequence[int], what: str = "a row",
                key: str = "data.length_buckets") -> int:
  """The smallest bucket >= n. Here, beside the config fields that hold buckets
  (data.length_buckets, sample.prompt_buckets, sample.budget_buckets), so the data pipeline and
  the samplers share one; `what`/`key` name the value and its config field in the error."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ConfigError(f"{what} of {n} tokens exceeds the largest bucket {max(buckets)} of {key}; "
                    f"add a larger bucket to {key} or reduce it")


DType = Literal["float32", "bfloat16", "float16"]
Remat = Literal["none", "full", "dots", "dots_no_batch"]


def _check(section: str, obj, checks) -> None:
  """Raises a one-line ConfigError for the first (field, ok, requirement) that fails."""
  for name, ok, want in checks:
    if not ok:
      raise ConfigError(f"{section}.{name}={getattr(obj, name)!r} must be {want}")


def _is_union(typ: Any) -> bool:
  return typing.get_origin(typ) in (typing.Union, types.UnionType)


@functools.lru_cache(maxsize=None)
def _choices(cls) -> dict[str, tuple]:
  """Field name -> the values its Literal type allows (None too where the field is optional)."""
  out = {}
  for name, typ in typing.get_type_hints(cls).items():
    args = typing.get_args(typ) if _is_union(typ) else (typ,)
    lits = [a for a in args if typing.get_origin(a) is Literal]
    if lits:
      out[name] = (tuple(v for a in lits for v in typing.get_args(a))
                   + ((None,) if type(None) in args else ()))
  return out


def check_choices(section: str, obj) -> None:
  """A one-line ConfigError for the first field typed as a Literal that holds a value outside
  it, in `obj` and the sections inside it. `--set` parses these fields against their choices;
  a config file that builds a section in Python (`PacedConfig(merge="decya")`) is checked
  here, when the whole Config is made."""
  for name, allowed in _choices(type(obj)).items():
    value = getattr(obj, name)
    if value not in allowed:
      raise ConfigError(f"{section}.{name}={value!r} must be one of "
                        + ", ".join(repr(v) for v in allowed))
  for f in dataclasses.fields(obj):
    sub = getattr(obj, f.name)
    if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
      check_choices(f"{section}.{f.name}" if section else f.name, sub)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling (HF `rope_scaling` with rope_type "llama3")."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One decoder-only transformer: Llama-3, Qwen2/2.5 (q/k/v bias) or Qwen3 (q/k RMSNorm)."""

  vocab_size: int = 256
  hidden: int = 64  # D
  num_layers: int = 2  # L
  num_heads: int = 4  # N
  num_kv_heads: int = 2  # K
  head_dim: int = 16  # H
  mlp_dim: int = 128  # F
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  rms_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2 / Qwen2.5
  qk_norm: bool = False  # Qwen3
  tie_embeddings: bool = True
  max_seq_len: int = 2048
  dtype: DType = "float32"  # compute dtype; softmax, norms and losses stay fp32
  param_dtype: DType = "float32"
  remat: Remat = "none"
  arch: Literal["llama", "qwen2", "qwen3"] = "qwen2"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads="
          f"{self.num_kv_heads}; grouped-query attention needs N % K == 0")
    for name in ("vocab_size", "hidden", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "max_seq_len"):
      if getattr(self, name) < 1:
        raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh `(data, fsdp, tensor)`; one size may be -1 to take the remaining devices."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The problem pool, tokenisation and batching."""

  source: Literal["synthetic", "jsonl", "parquet", "tfds"] = "synthetic"
  path: str = ""  # jsonl / parquet file (or glob)
  tfds_name: str = ""  # e.g. "paced_synthetic" or "gsm8k"
  tfds_split: str = "train"
  tfds_data_dir: str = ""
  # Held-out sets (evaluation avg@k and the forgetting probe). Files: their own files, in the
  # pool's format and field_map; empty: none (a file pool is never evaluated on itself). TFDS:
  # split names ("" for none). The synthetic suite has its own disjoint test / probe splits.
  eval_path: str = ""
  probe_path: str = ""
  tfds_eval_split: str = "test"
  tfds_probe_split: str = ""
  field_map: tuple[str, ...] = ()  # "prompt=question", "answer=final_answer", ...
  on_error: Literal["error", "skip"] = "error"
  tokenizer: str = "char"  # "char" (built-in) or a tokenizer.json / model directory
  chat_template: str = ""  # "...{prompt}...": overrides the tokenizer's own chat template
  chat_template_kwargs: tuple[str, ...] = ()  # "enable_thinking=false": JSON values for it
  max_prompt_len: int = 128
  max_response_len: int = 128
  length_buckets: tuple[int, ...] = (64, 128, 256)
  batch_size: int = 16  # global batch, split over JAX processes
  worker_count: int = 0  # Grain worker processes
  synthetic_families: tuple[str, ...] = ()  # empty: every family
  synthetic_levels: int = 5
  synthetic_size: int = 2000  # problems in the train pool
  # Relative weight of each level 1..synthetic_levels in the train pool (empty: round robin,
  # every level equal). E.g. (5, 3, 2, 0, 0): half the pool at level 1, none at levels 4-5.
  synthetic_level_weights: tuple[float, ...] = ()
  synthetic_heldout_per_cell: int = 0  # test / probe problems per (family, level); 0: 40
  reference: Literal["dataset", "teacher"] = "dataset"
  # Teacher references: kept only when they verify (true), or every one as it comes (false: the
  # teacher's wrong responses are trained on too, as in real pools whose references nobody
  # checked; the verdicts are still counted and logged).
  reference_verify: bool = True
  references_per_problem: int = 1
  reference_cache: str = ""  # default: <workdir>/references
  prefetch: int = 2  # batches prefetched per Grain worker (worker_count > 0)

  def __post_init__(self):
    check_choices("data", self)
    b = self.length_buckets
    if not b or any(x < 2 for x in b) or list(b) != sorted(set(b)):
      raise ConfigError(f"data.length_buckets={b} must be strictly increasing lengths >= 2")
    if not self.reference_verify and self.reference != "teacher":
      raise ConfigError("data.reference_verify=false keeps teacher references unverified; "
                        f"data.reference={self.reference!r} has none (its solutions are the "
                        "dataset's): use data.reference=teacher or drop the setting")
    for name in ("max_prompt_len", "max_response_len", "batch_size", "references_per_problem",
                 "prefetch"):
      if getattr(self, name) < 1:
        raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")
    if self.worker_count < 0:
      raise ConfigError(f"data.worker_count={self.worker_count} must be >= 0 (0: no workers)")
    w = self.synthetic_level_weights
    if w and (len(w) != self.synthetic_levels or not all(0 <= x < float("inf") for x in w)
              or sum(w) <= 0):
      raise ConfigError(f"data.synthetic_level_weights={w} must be {self.synthetic_levels} "
                        "finite weights >= 0 (one per level, data.synthetic_levels), not all 0; "
                        "empty: every level equal")
    if self.synthetic_heldout_per_cell < 0:
      raise ConfigError(f"data.synthetic_heldout_per_cell={self.synthetic_heldout_per_cell} "
                        "must be >= 0 (0: 40)")
    for item in self.field_map:
      if item.count("=") != 1 or not all(item.split("=")):
        raise ConfigError(f"data.field_map entry {item!r} is not of the form "
                          "problem_field=source_field, e.g. prompt=question")
    if self.chat_template and "{prompt}" not in self.chat_template:
      raise ConfigError(f"data.chat_template={self.chat_template!r} has no {{prompt}} "
                        "placeholder; write e.g. 'Q: {prompt}\\nA: '")
    if self.chat_template and self.chat_template_kwargs:
      raise ConfigError("data.chat_template_kwargs go to the tokenizer's own chat template, which "
                        "data.chat_template replaces; set one of them")
    # Each "name=json_value" entry is parsed where the tokenizer loads (preflight.check_run
    # parses them first, before any model is built).


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Sampler knobs. temperature/top_k/top_p/max_new_tokens are traced: changing them never
  recompiles. Prompts are padded to the smallest fitting `prompt_buckets` entry; the KV cache
  has room for the smallest `budget_buckets` entry >= max_new_tokens (one program per pair)."""

  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0
  max_new_tokens: int = 128
  prompt_buckets: tuple[int, ...] = (32, 64, 128, 256)
  budget_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
  batch_size: int = 64  # decode slots of the rollout engine (rows sampled at once)
  # The engine's shrinking drain: once nothing is pending, busy slots are gathered into tables
  # of half the size down to this many (fewer FLOPs for a long tail; each size is one more
  # decode program). >= batch_size: the table never shrinks.
  min_slots: int = 32
  # Host memory (MiB) the engine may hold prefilled prompts in while an estimate samples the
  # same problems in stages (paced.adaptive_rollouts, paced.screen_rollouts): a later stage
  # copies a kept prompt's KV back instead of prefilling it again. 0: every stage prefills.
  prompt_cache_mb: float = 4096.0
  # The run's rollout engine (paced_jax.rollouts.make_engine): "continuous" (the built-in
  # continuous-batching Engine) or "package.module:factory" returning a rollouts.Rollouts
  # (an external server), used for every rollout the run samples.
  engine: str = "continuous"

  def __post_init__(self):
    checks = [("temperature", self.temperature >= 0, ">= 0 (0 is greedy)"),
              ("top_k", self.top_k >= 0, ">= 0 (0 is off)"),
              ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
              ("max_new_tokens", 1 <= self.max_new_tokens <= max(self.budget_buckets or (0,)),
               "in [1, max(sample.budget_buckets)]"),
              ("batch_size", self.batch_size >= 1, ">= 1"),
              ("min_slots", self.min_slots >= 1, ">= 1"),
              ("prompt_cache_mb", self.prompt_cache_mb >= 0, ">= 0 (0 is off)"),
              ("prompt_buckets", bool(self.prompt_buckets) and min(self.prompt_buckets) >= 1,
               "a non-empty tuple of positive lengths"),
              ("budget_buckets", bool(self.budget_buckets) and min(self.budget_buckets) >= 1,
               "a non-empty tuple of positive lengths"),
              ("engine", self.engine == "continuous" or (
                  self.engine.count(":") == 1 and all(self.engine.split(":"))),
               "'continuous' or 'package.module:factory'")]
    _check("sample", self, checks)


@dataclasses.dataclass(frozen=True)
class PacedConfig:
  """Frontier estimation and weighting."""

  weighting: Literal["uniform", "paced", "paced_posterior", "dapo", "band"] = "paced"
  use: Literal["sample", "loss_weight"] = "sample"
  alpha: float = 1.0  # w(p) = p^alpha (1-p)^beta
  beta: float = 1.0
  prior_a0: float = 1.0  # posterior Beta(s + a0, n - s + b0)
  prior_b0: float = 1.0
  band_lo: float = 0.2
  band_hi: float = 0.8
  # Uniform floor: sampling pi = (1 - eps) w / sum(w) + eps / N; in loss-weight mode the loss
  # weights are N * pi (the same mixture, rescaled to mean 1 over the pool).
  eps: float = 0.02
  rollouts: int = 8  # K rollouts per problem per estimate
  refresh_every: int = 50  # R steps between re-estimates
  refresh_subset: int = 0  # problems re-estimated per refresh; 0: the whole pool
  # Which refresh_subset problems a refresh estimates: random (a fresh random draw each round)
  # or thinnest: the fewest merged trials (with merge=decay the discounted ones, so old
  # evidence counts less), never-estimated first, ties in random order; with
  # paced.train_outcomes the problems a run trains on are then left to their training outcomes.
  refresh_order: Literal["random", "thinnest"] = "random"
  # How a problem's new counts combine with its old ones (frontier.PassRateTable.update):
  # replace (the new estimate alone), accumulate (sums), decay: at an update at step t of counts
  # last updated at t_last, s <- g^(t - t_last) s + s_new and n likewise, g = decay_per_step in
  # (0, 1] (a trial j from step t_j counts g^(t - t_j); fractional counts; g = 1: accumulate).
  merge: Literal["replace", "accumulate", "decay"] = "replace"
  decay_per_step: float = 0.99  # g of merge=decay: half-life ln 2 / -ln g ~ 69 steps
  # On-policy modes (on_policy, self_distill, two_stage's second stage): every rollout trained
  # on and sampled at its step (not one reused, paced.reuse_rollouts) is verified on the host,
  # off the step's critical path, and its outcome is added to its problem's counts at the next
  # refresh, at the step it was sampled (needs merge=decay or accumulate). A refresh then
  # estimates only problems with fewer than fresh_trials such outcomes sampled less than
  # fresh_steps steps before it (0: paced.refresh_every); the others keep their counts.
  # fresh_trials = 0: every problem is estimated as without training outcomes.
  train_outcomes: bool = False
  fresh_trials: int = 0
  fresh_steps: int = 0
  # Cheaper estimates. screen_rollouts = k0 > 0: k0 rollouts for every problem, the other K - k0
  # only where the first k0 disagree (estimate.estimate_pass_rates, `screen`). skip_base < 1:
  # GRESO-style skipping, a problem whose last z estimates had zero variance (all right or all
  # wrong) is re-estimated with probability max(skip_base**z, skip_floor), else keeps its last
  # estimate (frontier.skip_settled). Defaults: neither.
  screen_rollouts: int = 0
  skip_base: float = 1.0
  skip_floor: float = 0.1
  # Adaptive K (estimate.estimate_pass_rates, `adaptive`): rollouts in stages of
  # adaptive_rollouts = k0 (0: off); after each stage a problem stops once the posterior sd of
  # its frontier weight w(p) = p^alpha (1-p)^beta, p ~ Beta(s + prior_a0, n - s + prior_b0), is
  # below adaptive_sd; at most paced.rollouts. An estimate stopped before paced.rollouts is no
  # zero-variance estimate for skip_base (nor is a screened-out one).
  # adaptive_settled = m (with merge=decay): a problem is not estimated this round when its
  # discounted counts alone pass that test, hold at least k0 trials and were last updated at most
  # m x refresh_every steps ago (it keeps its counts, which go on decaying); so every problem is
  # estimated at least once in m + 1 rounds. 0: every drawable problem gets at least one stage.
  adaptive_rollouts: int = 0
  adaptive_sd: float = 0.07
  adaptive_settled: int = 1
  # On-policy modes: a refresh's estimation rollouts serve as the student's training rows while
  # at most this many steps old (each used once, counted once in FLOPs); 0: off, every on-policy
  # row is sampled at its step. Rows up to R steps old are slightly off-policy.
  reuse_rollouts: int = 0
  # With reuse: rollouts k = 0, 2, 4, ... of a problem give its pass rate (and alone decide
  # screening / adaptive stops) and only k = 1, 3, ... are reused, so no reused row is chosen on
  # its own outcome; the estimate has ceil(K/2) trials. False: all K give the pass rate and are
  # reused, selected on their own outcomes: at true p = 0.1, K = 8 under paced weights reused
  # rows are 20% correct (35% with screen_rollouts=3), 10% with the split
  # (benchmarks/adaptive_k.py).
  reuse_split: bool = True
  verifier: str = "exact"  # "exact", "math", or "package.module:function"
  answer_marker: str = "####"
  verify_timeout_s: float = 5.0  # per response, every verifier; a timeout counts as wrong
  verify_workers: int = 4  # host threads (and math-verify processes) checking responses
  # A verifier that raises: "error" stops the run with one line naming the problem; "wrong"
  # counts that response as wrong (metric verify/errors) and goes on.
  verifier_errors: Literal["error", "wrong"] = "error"

  def __post_init__(self):
    check_choices("paced", self)
    checks = [("alpha", self.alpha >= 0, ">= 0"), ("beta", self.beta >= 0, ">= 0"),
              ("prior_a0", self.prior_a0 > 0, "> 0"), ("prior_b0", self.prior_b0 > 0, "> 0"),
              ("band_lo", 0 <= self.band_lo <= self.band_hi <= 1,
               "in [0, paced.band_hi] with band_hi <= 1"),
              ("eps", 0 <= self.eps <= 1, "in [0, 1]"), ("rollouts", self.rollouts >= 1, ">= 1"),
              ("refresh_every", self.refresh_every >= 1, ">= 1"),
              ("refresh_subset", self.refresh_subset >= 0, ">= 0 (0 is the whole pool)"),
              ("refresh_order", self.refresh_order == "random" or self.refresh_subset > 0,
               "random unless paced.refresh_subset > 0 (the whole pool has no order to pick)"),
              ("screen_rollouts", 0 <= self.screen_rollouts < self.rollouts,
               "in [0, paced.rollouts) (0: no screening)"),
              ("skip_base", 0 < self.skip_base <= 1, "in (0, 1] (1: never skip)"),
              ("skip_floor", 0 <= self.skip_floor <= 1, "in [0, 1]"),
              ("reuse_rollouts", self.reuse_rollouts >= 0, ">= 0 steps (0: off)"),
              ("decay_per_step", 0 < self.decay_per_step <= 1, "in (0, 1]"),
              ("merge", not (self.train_outcomes and self.merge == "replace"),
               "decay or accumulate with paced.train_outcomes (training outcomes arrive one "
               "rollout at a time; replace would keep only the last)"),
              ("fresh_trials", self.fresh_trials >= 0, ">= 0 (0: estimate every problem)"),
              ("fresh_steps", 0 <= self.fresh_steps <= self.refresh_every,
               "in [0, paced.refresh_every] (0: paced.refresh_every)"),
              ("adaptive_rollouts", 0 <= self.adaptive_rollouts < self.rollouts,
               "in [0, paced.rollouts) (0: off)"),
              ("adaptive_rollouts", not (self.adaptive_rollouts and self.screen_rollouts),
               "0 with paced.screen_rollouts (two stopping rules; pick one)"),
              ("adaptive_sd", self.adaptive_sd > 0, "> 0"),
              ("adaptive_settled", self.adaptive_settled >= 0, ">= 0"),
              ("screen_rollouts", not (self.reuse_rollouts and self.reuse_split
                                       and 0 < self.screen_rollouts < 3),
               ">= 3 with paced.reuse_split (screening reads the even rollouts among the first "
               "k0; paced.reuse_split=false to screen on all)"),
              ("verify_timeout_s", self.verify_timeout_s > 0, "> 0"),
              ("verify_workers", self.verify_workers >= 1, ">= 1")]
    _check("paced", self, checks)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Token-level divergence between teacher and student next-token distributions."""

  # The Literals spell out divergences.MODES and ("auto",) + divergences.NAMES for the override
  # parser (tests/test_config.py checks that they agree).
  mode: Literal["distill", "on_policy", "two_stage", "self_distill", "sft"] = "distill"
  # "auto": the mode's own (divergences.MODES): forward KL off-policy on references, reverse KL
  # on the student's own rollouts (on_policy, self_distill), cross-entropy for sft.
  divergence: Literal["auto", "forward_kl", "reverse_kl", "jsd", "akl", "ce"] = "auto"
  temperature: float = 1.0
  jsd_beta: float = 0.5  # 0: forward KL, 1: reverse KL (GKD convention)
  akl_mu: float = 0.5  # head/tail split of the adaptive KL
  # Scored positions per chunk of the fused full-vocabulary divergence; 0: unchunked; -1 (auto):
  # the largest that fits (paced_jax/memory.py auto_loss_chunk), resolved when the step compiles.
  chunk_size: int = -1
  # Forward KL on the teacher's top-k tokens only (off-policy distill mode); 0: full vocabulary.
  teacher_top_k: int = 0
  # Compare distributions over ids < vocab_limit only (0: the models' whole, equal vocabularies):
  # for one tokenizer with padded embeddings of different sizes (Qwen2.5-7B 152,064 rows ->
  # 0.5B 151,936), both models' padding rows are cut from the loss and never sampled.
  vocab_limit: int = 0
  two_stage_switch: float = 0.5  # fraction of steps on forward KL before reverse KL
  privileged_template: str = "{prompt}\nReference solution: {solution}\n"
  # How per-token losses become the batch loss, in both uses of the frontier weights (sampling
  # by pi, per-example loss weights): "token" mean over the batch's tokens, or "sequence" mean
  # of per-example token means. See losses.normalise.
  normalise: Literal["token", "sequence"] = "token"
  # Where the teacher's distribution comes from: "" runs the teacher in every step (online);
  # "offline:DIR" reads its top-k log-probabilities on the reference responses from DIR (written
  # once by `paced teacher-logits`, paced_jax/teacher_logits.py): no teacher model is loaded.
  teacher: str = ""
  offline_k: int = 64  # ids kept per scored position by `paced teacher-logits` (its --k)

  def __post_init__(self):
    check_choices("loss", self)
    _check("loss", self, [
        ("teacher", self.teacher == "" or (self.teacher.startswith("offline:")
                                           and bool(self.teacher[len("offline:"):].strip())),
         "'' (the teacher runs in the step) or 'offline:DIR' (logits written by paced "
         "teacher-logits)"),
        ("offline_k", self.offline_k >= 1, ">= 1 ids per scored position"),
        ("temperature", self.temperature > 0, "> 0"),
        ("jsd_beta", 0 <= self.jsd_beta <= 1, "in [0, 1] (0: forward KL, 1: reverse KL)"),
        ("akl_mu", 0 < self.akl_mu < 1, "in (0, 1)"),
        ("chunk_size", self.chunk_size >= -1,
         ">= 1 positions, 0 for unchunked or -1 for auto (what fits)"),
        ("teacher_top_k", self.teacher_top_k >= 0, ">= 0 (0: the full vocabulary)"),
        ("vocab_limit", self.vocab_limit >= 0, ">= 0 (0: the models' whole vocabulary)"),
        ("two_stage_switch", 0 < self.two_stage_switch < 1, "in (0, 1)")])
    m = divergences.mode(self.mode)
    if not m.takes_divergence and self.divergence not in ("auto", m.stages[0].divergence):
      raise ConfigError(
          f"loss.divergence={self.divergence!r} would be ignored: loss.mode={self.mode} trains "
          f"{m.summary}; set loss.divergence=auto")
    stages = divergences.stages(self.mode, self.divergence)
    for st, d in stages:
      if st.on_policy and d.references_only:
        raise ConfigError(
            f"loss.divergence={d.name!r} is defined on reference responses only, and "
            f"loss.mode={self.mode} trains on the student's own rollouts; choose a divergence "
            "against the teacher, or loss.mode=sft")
    if self.teacher_top_k and not all(d.top_k and not st.on_policy for st, d in stages):
      raise ConfigError(
          f"loss.teacher_top_k={self.teacher_top_k} works only for off-policy forward KL "
          f"(loss.mode=distill, loss.divergence=forward_kl); got loss.mode={self.mode!r}, "
          f"divergence {self.resolved_divergence!r}: set loss.teacher_top_k=0")
    if self.offline_dir:
      if m.teacher == "none":
        raise ConfigError(f"loss.teacher={self.teacher!r} with loss.mode={self.mode}, which trains "
                          f"{m.summary} without a teacher; set loss.teacher=''")
      if any(st.on_policy for st in m.stages) or m.teacher != "separate":
        raise ConfigError(
            f"loss.mode={self.mode} needs a live teacher ({m.summary}), and "
            f"loss.teacher={self.teacher!r} holds the teacher's logits on reference responses "
            "only; use loss.mode=distill, or loss.teacher='' to run the teacher")
      if self.resolved_divergence != "forward_kl":
        raise ConfigError(
            f"loss.divergence={self.divergence!r} with loss.teacher={self.teacher!r}: stored "
            "top-k teacher logits give forward KL only; set loss.divergence=forward_kl (or auto)")
      if self.teacher_top_k:
        raise ConfigError(
            f"loss.teacher_top_k={self.teacher_top_k} with loss.teacher={self.teacher!r}: the "
            "stored logits are top-k already (loss.offline_k, with the tail's mass); set "
            "loss.teacher_top_k=0")

  @property
  def offline_dir(self) -> str:
    """DIR of loss.teacher="offline:DIR", or "" when the teacher runs in the step."""
    return self.teacher[len("offline:"):].strip() if self.teacher.startswith("offline:") else ""

  @property
  def resolved_divergence(self) -> str:
    """The divergence of the (first) stage (divergences.resolve): `divergence`, or the mode's
    own when "auto" or when the mode fixes it."""
    return divergences.resolve(self.mode, self.divergence)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 200
  lr: float = 1e-3
  warmup_steps: int = 20
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  log_every: int = 10
  eval_every: int = 100
  ckpt_every: int = 100
  max_to_keep: int = 3
  init_student: str = ""  # Orbax checkpoint or Hugging Face directory; empty: random init
  init_teacher: str = ""
  # "cosine": warmup, then cosine decay to lr/10 at `steps`; "constant": warmup, then lr. Use
  # "constant" when a run may stop before `steps` (max_flops), so the stop point does not change
  # the schedule the run saw.
  schedule: Literal["cosine", "constant"] = "cosine"
  # Stop once the run's model FLOPs (train steps + every rollout: refresh estimates and on-policy
  # batches; see paced_jax/flops.py) reach this many; 0: off. Compute-matched comparisons.
  max_flops: float = 0.0

  def __post_init__(self):
    check_choices("train", self)
    _check("train", self, [
        ("steps", self.steps >= 1, ">= 1"),
        ("lr", self.lr >= 0, ">= 0 (a negative rate trains the loss upward)"),
        ("warmup_steps", self.warmup_steps >= 0, ">= 0 (0: no warmup)"),
        ("weight_decay", self.weight_decay >= 0, ">= 0"),
        ("b1", 0 <= self.b1 < 1, "in [0, 1)"), ("b2", 0 <= self.b2 < 1, "in [0, 1)"),
        ("grad_clip", self.grad_clip >= 0, ">= 0 (0: no clipping)"),
        ("log_every", self.log_every >= 1, ">= 1 step"),
        ("eval_every", self.eval_every >= 1, ">= 1 step"),
        ("ckpt_every", self.ckpt_every >= 1, ">= 1 step"),
        ("max_to_keep", self.max_to_keep >= 1,
         ">= 1 (the number of newest checkpoints kept; earlier ones are rotated out)"),
        ("max_flops", self.max_flops >= 0, ">= 0 (0 is off)")])


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  samples: int = 4  # k of avg@k
  temperature: float = 1.0
  max_problems: int = 200  # per split

  def __post_init__(self):
    _check("eval", self, [("samples", self.samples >= 1, ">= 1 (k of avg@k)"),
                          ("temperature", self.temperature >= 0, ">= 0 (0 is greedy)"),
                          ("max_problems", self.max_problems >= 0, ">= 0 (0: no evaluation)")])


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Frontier synthesis (`synthesis.py`): instead of a fixed pool, every refresh round trains
  on fresh problems of a generator's cells (task x level), made in proportion to each cell's
  frontier weight. Off (the run trains on data.*'s pool) while `source` is empty."""

  source: Literal["", "synthetic", "gym"] = ""
  tasks: tuple[str, ...] = ()  # synthetic families or reasoning-gym task names (empty: all
  # synthetic families; gym needs names, e.g. chain_sum,leg_counting,basic_arithmetic)
  levels: tuple[int, ...] = ()  # empty: every level the generator has (synthetic: 1..8)
  per_round: int = 256  # training problems made per round, over the cells
  probes_per_cell: int = 4  # fresh problems per cell estimated (paced.rollouts each) per round
  # Each round the cell counts are decay * old + new (0: only this round's probes count).
  decay: float = 0.5
  min_task_share: float = 0.05  # floor: each task gets at least this share of a round
  # Within a round: "uniform" over its problems, or "estimated": each problem weighted by its
  # own estimated pass rate (K rollouts each, as pools are) on top of the cell allocation.
  within_round: Literal["uniform", "estimated"] = "uniform"
  heldout_per_cell: int = 20  # eval problems per cell ("test"), and per probe cell

  def __post_init__(self):
    check_choices("generate", self)
    if len(set(self.tasks)) != len(self.tasks):
      raise ConfigError(f"generate.tasks={self.tasks} lists a task twice; list each once")
    if len(set(self.levels)) != len(self.levels):
      raise ConfigError(f"generate.levels={self.levels} lists a level twice")
    _check("generate", self, [
        ("per_round", self.per_round >= 1, ">= 1"),
        ("probes_per_cell", self.probes_per_cell >= 1, ">= 1"),
        ("decay", 0 <= self.decay < 1, "in [0, 1) (0: only the latest round counts)"),
        ("min_task_share", 0 <= self.min_task_share <= 1, "in [0, 1]"),
        ("heldout_per_cell", self.heldout_per_cell >= 0, ">= 0 (0: no generated eval)")])


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run."""

  model: ModelConfig = ModelConfig()  # the student
  teacher: ModelConfig | None = None
  mesh: MeshConfig = MeshConfig()
  data: DataConfig = DataConfig()
  sample: SampleConfig = SampleConfig()
  paced: PacedConfig = PacedConfig()
  loss: LossConfig = LossConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  generate: GenerateConfig = GenerateConfig()
  seed: int = 0
  name: str = "run"

  def __post_init__(self):
    check_choices("", self)
    limit = self.loss.vocab_limit
    for role, m in (("student", self.model), ("teacher", self.teacher)):
      if limit and m is not None and limit > m.vocab_size:
        raise ConfigError(f"loss.vocab_limit={limit} exceeds the {role}'s vocab_size="
                          f"{m.vocab_size}; it is the tokenizer's real vocabulary, at most both")
    if self.paced.reuse_rollouts and (not divergences.trains_on_rollouts(self.loss.mode)
                                      or self.paced.weighting == "uniform"):
      why = ("uniform weighting estimates nothing" if self.paced.weighting == "uniform" else
             f"loss.mode={self.loss.mode} trains on no rollouts of the student")
      raise ConfigError(f"paced.reuse_rollouts={self.paced.reuse_rollouts} has nothing to reuse: "
                        f"{why}; set it to 0, or use loss.mode=on_policy, two_stage or "
                        "self_distill with a frontier weighting")
    if self.loss.offline_dir and self.data.reference == "teacher":
      raise ConfigError(f"data.reference=teacher needs a live teacher (it samples the references), "
                        f"and loss.teacher={self.loss.teacher!r} loads none; use "
                        "data.reference=dataset, or loss.teacher='' to run the teacher")
    if self.loss.offline_dir and self.generate.source:
      raise ConfigError(f"generate.source={self.generate.source} makes new problems every round, "
                        f"and loss.teacher={self.loss.teacher!r} holds logits of a fixed pool; "
                        "use a data.* pool, or loss.teacher='' to run the teacher")
    if self.paced.train_outcomes and not divergences.trains_on_rollouts(self.loss.mode):
      raise ConfigError(f"paced.train_outcomes has nothing to verify: loss.mode="
                        f"{self.loss.mode} trains on no rollouts of the student; use on_policy, "
                        "self_distill or two_stage, or set paced.train_outcomes=false")
    if self.paced.train_outcomes and self.generate.source:
      raise ConfigError("paced.train_outcomes with generate.source: every round trains on new "
                        "problems, so no trained outcome is ever read back; set "
                        "paced.train_outcomes=false (the cells' probes estimate the round)")
    k = self.loss.teacher_top_k
    if k and limit and k > limit:
      raise ConfigError(f"loss.teacher_top_k={k} exceeds loss.vocab_limit={limit}")
    if k and self.teacher is not None and k > self.teacher.vocab_size:
      raise ConfigError(f"loss.teacher_top_k={k} exceeds the teacher's vocabulary "
                        f"({self.teacher.vocab_size}); use at most that, or 0 for all of it")


# ----------------------------------------------------------------------------- loading


def add_config_args(p: argparse.ArgumentParser) -> None:
  """The CONFIG and --set arguments every config-reading subcommand takes (for `load_config`)."""
  p.add_argument("config", help="configs/NAME.py or configs/NAME.py:ARG (ARG goes to get_config)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set model.num_layers=4 (repeatable)")


def load_config(spec: str, overrides: typing.Sequence[str] = ()) -> Config:
  """`spec` is `path/to/config.py` or `path/to/config.py:ARG`; overrides are `key=value`."""
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path!r} does not exist; pass a path such as "
                      "configs/demo.py or configs/demo.py:tiny")
  mod_spec = importlib.util.spec_from_file_location(f"_paced_config_{file.stem}", file)
  module = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(module)
  except ConfigError:
    raise
  except Exception as e:  # a broken config file is still a user error: one line
    raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
  try:
    cfg = module.get_config(arg)
  except ConfigError:
    raise
  except Exception as e:  # any error of the user's code is one line naming the file
    raise ConfigError(f"{path}:get_config({arg!r}) failed: {type(e).__name__}: {e}") from e
  if not dataclasses.is_dataclass(cfg):
    raise ConfigError(f"{path}:get_config({arg!r}) returned {type(cfg).__name__}, not a Config")
  return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Any, overrides: typing.Sequence[str]) -> Any:
  """Applies `key.sub=value` overrides; each section is rebuilt once with all its changes, so
  the order of overrides never matters (no intermediate state is validated)."""
  items = []
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    items.append((key.strip().split("."), raw.strip(), key.strip()))
  return _set(cfg, items) if items else cfg


def _set(obj: Any, items: list[tuple[list[str], str, str]]) -> Any:
  """`obj` with every (parts, raw, full_key) in `items` applied; parts are relative to obj."""
  hints = typing.get_type_hints(type(obj))
  names = [f.name for f in dataclasses.fields(obj)]
  groups: dict[str, list] = {}
  for parts, raw, full_key in items:
    if parts[0] not in names:
      prefix = full_key[: len(full_key) - len(".".join(parts))]
      raise ConfigError(f"unknown config key {full_key!r}; valid keys under "
                        f"{prefix.rstrip('.') or 'the top level'!r}: {', '.join(names)}")
    groups.setdefault(parts[0], []).append((parts, raw, full_key))
  changes = {}
  for head, group in groups.items():
    typ, value = hints[head], getattr(obj, head)
    # A whole value (`model.rope_scaling=none`) replaces what came before it; later sub-keys
    # (`model.rope_scaling.factor=16`) apply on top of it.
    whole = [i for i, (parts, _, _) in enumerate(group) if len(parts) == 1]
    if whole:
      _, raw, full_key = group[whole[-1]]
      value = _parse(raw, typ, full_key)
      group = group[whole[-1] + 1:]
    if group:
      sub_type = _dataclass_in(typ)
      if sub_type is None:
        raise ConfigError(f"config key {group[0][2]!r}: {head!r} is a {_describe(typ)}, not a "
                          "section")
      if value is None:  # an optional section being filled in, e.g. teacher.hidden=...
        value = sub_type()
      value = _set(value, [(parts[1:], raw, key) for parts, raw, key in group])
    changes[head] = value
  try:
    return dataclasses.replace(obj, **changes)
  except ConfigError as e:
    given = ", ".join(f"{key}={raw}" for _, raw, key in items)
    raise ConfigError(f"override{'s' if len(items) > 1 else ''} {given}: {e}") from None


def _dataclass_in(typ: Any) -> type | None:
  if dataclasses.is_dataclass(typ):
    return typ
  for arg in typing.get_args(typ):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def _describe(typ: Any) -> str:
  if typing.get_origin(typ) is Literal:
    return "one of " + ", ".join(repr(a) for a in typing.get_args(typ))
  if _is_union(typ):
    return " or ".join(_describe(a) for a in typing.get_args(typ))
  if typ is type(None):
    return "none"
  return getattr(typ, "__name__", str(typ))


def _parse(raw: str, typ: Any, key: str) -> Any:
  """Parses `raw` as `typ`; raises ConfigError naming the key and the valid choices."""
  bad = ConfigError(f"config key {key!r} expects {_describe(typ)}, got {raw!r}")
  if _is_union(typ):
    args = typing.get_args(typ)
    if type(None) in args and raw.lower() in ("none", "null"):
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _parse(raw, arg, key)
      except ConfigError:
        pass
    raise bad
  if typing.get_origin(typ) is Literal:
    for choice in typing.get_args(typ):
      if str(choice) == raw:
        return choice
    raise bad
  if typ is bool:
    low = raw.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise bad
  if typ is int:
    try:
      return int(raw.replace("_", ""))
    except ValueError:
      raise bad from None
  if typ is float:
    try:
      return float(raw)
    except ValueError:
      raise bad from None
  if typ is str:
    return raw
  if typing.get_origin(typ) is tuple:
    elem = typing.get_args(typ)[0]
    items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
    return tuple(_parse(s.strip(), elem, key) for s in items)
  if dataclasses.is_dataclass(typ):
    try:
      return typ(**json.loads(raw))
    except (json.JSONDecodeError, TypeError) as e:
      raise ConfigError(f"config key {key!r} expects a JSON object of {typ.__name__} fields, "
                        f"got {raw!r} ({e})") from None
  raise bad


def to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=False)
