"""A test double of an external rollout server: `rollouts.Rollouts` implemented over
`sampler.generate` (the static sampler, the oracle), one generate call per prompt, with a log of
every call. `sample.engine=oracle_rollouts:make` puts it behind a whole run."""

from __future__ import annotations

import numpy as np
from flax import nnx

from paced_jax.rollouts import RolloutOutput
from paced_jax.sampler import Sample, generate

CALLS: list[dict] = []  # one entry per sample / set_params call, for the tests to read


class OracleRollouts:

  def __init__(self, model, cfg=None, mesh=None):
    self.model, self.mesh = model, mesh
    self.strategy = Sample(cfg.loss.vocab_limit if cfg is not None else 0)
    self.buckets = ((cfg.sample.prompt_buckets, cfg.sample.budget_buckets) if cfg is not None
                    else ((32, 64, 128, 256), (32, 64, 128, 256)))

  def set_params(self, params) -> None:
    self.model = nnx.merge(nnx.graphdef(self.model), params)
    CALLS.append({"call": "set_params", "params": params})

  def sample(self, prompts, *, rollouts, knobs, rng, stop_ids, pad_id, row_offset=0,
             streams=None) -> RolloutOutput:
    K = rollouts
    streams = (np.arange(row_offset, row_offset + len(prompts) * K) if streams is None
               else np.asarray(streams))
    toks, lps, lens = [], [], []
    for i, prompt in enumerate(prompts):
      first = int(streams[i * K])  # generate draws rows first, first + 1, ... of its key
      assert list(streams[i * K:(i + 1) * K]) == list(range(first, first + K))
      out = generate(self.model, [list(prompt)], rng=rng, knobs=knobs, eos_id=stop_ids,
                     pad_id=pad_id, rollouts=K, strategy=self.strategy, row_offset=first,
                     prompt_buckets=self.buckets[0], budget_buckets=self.buckets[1])
      toks.append(np.asarray(out.tokens_BS))
      lps.append(np.asarray(out.logprobs_BS))
      lens.append(np.asarray(out.lengths_B))
    width = max(t.shape[1] for t in toks)
    pad = lambda a, v: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=v)
    CALLS.append({"call": "sample", "prompts": [list(p) for p in prompts], "rollouts": K,
                  "model": self.model})
    return RolloutOutput(tokens_BS=np.concatenate([pad(t, pad_id) for t in toks]),
                         logprobs_BS=np.concatenate([pad(t, 0.0) for t in lps]),
                         lengths_B=np.concatenate(lens), computed_flops=None)


def make(model, cfg, mesh):
  """The `sample.engine` factory."""
  return OracleRollouts(model, cfg, mesh)


def half(text, problem) -> bool:
  """A verifier for random tiny models: about half the responses pass (by length parity)."""
  return len(text) % 2 == 0
