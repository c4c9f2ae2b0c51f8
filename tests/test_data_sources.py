"""Problem sources: JSONL / Parquet round trips, TFDS array_record, bad-input messages."""

import json
import logging

import numpy as np
import pytest

from paced_jax.config import ConfigError, DataConfig
from paced_jax.data import (CharTokenizer, DataError, FrontierPipeline, Problem, jsonl_source,
                            load_pool, parquet_source, write_jsonl)

PROBLEMS = [
    Problem("a", "1+1?", "2", solution="1+1=2\n#### 2", difficulty=1, metadata={"family": "add"}),
    Problem("b", "Say \"hi\"\nplease", "hi", solution=None, difficulty=None, metadata={}),
    Problem("c", "3*3?", "9", solution="#### 9", difficulty=3, metadata={"family": "mul"}),
]


def test_jsonl_round_trip(tmp_path):
  path = str(tmp_path / "pool.jsonl")
  write_jsonl(PROBLEMS, path)
  src = load_pool(DataConfig(source="jsonl", path=path))
  assert len(src) == 3 and [src[i] for i in range(3)] == PROBLEMS


def test_parquet_round_trip_with_field_map(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  table = pa.table({"question": [p.prompt for p in PROBLEMS],
                    "final": [p.answer for p in PROBLEMS],
                    "level": pa.array([p.difficulty for p in PROBLEMS], pa.int64()),
                    "source": ["x", "y", "z"]})
  path = str(tmp_path / "pool.parquet")
  pq.write_table(table, path)
  cfg = DataConfig(source="parquet", path=path,
                   field_map=("prompt=question", "answer=final", "difficulty=level"))
  src = load_pool(cfg)
  assert [src[i].prompt for i in range(3)] == [p.prompt for p in PROBLEMS]
  assert [src[i].difficulty for i in range(3)] == [1, None, 3]
  assert src[1].id == "pool.parquet:1"  # no id column: stable positional id
  assert src[2].metadata == {"source": "z"}


def _write_lines(tmp_path, lines):
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_malformed_jsonl_names_file_line_and_field(tmp_path):
  good = json.dumps({"id": "a", "prompt": "p", "answer": "1"})
  path = _write_lines(tmp_path, [good, "", json.dumps({"id": "b", "answer": "2"})])
  with pytest.raises(DataError) as e:
    jsonl_source(path)
  msg = str(e.value)
  assert f"{path}:3:" in msg and "'prompt'" in msg and "\n" not in msg
  path = _write_lines(tmp_path, [good, '{"id": "b", "prompt": '])
  with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
    jsonl_source(path)
  path = _write_lines(tmp_path, [good, json.dumps({"id": "b", "prompt": ["x"], "answer": 1})])
  with pytest.raises(DataError, match=r":2: field 'prompt' \(for Problem.prompt\) is a list"):
    jsonl_source(path)
  path = _write_lines(tmp_path, [json.dumps({"id": "b", "prompt": "x", "answer": 1,
                                             "difficulty": "hard"})])
  with pytest.raises(DataError, match=r":1: field 'difficulty'.*expected an integer"):
    jsonl_source(path)


def test_skip_policy_counts_and_logs(tmp_path, caplog):
  lines = [json.dumps({"id": "a", "prompt": "p", "answer": "1"}), "not json",
           json.dumps({"id": "c", "prompt": "q"}), json.dumps({"id": "d", "prompt": "r",
                                                               "answer": 4})]
  path = _write_lines(tmp_path, lines)
  with caplog.at_level(logging.WARNING, logger="paced_jax.data"):
    src = jsonl_source(path, on_error="skip")
  assert [src[i].id for i in range(len(src))] == ["a", "d"] and src.skipped == 2
  assert src[1].answer == "4"
  assert "skipped 2 malformed" in caplog.text and f"{path}:2" in caplog.text


def test_duplicate_ids_and_empty_pool_are_errors(tmp_path):
  rec = json.dumps({"id": "a", "prompt": "p", "answer": "1"})
  with pytest.raises(DataError, match="duplicate problem id 'a'"):
    jsonl_source(_write_lines(tmp_path, [rec, rec]))
  with pytest.raises(DataError, match="empty"):
    jsonl_source(_write_lines(tmp_path, ["", "  "]))
  with pytest.raises(DataError, match="empty"):  # everything skipped is still empty
    jsonl_source(_write_lines(tmp_path, ["{"]), on_error="skip")
  with pytest.raises(ConfigError, match="matches no file"):
    load_pool(DataConfig(source="jsonl", path=str(tmp_path / "nope*.jsonl")))
  with pytest.raises(ConfigError, match="not a Problem field"):
    load_pool(DataConfig(source="jsonl", path=str(tmp_path / "bad.jsonl"),
                         field_map=("question=prompt",)))


def test_parquet_bad_file_is_one_line(tmp_path):
  path = tmp_path / "x.parquet"
  path.write_bytes(b"not parquet")
  with pytest.raises(DataError, match="not a readable Parquet file") as e:
    parquet_source(str(path))
  assert "\n" not in str(e.value)


def test_tfds_array_record_builder_loads_into_pipeline(tmp_path):
  """A real GeneratorBasedBuilder prepared offline as array_record (no TensorFlow needed)."""
  import tensorflow_datasets as tfds

  class PacedTestProblems(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      # DatasetInfo directly: dataset_info_from_configs reads package metadata files.
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "uid": tfds.features.Text(), "question": tfds.features.Text(),
          "final": tfds.features.Text(), "steps": tfds.features.Text(), "level": np.int32}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(12), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"uid": f"t{i}", "question": f"{i}+{i}=?", "final": str(2 * i),
                  "steps": f"{i}+{i}={2 * i}\n#### {2 * i}", "level": i % 4}

  data_dir = str(tmp_path / "tfds")
  builder = PacedTestProblems(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = DataConfig(source="tfds", tfds_name="paced_test_problems", tfds_data_dir=data_dir,
                   field_map=("id=uid", "prompt=question", "answer=final", "solution=steps",
                              "difficulty=level"), batch_size=4, length_buckets=(32,))
  src = load_pool(cfg)
  assert len(src) == 12 and len(load_pool(cfg, split="test")) == 3
  by_id = {src[i].id: src[i] for i in range(len(src))}
  assert by_id["t5"] == Problem("t5", "5+5=?", "10", "5+5=10\n#### 10", 1, {})
  pipe = FrontierPipeline(src, CharTokenizer(), cfg)
  probs = np.array([1.0 if src[i].id == "t5" else 0.0 for i in range(len(src))])
  pipe.set_round(0, probs)
  b = next(pipe)
  assert CharTokenizer().decode(b["tokens"][0]) == "5+5=?5+5=10\n#### 10"
  with pytest.raises(DataError, match="cannot be opened.*array_record") as e:
    load_pool(DataConfig(source="tfds", tfds_name="paced_test_problems", tfds_split="valid",
                         tfds_data_dir=data_dir))
  assert "\n" not in str(e.value)


def test_synthetic_source_dispatch():
  src = load_pool(DataConfig(source="synthetic", synthetic_size=50), split="train", seed=1)
  assert len(src) > 0 and isinstance(src[0], Problem) and src[0].solution
