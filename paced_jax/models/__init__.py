"""Decoder family (Llama-3, Qwen2/2.5, Qwen3), KV cache and presets."""

from paced_jax.models.presets import PRESETS, get_preset, param_count
from paced_jax.models.transformer import Decoder, KVCache


def __getattr__(name):  # HF/Orbax I/O is imported on first use (safetensors, orbax)
  if name in ("load_hf_model", "export_hf"):
    from paced_jax.models import hf
    return getattr(hf, name)
  if name in ("load_model", "save_model"):
    from paced_jax.models import io
    return getattr(io, name)
  raise AttributeError(name)


__all__ = ["Decoder", "KVCache", "PRESETS", "get_preset", "param_count", "load_hf_model",
           "export_hf", "load_model", "save_model"]
