"""paced_jax: PACED distillation (arXiv 2603.11178) of LLMs in JAX / Flax NNX.

Tensor names carry their shapes (nanodo style); the letters mean:
  B batch, T query length, S key / cache length, D model width, N query heads, K kv heads,
  G query heads per kv head (N // K), H head dim, F mlp width, V vocabulary, L layers.
"""

__version__ = "0.1.0"
