"""Real presets have their published parameter counts (computed without allocating)."""

import pytest

from paced_jax.config import ConfigError
from paced_jax.models import get_preset, param_count

# Published totals (Hugging Face model cards / safetensors metadata).
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
    "qwen3-14b": 14_768_307_200,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_param_counts(name):
  assert param_count(get_preset(name)) == PUBLISHED[name]


def test_unknown_preset():
  with pytest.raises(ConfigError, match="unknown model preset 'gpt5'; choose one of: qwen2.5-0.5b"):
    get_preset("gpt5")
