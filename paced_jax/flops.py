"""Model FLOPs per token and MFU for the distillation step.

Counting convention (the PaLM / nanoGPT "model FLOPs" one): a matmul of [M, K] x [K, N] is
2*M*K*N FLOPs; the backward pass costs twice the forward (one matmul for the input gradient, one
for the weight gradient), so training is 3x the forward. Only matmuls are counted:

  forward, per token of a T-token sequence, for one decoder (D model, L layers, N q-heads,
  K kv-heads, H head dim, F mlp, V vocab):
    2 * P_matmul                  P_matmul = L * (D*N*H [q] + 2*D*K*H [k, v] + N*H*D [o]
                                                  + 3*D*F [gate, up, down]) + D*V [unembedding]
    + 4 * L * T * N * H           attention scores q.k and the weighted sum p.v, each 2*T*N*H per
                                  token per layer; the FULL T x T square is counted (the model
                                  computes it and masks, it does not skip the upper triangle)

  Not counted: the embedding gather (no matmul), biases, norms, RoPE, softmax, activations,
  the loss. Not counted either: recomputation (remat, and the chunked loss recomputing its logits
  in the backward pass) -- MFU counts the model's FLOPs, not the hardware's, so remat lowers MFU.

  distillation step = 3 * forward(student) + forward(teacher)
                    = 6 * P_s + 12 * L_s*T*N_s*H_s  +  2 * P_t + 4 * L_t*T*N_t*H_t

The step only unembeds the scored positions (`losses.chunked_divergence` gathers them first), so
`scored_len` (default: all T) scales the D*V terms by scored_len / T.

Worked example (tests/test_flops.py checks the forward part against XLA's cost analysis):
qwen2.5-0.5b student + qwen2.5-1.5b teacher at T = 2048 -> about 6.93e9 FLOPs per token.
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


def sample_flops(cfg: ModelConfig, prompt_tokens: int, generated_tokens: int, rows: int
                 ) -> float:
  """Model FLOPs of generating with the KV cache: every prompt and generated token passes the
  model once. Attention is counted at the rows' mean final length (prompt + response), the same
  full-square convention as training; decoding only attends to the tokens before it, so this
  overcounts attention by up to 2x, which at the lengths where sampling costs matter (body and
  unembedding dominate) is a few percent. Padding is not counted: the sampler stops rows at their
  stop token, and model FLOPs count the model's work, not the padded batch's."""
  tokens = prompt_tokens + generated_tokens
  if tokens <= 0 or rows <= 0:
    return 0.0
  return tokens * forward_flops_per_token(cfg, max(round(tokens / rows), 1))


def step_flops(student_cfg: ModelConfig, teacher_cfg: ModelConfig | None, rows: int,
               seq_len: int, scored_len: int | None = None) -> float:
  """Model FLOPs of one train step on a [rows, seq_len] batch (padding included: the step
  computes every position of the bucket)."""
  return rows * seq_len * train_flops_per_token(student_cfg, teacher_cfg, seq_len, scored_len)


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
