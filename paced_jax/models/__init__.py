"""Decoder family (Llama-3, Qwen2/2.5, Qwen3), KV cache and presets."""

from paced_jax.models.presets import PRESETS, get_preset, param_count
from paced_jax.models.transformer import Decoder, KVCache

__all__ = ["Decoder", "KVCache", "PRESETS", "get_preset", "param_count"]
