"""Model presets by name: the real shapes of public checkpoints, plus tiny ones for tests.

`param_count(cfg)` counts parameters with `nnx.eval_shape` (nothing is allocated); the tests pin
the real presets to their published counts.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from paced_jax.config import ConfigError, ModelConfig, RopeScaling

_QWEN25 = dict(arch="qwen2", vocab_size=151_936, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True,
               max_seq_len=32_768)
_QWEN3 = dict(arch="qwen3", vocab_size=151_936, rope_theta=1e6, rms_eps=1e-6, qk_norm=True,
              head_dim=128, max_seq_len=40_960)
_LLAMA3 = dict(arch="llama", vocab_size=128_256, rope_theta=500_000.0, rms_eps=1e-5,
               max_seq_len=131_072)
_BENCH = dict(arch="qwen2", vocab_size=4096, num_layers=4, num_kv_heads=2, head_dim=64,
              rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, tie_embeddings=True, max_seq_len=2048)

PRESETS: dict[str, ModelConfig] = {
    # Qwen2.5 (q/k/v bias)
    "qwen2.5-0.5b": ModelConfig(**_QWEN25, hidden=896, num_layers=24, num_heads=14,
                                num_kv_heads=2, head_dim=64, mlp_dim=4864, tie_embeddings=True),
    "qwen2.5-1.5b": ModelConfig(**_QWEN25, hidden=1536, num_layers=28, num_heads=12,
                                num_kv_heads=2, head_dim=128, mlp_dim=8960, tie_embeddings=True),
    "qwen2.5-7b": ModelConfig(**{**_QWEN25, "vocab_size": 152_064}, hidden=3584, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18_944,
                              tie_embeddings=False),
    # Qwen3 (per-head q/k RMSNorm, no bias)
    "qwen3-0.6b": ModelConfig(**_QWEN3, hidden=1024, num_layers=28, num_heads=16,
                              num_kv_heads=8, mlp_dim=3072, tie_embeddings=True),
    "qwen3-8b": ModelConfig(**_QWEN3, hidden=4096, num_layers=36, num_heads=32, num_kv_heads=8,
                            mlp_dim=12_288, tie_embeddings=False),
    "qwen3-14b": ModelConfig(**_QWEN3, hidden=5120, num_layers=40, num_heads=40, num_kv_heads=8,
                             mlp_dim=17_408, tie_embeddings=False),
    # Llama 3 (llama3 RoPE scaling)
    "llama-3.2-1b": ModelConfig(**_LLAMA3, hidden=2048, num_layers=16, num_heads=32,
                                num_kv_heads=8, head_dim=64, mlp_dim=8192, tie_embeddings=True,
                                rope_scaling=RopeScaling(factor=32.0)),
    "llama-3.1-8b": ModelConfig(**_LLAMA3, hidden=4096, num_layers=32, num_heads=32,
                                num_kv_heads=8, head_dim=128, mlp_dim=14_336,
                                tie_embeddings=False, rope_scaling=RopeScaling(factor=8.0)),
    # benchmark shapes (shared/BENCH_SHAPES.md)
    "cpu-student": ModelConfig(**_BENCH, hidden=256, num_heads=4, mlp_dim=1024),
    "cpu-teacher": ModelConfig(**_BENCH, hidden=512, num_heads=8, mlp_dim=2048),
    # tiny, for tests: one per architecture
    "tiny-qwen2": ModelConfig(arch="qwen2", vocab_size=128, hidden=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, mlp_dim=128, qkv_bias=True,
                              rope_theta=1e6, max_seq_len=256),
    "tiny-qwen3": ModelConfig(arch="qwen3", vocab_size=128, hidden=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, mlp_dim=128, qk_norm=True,
                              tie_embeddings=False, rope_theta=1e6, max_seq_len=256),
    "tiny-llama": ModelConfig(arch="llama", vocab_size=128, hidden=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, mlp_dim=128, rms_eps=1e-5,
                              rope_theta=500_000.0, max_seq_len=256,
                              rope_scaling=RopeScaling(factor=8.0,
                                                       original_max_position_embeddings=32)),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def param_count(cfg: ModelConfig) -> int:
  """Exact parameter count from abstract shapes (no memory is allocated)."""
  from paced_jax.models.transformer import Decoder

  state = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
