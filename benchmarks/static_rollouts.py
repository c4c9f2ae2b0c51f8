"""The static-batch baseline behind the `Rollouts` interface: `sampler.generate` on `rows` rows
per call (a finished row keeps its slot until the longest row ends; each prompt is prefilled K
times). The benchmarks' comparison row for `paced_jax.rollouts.Engine`; no run uses it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from paced_jax.config import SampleConfig
from paced_jax.distributed import to_host
from paced_jax.flops import output_flops
from paced_jax.models.transformer import Decoder
from paced_jax.rollouts import RolloutOutput
from paced_jax.sampler import Knobs, Sample, Strategy, generate, per_row


@dataclasses.dataclass
class StaticRollouts:
  """`Rollouts` over the static-batch sampler (sampler.generate), `rows` rows per call: the
  baseline the engine replaces, kept for comparisons."""

  model: Decoder
  rows: int = 64
  strategy: Strategy = Sample()
  mesh: Mesh | None = None
  prompt_buckets: Sequence[int] = SampleConfig.prompt_buckets
  budget_buckets: Sequence[int] = SampleConfig.budget_buckets

  def set_params(self, params) -> None:
    self.model = nnx.merge(nnx.graphdef(self.model), params)

  def sample(self, prompts, *, rollouts, knobs=Knobs(), rng=0, stop_ids=None, pad_id=0,
             row_offset=0, streams=None) -> RolloutOutput:
    if streams is not None:  # generate's row streams are consecutive from row_offset
      streams = np.asarray(streams)
      if not np.array_equal(streams, streams[0] + np.arange(len(streams))):
        raise ValueError("StaticRollouts needs consecutive streams (sampler.generate rows)")
      row_offset = int(streams[0])
    N, K = len(prompts), rollouts
    per = max(1, self.rows // K)
    row = functools.partial(per_row, n_prompts=N, rollouts=K, n_rows=N * K)
    kn = Knobs(row(knobs.temperature, np.float32, name="temperature"),
               row(knobs.top_k, np.int32, name="top_k"), row(knobs.top_p, np.float32, name="top_p"),
               row(knobs.max_new_tokens, np.int32, name="max_new_tokens"))
    parts, flops, steps, busy = [], 0.0, 0, 0
    for s in range(0, N, per):
      n = min(per, N - s)
      out = generate(self.model, prompts[s:s + n], rng=rng,
                     knobs=jax.tree.map(lambda a: a[s * K:(s + n) * K], kn), eos_id=stop_ids,
                     pad_id=pad_id, mesh=self.mesh, rollouts=K, strategy=self.strategy,
                     prompt_buckets=self.prompt_buckets, budget_buckets=self.budget_buckets,
                     pad_rows_to=per * K, row_offset=row_offset + s * K)
      parts.append(tuple(map(to_host, (out.tokens_BS, out.logprobs_BS, out.lengths_B))))
      flops += output_flops(self.model.cfg, out)
      steps += int(out.steps) - 1  # decode iterations (token 0 comes from the prefill)
      busy += int(np.sum(parts[-1][2] - 1))
    new = max(p[0].shape[1] for p in parts)
    pad = lambda a, v: np.pad(a, ((0, 0), (0, new - a.shape[1])), constant_values=v)
    return RolloutOutput(tokens_BS=np.concatenate([pad(p[0], pad_id) for p in parts]),
                         logprobs_BS=np.concatenate([pad(p[1], 0) for p in parts]),
                         lengths_B=np.concatenate([p[2] for p in parts]), slots=per * K,
                         steps=steps, busy=busy, computed_flops=flops)
