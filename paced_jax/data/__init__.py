"""Problem sources, tokenisation and the Grain frontier pipeline."""

from paced_jax.data.schema import Problem

__all__ = ["Problem"]
