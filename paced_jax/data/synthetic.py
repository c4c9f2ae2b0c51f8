"""The built-in synthetic reasoning suite: a random-access problem source and its TFDS builder.

Six families with verifiable answers and graded difficulty 1..`data.synthetic_levels` (see
`synthetic_families.py` for the formats). Problems are short (prompt <= 48 characters, reference
solution <= 96 at level 5 and <= 120 at level 8) and printable ASCII, so a character-level
student of ~1M parameters can learn the easy levels in minutes on a CPU.

Rules, so that a pool of any size needs no materialisation and never leaks:

- Random access. Problem i of a split is a pure function of (seed, split, i): it is drawn from
  `np.random.default_rng([seed, split_code, i])`. Its id, e.g. "add3/train/s0/17", names every
  input, so a PassRateTable stays keyed correctly when the pool is rebuilt.
- Mixing. Problem i falls in cell i mod C of the C = families x levels cells, ordered
  (family 0, level 1), (family 0, level 2), ..., (family 1, level 1), ...: round robin, so every
  prefix of a split (an eval cap, say) is balanced over families and levels to within one problem.
- Pool composition. With `data.synthetic_level_weights` (relative weight per level) the train
  split keeps the family round robin (family i mod F) but gives the j-th problem of a family
  (j = i // F) the level where frac((j + 1/2) / golden ratio) falls in the cumulative level
  weights: a fixed low-discrepancy sequence, so every prefix of the split matches the weights
  to within a few problems per family, with no rng and no materialisation. Equal weights are
  the round robin. The held-out splits ignore the weights: they stay balanced per (family,
  level), so accuracy per level is measured on every pool (weight it by the pool's composition
  to score a pool, as benchmarks/phase_diagram.py does).
- Held out by construction. Every prompt has a partition fixed by its hash:
  blake2b(prompt) mod 16 == 0 is "test", == 1 is "probe", anything else is "train". A split draws
  (and redraws with the same rng) until the prompt lies in its own partition, so test and probe
  never contain a train prompt, whatever the seeds and pool sizes. Small cells (level 1 of mul
  and sort have ~1000 prompts) may repeat a prompt within a held-out split.
- Splits. "train": `data.synthetic_size` problems over all levels. "test": 40 per
  (family, level). "probe": 40 per (family, level) at levels 1..2, the levels the student masters
  before distillation, for measuring forgetting. `data.synthetic_heldout_per_cell` changes the
  40; the first 40 per cell stay the same problems (round robin).

The TFDS builder `PacedSynthetic` ("paced_synthetic") writes the same three splits as
array_record, offline and without TensorFlow:

  name = prepare_synthetic("/data/tfds", data_cfg, seed=0)   # "paced_synthetic/n2000_l5_s0"
  test = tfds.data_source(name, data_dir="/data/tfds")["test"]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
from typing import Any

import numpy as np

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data.schema import Problem
from paced_jax.data.synthetic_families import FAMILIES, MARKER, MAX_LEVELS

__all__ = [
    "MARKER", "MAX_LEVELS", "PROBE_LEVELS", "PROBE_PER_CELL", "SPLITS", "TEST_PER_CELL",
    "PacedSynthetic", "PacedSyntheticConfig", "SyntheticSource", "builder_config_name",
    "families", "level_weights", "partition", "perturb", "prepare_synthetic", "synthetic_source",
]

SPLITS = {"train": 0, "test": 1, "probe": 2}  # the split code seeds the rng stream
TEST_PER_CELL = 40
PROBE_PER_CELL = 40
PROBE_LEVELS = 2
_PARTITION_MOD = 16
_MAX_DRAWS = 100_000  # a held-out draw succeeds with probability 1/16; this never binds
_INV_GOLDEN = (5 ** 0.5 - 1) / 2


def families() -> tuple[str, ...]:
  """Names of every family, in the order used by the round robin."""
  return tuple(FAMILIES)


def perturb(family: str, answer: str) -> str:
  """A wrong answer of the same shape as `answer` for a problem of `family`."""
  return FAMILIES[family].perturb(answer)


def partition(prompt: str) -> str:
  """The split a prompt belongs to: a fixed hash, so membership never depends on a seed."""
  h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
  bucket = h % _PARTITION_MOD
  return "test" if bucket == 0 else "probe" if bucket == 1 else "train"


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """A Grain random-access source: `len(src)` problems, `src[i]` computed on demand."""

  split: str
  seed: int
  family_names: tuple[str, ...]
  levels: tuple[int, ...]
  size: int
  level_weights: tuple[float, ...] = ()  # cumulative, normalised; empty: round robin

  def __len__(self) -> int:
    return self.size

  def cell(self, i: int) -> tuple[str, int]:
    """(family, level) of problem i: round robin over families x levels."""
    if self.level_weights:
      u = ((i // len(self.family_names)) + 0.5) * _INV_GOLDEN % 1.0
      k = min(int(np.searchsorted(self.level_weights, u, side="right")), len(self.levels) - 1)
      return self.family_names[i % len(self.family_names)], self.levels[k]
    c = i % (len(self.family_names) * len(self.levels))
    return self.family_names[c // len(self.levels)], self.levels[c % len(self.levels)]

  def __getitem__(self, i: int) -> Problem:
    i = operator.index(i)
    if i < 0:
      i += self.size
    if not 0 <= i < self.size:
      raise IndexError(f"problem {i} out of range for the {self.size}-problem {self.split} split")
    name, level = self.cell(i)
    rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
    for _ in range(_MAX_DRAWS):
      prompt, answer, solution = FAMILIES[name].make(rng, level)
      if partition(prompt) == self.split:
        break
    else:
      raise RuntimeError(f"no {self.split} prompt found for {name} level {level} in "
                         f"{_MAX_DRAWS} draws")
    return Problem(id=f"{name}{level}/{self.split}/s{self.seed}/{i}", prompt=prompt,
                   answer=answer, solution=solution, difficulty=level,
                   metadata={"family": name})


def _checked(data_cfg: DataConfig, split: str, seed: int) -> tuple[tuple[str, ...], int]:
  names = data_cfg.synthetic_families or families()
  unknown = [n for n in names if n not in FAMILIES]
  if unknown:
    raise ConfigError(f"data.synthetic_families has unknown {', '.join(map(repr, unknown))}; "
                      f"choose from {', '.join(families())} (empty: all)")
  if len(set(names)) != len(names):
    raise ConfigError(f"data.synthetic_families={names} lists a family twice; list each once")
  if not 1 <= data_cfg.synthetic_levels <= MAX_LEVELS:
    raise ConfigError(f"data.synthetic_levels={data_cfg.synthetic_levels} must be in "
                      f"1..{MAX_LEVELS}")
  if data_cfg.synthetic_size < 1:
    raise ConfigError(f"data.synthetic_size={data_cfg.synthetic_size} must be >= 1")
  if split not in SPLITS:
    raise ConfigError(f"synthetic split {split!r} does not exist; use one of "
                      f"{', '.join(SPLITS)}")
  if seed < 0:
    raise ConfigError(f"synthetic seed {seed} must be >= 0")
  return tuple(names), data_cfg.synthetic_levels


def level_weights(data_cfg: DataConfig) -> tuple[float, ...]:
  """The train pool's share of each level 1..synthetic_levels (sums to 1; DataConfig checks
  the raw weights). Empty weights, or all equal, are the round robin: equal shares."""
  w = np.asarray(data_cfg.synthetic_level_weights or [1.0] * data_cfg.synthetic_levels, float)
  return tuple(float(x) for x in w / w.sum())


def _cumulative(data_cfg: DataConfig) -> tuple[float, ...]:
  w = data_cfg.synthetic_level_weights
  if not w or len(set(w)) == 1:
    return ()  # round robin: today's pools, ids and prompts unchanged
  return tuple(float(x) for x in np.cumsum(level_weights(data_cfg)))


def synthetic_source(data_cfg: DataConfig, split: str = "train", seed: int = 0
                     ) -> SyntheticSource:
  """The `split` ("train", "test" or "probe") of the suite described by `data_cfg`."""
  names, num_levels = _checked(data_cfg, split, seed)
  levels = tuple(range(1, (min(PROBE_LEVELS, num_levels) if split == "probe" else num_levels) + 1))
  per_cell = {"test": TEST_PER_CELL, "probe": PROBE_PER_CELL}.get(split)
  if per_cell is not None and data_cfg.synthetic_heldout_per_cell:
    per_cell = data_cfg.synthetic_heldout_per_cell
  size = data_cfg.synthetic_size if per_cell is None else per_cell * len(names) * len(levels)
  return SyntheticSource(split=split, seed=seed, family_names=names, levels=levels, size=size,
                         level_weights=_cumulative(data_cfg) if split == "train" else ())


# ----------------------------------------------------------------------------- TFDS builder


def builder_config_name(data_cfg: DataConfig, seed: int = 0) -> str:
  """The TFDS config name of a suite, e.g. "n2000_l5_s0", "n40_l3_s1_add-sort", or with level
  weights and held-out size "n2000_l5_s0_w0.5-0.3-0.2-0-0_h50" (weights as shares, 6
  significant digits): different pools never share a name."""
  names, levels = _checked(data_cfg, "train", seed)
  suffix = "" if names == families() else "_" + "-".join(names)
  if _cumulative(data_cfg):
    suffix += "_w" + "-".join(f"{x:.6g}" for x in level_weights(data_cfg))
  per_cell = data_cfg.synthetic_heldout_per_cell
  if per_cell and per_cell != TEST_PER_CELL:
    suffix += f"_h{per_cell}"
  return f"n{data_cfg.synthetic_size}_l{levels}_s{seed}{suffix}"


@functools.cache
def _builder_classes() -> tuple[type, type]:
  # Built on first use: importing tensorflow_datasets costs about a second and a protobuf
  # stack, which the default job (random access above) never needs.
  import tensorflow_datasets as tfds

  @dataclasses.dataclass(eq=False)
  class PacedSyntheticConfig(tfds.core.BuilderConfig):
    """One suite: train size, number of levels, seed and families (empty: all)."""

    size: int = DataConfig.synthetic_size
    levels: int = DataConfig.synthetic_levels
    seed: int = 0
    families: tuple[str, ...] = ()
    level_weights: tuple[float, ...] = ()
    heldout_per_cell: int = 0

    @classmethod
    def from_data_config(cls, data_cfg: DataConfig, seed: int = 0) -> PacedSyntheticConfig:
      return cls(name=builder_config_name(data_cfg, seed), size=data_cfg.synthetic_size,
                 levels=data_cfg.synthetic_levels, seed=seed,
                 families=tuple(data_cfg.synthetic_families),
                 level_weights=tuple(data_cfg.synthetic_level_weights),
                 heldout_per_cell=data_cfg.synthetic_heldout_per_cell,
                 description=f"{data_cfg.synthetic_size} train problems, levels "
                             f"1..{data_cfg.synthetic_levels}, seed {seed}")

    def data_config(self) -> DataConfig:
      return DataConfig(synthetic_size=self.size, synthetic_levels=self.levels,
                        synthetic_families=tuple(self.families),
                        synthetic_level_weights=tuple(self.level_weights),
                        synthetic_heldout_per_cell=self.heldout_per_cell)

  class PacedSynthetic(tfds.core.GeneratorBasedBuilder):
    """The paced_jax synthetic reasoning suite (arithmetic, sorting, counting)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: add, mul, expr, mod, sort, count."}
    BUILDER_CONFIG_CLASS = PacedSyntheticConfig
    BUILDER_CONFIGS = [PacedSyntheticConfig.from_data_config(DataConfig())]

    def __init__(self, *, file_format: Any = None, **kwargs: Any):
      # array_record by default: random access for Grain, and TFDS writes it without
      # TensorFlow (its tfrecord writer needs TensorFlow), so `tfds.data_source(
      # "paced_synthetic", data_dir=...)` can prepare the default suite on demand.
      super().__init__(file_format=file_format or "array_record", **kwargs)

    # TFDS looks for a download-checksums file next to the builder's code; resolving that path
    # for a class in an installed package imports `importlib_resources`, which TFDS declares
    # only for Python < 3.9. Nothing is downloaded here, so there is no checksums file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
      return None

    def _info(self) -> Any:
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              "id": text, "prompt": text, "answer": text, "solution": text,
              "difficulty": np.int32, "family": text}),
          # Record k of a split must be problem k of `synthetic_source`: keep generation order.
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
      del dl_manager  # everything is generated locally
      cfg = self.builder_config
      return {split: self._generate_examples(synthetic_source(cfg.data_config(), split, cfg.seed))
              for split in SPLITS}

    def _generate_examples(self, source: SyntheticSource) -> Any:
      for i in range(len(source)):
        p = source[i]
        yield i, {"id": p.id, "prompt": p.prompt, "answer": p.answer, "solution": p.solution,
                  "difficulty": p.difficulty, "family": p.metadata["family"]}

  for cls in (PacedSyntheticConfig, PacedSynthetic):
    cls.__module__, cls.__qualname__ = __name__, cls.__name__
  return PacedSyntheticConfig, PacedSynthetic


def __getattr__(name: str) -> Any:
  # `from paced_jax.data.synthetic import PacedSynthetic` works; the import of TFDS (and the
  # registration of "paced_synthetic" with it) happens here, on first access.
  if name == "PacedSyntheticConfig":
    return _builder_classes()[0]
  if name == "PacedSynthetic":
    return _builder_classes()[1]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare_synthetic(data_dir: str, data_cfg: DataConfig, seed: int = 0) -> str:
  """Writes the suite's train/test/probe splits as array_record under `data_dir`.

  Returns the name to load it with: `tfds.data_source(name, data_dir=data_dir)`. Preparing an
  already prepared suite is a no-op.
  """
  config_cls, builder_cls = _builder_classes()
  builder = builder_cls(config=config_cls.from_data_config(data_cfg, seed), data_dir=data_dir,
                        file_format="array_record")
  builder.download_and_prepare()
  return f"{builder.name}/{builder.builder_config.name}"
