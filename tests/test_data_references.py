"""Reference responses: dataset solutions, teacher generations verified and cached on disk."""

import dataclasses
import glob

import numpy as np
import pytest

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data import (CharTokenizer, FrontierPipeline, ListSource, Problem,
                            build_references)

PROBLEMS = [Problem(f"p{i}", f"{i}+{i}?", str(2 * i)) for i in range(10)]


class FakeTeacher:
  """Deterministic stand-in for the sampler: 3 candidates, correct ones depend on the problem."""

  def __init__(self):
    self.calls = 0
    self.seen = []

  def __call__(self, problems):
    self.calls += 1
    self.seen += [p.id for p in problems]
    out = []
    for p in problems:
      i = int(p.id[1:])
      good = f"{i}+{i}={2 * i}\n#### {2 * i}"
      # p0, p3, p6, p9 never right; i % 3 == 1: 2 of 3 right; i % 3 == 2: all 3 right.
      out.append([good if (i % 3 and k <= i % 3) else "#### 0" for k in range(3)]
                 if i % 3 else ["#### -1"] * 3)
    return out


def verify(text, problem):
  return text.rsplit("####", 1)[-1].strip() == problem.answer


def test_teacher_references_cached_second_run_generates_nothing(tmp_path):
  cfg = DataConfig(reference="teacher", references_per_problem=1,
                   reference_cache=str(tmp_path / "refs"), batch_size=4)
  src = ListSource(PROBLEMS)
  teacher = FakeTeacher()
  refs = build_references(src, cfg, generate_fn=teacher, verify=verify, cache_key="t1",
                          chunk_size=4)
  assert teacher.calls == 3 and sorted(teacher.seen) == sorted(p.id for p in PROBLEMS)
  assert len(glob.glob(str(tmp_path / "refs" / "*.array_record"))) == 3  # one shard per chunk
  assert [len(r) for r in refs] == [0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
  assert all(verify(t, p) for r, p in zip(refs, PROBLEMS) for t in r)

  again = FakeTeacher()
  refs2 = build_references(src, cfg, generate_fn=again, verify=verify, cache_key="t1")
  assert again.calls == 0 and refs2 == refs
  # Up to references_per_problem verified responses are used; the cache kept all of them.
  refs3 = build_references(src, dataclasses.replace(cfg, references_per_problem=3),
                           generate_fn=again, verify=verify, cache_key="t1")
  assert again.calls == 0 and [len(r) for r in refs3][:3] == [0, 2, 3]
  # Another teacher (cache key) never reads these responses.
  other = FakeTeacher()
  build_references(src, cfg, generate_fn=other, verify=verify, cache_key="t2")
  assert other.calls == 1

  # Problems without a verified reference are never sampled.
  pipe = FrontierPipeline(src, CharTokenizer(), cfg, references=refs)
  pipe.set_round(0, None)
  idx = np.concatenate([next(pipe)["index"] for _ in range(10)])
  assert set(idx) == {1, 2, 4, 5, 7, 8}


def test_new_problems_generate_only_the_missing_ones(tmp_path):
  cfg = DataConfig(reference="teacher", reference_cache=str(tmp_path))
  build_references(ListSource(PROBLEMS[:6]), cfg, generate_fn=FakeTeacher(), verify=verify)
  teacher = FakeTeacher()
  build_references(ListSource(PROBLEMS), cfg, generate_fn=teacher, verify=verify)
  assert teacher.seen == ["p6", "p7", "p8", "p9"]


def test_dataset_references_and_errors(tmp_path):
  src = ListSource([Problem("a", "q", "1", solution="#### 1"), Problem("b", "q2", "2")])
  assert build_references(src, DataConfig()) == [["#### 1"], []]
  with pytest.raises(ConfigError, match="needs generate_fn and verify"):
    build_references(src, DataConfig(reference="teacher", reference_cache=str(tmp_path)))
  with pytest.raises(ConfigError, match="reference_cache"):
    build_references(src, DataConfig(reference="teacher"), generate_fn=FakeTeacher(),
                     verify=verify)
  with pytest.raises(ValueError, match="returned 1 candidate lists for 2"):
    build_references(src, DataConfig(reference="teacher", reference_cache=str(tmp_path)),
                     generate_fn=lambda ps: [["x"]], verify=verify)


def test_teacher_references_do_not_depend_on_the_chunking(tmp_path):
  """Response k of problem i draws stream i * K + k: generating 1 problem per chunk or all at
  once gives the same references (every chunk used to reuse the first chunk's streams)."""
  from flax import nnx

  from paced_jax.config import load_config
  from paced_jax.data.sources import load_pool
  from paced_jax.data.tokenizer import load_tokenizer
  from paced_jax.models import Decoder
  from paced_jax.rollout_data import teacher_references
  from paced_jax.rollouts import make_engine
  from paced_jax.sharding import make_mesh

  out = []
  for rows in (2, 64):  # K = 2 rollouts: chunks of 1 problem, then of 32
    cfg = load_config("configs/demo.py:tiny", [
        "data.reference=teacher", "data.references_per_problem=2", f"sample.batch_size={rows}",
        "data.synthetic_size=6", "sample.temperature=1.0"])
    source = load_pool(cfg.data, "train", seed=cfg.seed)
    teacher = Decoder(cfg.teacher, rngs=nnx.Rngs(0))
    tok = load_tokenizer(cfg.data.tokenizer)
    refs = teacher_references(cfg, tmp_path / f"r{rows}", source,
                              make_engine(cfg, teacher, make_mesh(cfg.mesh)), tok,
                              lambda text, problem: True)
    out.append([[r if isinstance(r, str) else r["text"] for r in rs] for rs in refs])
  assert out[0] == out[1]
  assert len({rs[0] for rs in out[0]}) > 1  # problems differ from each other


def test_unverified_teacher_references_are_kept_as_they_come(tmp_path):
  """data.reference_verify=false keeps every teacher response (wrong ones too), in a cache of
  its own: a verified run with the same key never reads them, nor they its. The setting
  means nothing for dataset solutions and is refused there."""
  src = ListSource(PROBLEMS)
  cfg = DataConfig(reference="teacher", references_per_problem=3,
                   reference_cache=str(tmp_path / "refs"))
  raw = FakeTeacher()(PROBLEMS)
  loose = build_references(src, dataclasses.replace(cfg, reference_verify=False),
                           generate_fn=FakeTeacher(), verify=verify, cache_key="t")
  assert loose == [list(r) for r in raw]  # every candidate, wrong or right
  assert loose[0] == ["#### -1"] * 3 and not verify(loose[0][0], PROBLEMS[0])
  strict_teacher = FakeTeacher()
  strict = build_references(src, cfg, generate_fn=strict_teacher, verify=verify,
                            cache_key="t")
  assert strict_teacher.calls > 0  # the unverified cache was not read as verified
  assert strict[0] == [] and all(verify(t, p) for r, p in zip(strict, PROBLEMS) for t in r)
  again = FakeTeacher()
  assert build_references(src, dataclasses.replace(cfg, reference_verify=False),
                          generate_fn=again, verify=verify, cache_key="t") == loose
  assert again.calls == 0  # read back from its own cache
  with pytest.raises(ConfigError, match="reference_verify=false"):
    DataConfig(reference_verify=False)
