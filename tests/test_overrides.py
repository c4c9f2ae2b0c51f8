"""`--set` overrides are applied together and validated once, on the final config."""

import pytest

from paced_jax.config import Config, ConfigError, RopeScaling, apply_overrides

HEADS = ["model.num_kv_heads=3", "model.num_heads=6"]  # defaults 4 / 2: valid only together


@pytest.mark.parametrize("order", [HEADS, HEADS[::-1]])
def test_override_order_does_not_matter(order):
  cfg = apply_overrides(Config(), order)
  assert (cfg.model.num_heads, cfg.model.num_kv_heads) == (6, 3)


def test_teacher_section_built_once():
  cfg = apply_overrides(Config(), ["teacher.num_kv_heads=3", "teacher.num_heads=9", "seed=2"])
  assert (cfg.teacher.num_heads, cfg.teacher.num_kv_heads, cfg.seed) == (9, 3, 2)


def test_later_override_wins_and_whole_then_sub():
  cfg = apply_overrides(Config(), ["seed=1", "seed=5", "model.rope_scaling=none",
                                   "model.rope_scaling.factor=4"])
  assert cfg.seed == 5 and cfg.model.rope_scaling == RopeScaling(factor=4.0)
  cfg = apply_overrides(Config(), ["model.rope_scaling.factor=4", "model.rope_scaling=none"])
  assert cfg.model.rope_scaling is None


def test_final_state_still_validated():
  with pytest.raises(ConfigError, match=r"^overrides model.num_heads=6, model.num_kv_heads=4: "
                     r"model.num_heads=6 is not a multiple"):
    apply_overrides(Config(), ["model.num_heads=6", "model.num_kv_heads=4"])
