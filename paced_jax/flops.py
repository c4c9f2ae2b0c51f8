"""FLOPs of the distillation step and of rollouts, and MFU.

ONE convention for everything a run spends (train steps and rollouts alike): count the matmul
FLOPs the hardware executes for the programs as they are shaped. A matmul of [M, K] x [K, N] is
2*M*K*N FLOPs; only matmuls are counted (not the embedding gather, biases, norms, RoPE,
softmax, activations). Concretely:

  * padded rows and padded positions count: a step computes its whole [B, T] bucket, a rollout
    batch all of its row slots (padding rows, and rows that already stopped) until the last
    row stops;
  * attention counts every key slot multiplied: the full T x T square in a train step (the
    model masks, it does not skip the upper triangle), and all S = prompt bucket + budget
    bucket cache slots in every prefill and decode step of the sampler;
  * the unembedding counts where logits are computed: at the scored positions of a train step
    (padded to a whole chunk), at one position per row after prefill, at every decode step;
  * recomputation counts: model.remat="full" recomputes the forward of every block in the
    backward pass ("dots_no_batch": its attention). The chunked loss recomputes nothing: it is
    fused (paced_jax/fused_loss.py: logits, dh and dW in one pass), so a scored position costs
    3 student unembedding matmuls and 1 teacher one, chunked or not;
  * backward = 2x forward (one matmul for the input gradient, one for the weight gradient).

Per token of a T-token sequence, one decoder (D model, L layers, N q-heads, K kv-heads, H head
dim, F mlp, V vocab), attending over S key slots:
    body        2 * L * (D*N*H [q] + 2*D*K*H [k, v] + N*H*D [o] + 3*D*F [gate, up, down])
    attention   4 * L * S * N * H     (q.k and p.v, each 2*S*N*H)
    unembedding 2 * D * V             (only where logits are computed)

  train step  = 3 * (body + attention(T)) * B*T  +  3 * unembed * B*R  [student]
              +     (body + attention(T)) * B*T  +      unembed * B*R  [teacher]
              + recomputation (remat)      R: scored positions, padded to whole loss chunks
  generate    = rows * P * (body + attention(S)) + rows * unembed               [prefill]
              + (steps - 1) * rows * (body + attention(S) + unembed)            [decode]

MFU divides the same count by time and peak (`mfu`): "what the hardware computes", so
recomputation lowers MFU only through time, never by being left out.

Worked example (tests/test_flops.py checks the forward part against XLA's cost analysis):
qwen2.5-0.5b student + qwen2.5-1.5b teacher at T = 2048 -> about 6.93e9 FLOPs per token
(unchunked, no remat).
"""

from __future__ import annotations

from typing import Any

from paced_jax.config import ModelConfig

# Dense bf16 peak FLOP/s per chip (no sparsity). Matched as substrings of `device.device_kind`,
# first match wins, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
)


def block_matmul_params(cfg: ModelConfig) -> int:
  """Matmul weights of one transformer block (q, k, v, o, gate, up, down; no biases)."""
  D, N, K, H, F = cfg.hidden, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return D * N * H + 2 * D * K * H + N * H * D + 3 * D * F


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, scored_len: int | None = None
                            ) -> float:
  """Matmul FLOPs of one forward pass per token (see the module docstring)."""
  scored = seq_len if scored_len is None else scored_len
  body = 2 * cfg.num_layers * block_matmul_params(cfg)
  attention = 4 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  unembed = 2 * cfg.hidden * cfg.vocab_size * scored / seq_len
  return float(body + attention + unembed)


def train_flops_per_token(student_cfg: ModelConfig, teacher_cfg: ModelConfig | None,
                          seq_len: int, scored_len: int | None = None) -> float:
  """Model FLOPs per token of one distillation step: 3x the student forward (forward and
  backward) plus the teacher forward; `teacher_cfg=None` for SFT (no teacher)."""
  flops = 3 * forward_flops_per_token(student_cfg, seq_len, scored_len)
  if teacher_cfg is not None:
    flops += forward_flops_per_token(teacher_cfg, seq_len, scored_len)
  return flops


def body_flops_per_token(cfg: ModelConfig) -> float:
  return 2.0 * cfg.num_layers * block_matmul_params(cfg)


def attention_flops_per_token(cfg: ModelConfig, key_slots: int) -> float:
  return 4.0 * cfg.num_layers * key_slots * cfg.num_heads * cfg.head_dim


def unembed_flops(cfg: ModelConfig) -> float:
  return 2.0 * cfg.hidden * cfg.vocab_size


def generate_flops(cfg: ModelConfig, rows: int, prompt_len: int, cache_len: int, steps: int
                   ) -> float:
  """FLOPs of one `sampler.generate` call as computed: prefill of `rows` x `prompt_len` (the
  prompt bucket) attending over `cache_len` slots with logits at one position per row, then
  `steps - 1` decode steps of every row slot (see the module docstring)."""
  if rows <= 0 or steps <= 0:
    return 0.0
  layer = body_flops_per_token(cfg) + attention_flops_per_token(cfg, cache_len)
  prefill = rows * prompt_len * layer + rows * unembed_flops(cfg)
  return float(prefill + (steps - 1) * rows * (layer + unembed_flops(cfg)))


def output_flops(cfg: ModelConfig, out) -> float:
  """generate_flops of a `sampler.SampleOutput` (reads its step count back from the device)."""
  steps = 0 if out.steps is None else int(out.steps)
  return generate_flops(cfg, out.rows, out.prompt_len, out.cache_len, steps)


def step_flops(student_cfg: ModelConfig, teacher_cfg: ModelConfig | None, rows: int,
               seq_len: int, scored_len: int | None = None, chunk: int = 0,
               teacher_seq_len: int | None = None) -> float:
  """FLOPs of one train step on a [rows, seq_len] batch as computed (padding included: the
  step computes every position of the bucket), scoring `scored_len` positions per row (default
  all) in fused chunks of `chunk` (0: unchunked). `teacher_seq_len`: the teacher's own row
  length when it reads other tokens (self-distillation's privileged prompt; default seq_len)."""
  R = seq_len if scored_len is None else scored_len
  if 0 < chunk < R:
    R = -(-R // chunk) * chunk  # the last chunk is padded and computed whole
  scored = rows * R

  def model(cfg, passes, T):  # body+attention passes; the unembedding is added per scored position
    layer = body_flops_per_token(cfg) + attention_flops_per_token(cfg, T)
    extra = {"full": layer,
             "dots_no_batch": attention_flops_per_token(cfg, T)}.get(cfg.remat, 0.0)
    return rows * T * (passes * layer + (extra if passes == 3 else 0.0))

  flops = model(student_cfg, 3, seq_len) + scored * unembed_flops(student_cfg) * 3
  if teacher_cfg is not None:
    flops += (model(teacher_cfg, 1, teacher_seq_len or seq_len)
              + scored * unembed_flops(teacher_cfg))
  return float(flops)


def peak_flops(device: Any) -> float | None:
  """Dense bf16 peak FLOP/s of one chip, or None when unknown (CPU, unlisted accelerators)."""
  if getattr(device, "platform", "cpu") == "cpu":
    return None
  kind = str(getattr(device, "device_kind", ""))
  for name, peak in PEAK_BF16_FLOPS:
    if name.lower() in kind.lower():
      return peak
  return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None without a known peak. For several chips pass the
  summed peak (peak_flops(device) * num_devices)."""
  if not peak:
    return None
  return tokens_per_s * flops_per_token / peak
