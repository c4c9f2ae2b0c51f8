"""Loss-buffer counts and the loss.chunk_size=-1 (auto) choice.

Shared by the step (which resolves the chunk when it compiles) and the planner (which counts
the same buffers), so neither imports the other. Pure arithmetic on the config: no jax.
"""

from __future__ import annotations

from paced_jax.config import Config

LOSS_BUFFERS = 12  # live fp32 [b, R, V] buffers of the unchunked divergence, fwd + bwd
# ... of the fused chunked divergence (one chunk's logits, softmaxes and dz; nothing is kept for
# the backward): measured 5.2 per [b, chunk, V] on XLA:CPU (benchmarks/results/plan.md).
LOSS_BUFFERS_FUSED = 6
LOSS_SHARE = 0.1  # of device memory that loss.chunk_size=-1 (auto) gives the loss buffers


def shard_div(n: int, by: int) -> float:
  """n / by when the mesh axis divides n (sharded), else n (replicated, as logical_to_spec)."""
  return n / by if n % by == 0 else n


def offline_batch_bytes(cfg: Config, rows: float) -> float:
  """Bytes of the offline teacher's batch arrays (loss.teacher=offline:DIR) of `rows` rows at
  the largest length bucket: teacher_ids int32 and teacher_logp float16 [rows, R, k],
  teacher_log_tail float32 [rows, R] (data/pipeline.py)."""
  R = min(cfg.data.max_response_len, max(cfg.data.length_buckets))
  return rows * R * (cfg.loss.offline_k * (4 + 2) + 4)


def auto_loss_chunk(cfg: Config, mesh: dict[str, int], device_memory: int | None) -> int:
  """loss.chunk_size=-1 (auto): the largest power-of-two chunk of scored positions whose loss
  buffers (LOSS_BUFFERS_FUSED fp32 [b, chunk, V/tensor], the planner's count) fit in LOSS_SHARE
  of the device memory (1 GiB when the device reports none, e.g. CPU); the whole response (one
  chunk) when that fits. The fused loss recomputes nothing, so a smaller chunk costs only loop
  steps."""
  R = min(cfg.data.max_response_len, max(cfg.data.length_buckets))
  b = cfg.data.batch_size / (mesh["data"] * mesh["fsdp"])
  per_position = LOSS_BUFFERS_FUSED * b * shard_div(cfg.model.vocab_size, mesh["tensor"]) * 4
  budget = LOSS_SHARE * device_memory if device_memory else 2**30
  if R * per_position <= budget:
    return R
  chunk = 16
  while chunk * 2 * per_position <= budget and chunk * 2 < R:
    chunk *= 2
  return chunk
