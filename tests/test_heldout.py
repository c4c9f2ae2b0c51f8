"""Held-out evaluation for file pools (issue 13): eval and probe come from their own files
(TFDS: split settings), never from the training pool; none configured means evaluation off,
said in one line; eval problems that also appear in the training pool are counted and warned."""

import dataclasses
import json
import logging

import pytest

from paced_jax import cli
from paced_jax.config import ConfigError, DataConfig, load_config
from paced_jax.data.sources import has_split, load_pool, write_jsonl
from paced_jax.data.synthetic import synthetic_source
from paced_jax.evaluate import eval_off_reason, load_eval_sets, summary_table

TINY = "configs/demo.py:tiny"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """train / test / probe JSONL files from the synthetic suite; test holds 2 training problems."""
  root = tmp_path_factory.mktemp("heldout")
  data = DataConfig(synthetic_size=48)
  split = {s: synthetic_source(data, s, seed=0) for s in ("train", "test", "probe")}
  train = [split["train"][i] for i in range(len(split["train"]))]
  write_jsonl(train, str(root / "train.jsonl"))
  test = [split["test"][i] for i in range(6)]
  leaked = [dataclasses.replace(train[0], id="renamed"), train[1]]  # same prompt; same id
  write_jsonl(test + leaked, str(root / "test.jsonl"))
  write_jsonl([split["probe"][i] for i in range(4)], str(root / "probe.jsonl"))
  return root, train


def _cfg(root, *extra):
  return load_config(TINY, ["data.source=jsonl", f"data.path={root / 'train.jsonl'}", *extra])


def test_file_pool_without_heldout_files_has_no_eval(files):
  root, train = files
  cfg = _cfg(root)
  assert not has_split(cfg.data, "test") and not has_split(cfg.data, "probe")
  assert load_eval_sets(cfg, train=train) == []
  assert "no held-out set: set data.eval_path / data.probe_path" in eval_off_reason(cfg)
  with pytest.raises(ConfigError, match="no held-out test file: set data.eval_path"):
    load_pool(cfg.data, "test")
  assert has_split(DataConfig(), "probe")  # the synthetic suite has its own splits
  tfds = DataConfig(source="tfds", tfds_name="gsm8k")
  assert has_split(tfds, "test") and not has_split(tfds, "probe")
  with pytest.raises(ConfigError, match="no probe split: set data.tfds_probe_split"):
    load_pool(tfds, "probe")


def test_heldout_files_and_contamination(files, caplog):
  root, train = files
  cfg = _cfg(root, f"data.eval_path={root / 'test.jsonl'}",
             f"data.probe_path={root / 'probe.jsonl'}", "eval.max_problems=100")
  assert eval_off_reason(cfg) is None
  with caplog.at_level(logging.WARNING, logger="paced_jax"):
    sets = load_eval_sets(cfg, train=train)
  test, probe = sets
  train_ids = {p.id for p in train}
  assert (test.name, len(test.problems), test.contaminated) == ("test", 8, 2)
  assert (probe.name, len(probe.problems), probe.contaminated) == ("probe", 4, 0)
  assert not {p.id for p in probe.problems} & train_ids
  warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warn == ["eval test: 2 of 8 problems also appear in the training pool (same id or "
                  "prompt); its accuracy is not held-out"]
  table = summary_table({"eval/test/overall": 0.5}, {"eval/test/overall": 0.6,
                                                     "eval_contaminated/test": 2.0})
  assert "also in the training pool (not held out): test 2 problems" in table


def test_missing_eval_file_is_one_line_before_anything(files, tmp_path, capsys):
  root, _ = files
  rc = cli.main(["train", TINY, "--workdir", str(tmp_path / "run"), "--set", "data.source=jsonl",
                 "--set", f"data.path={root / 'train.jsonl'}",
                 "--set", f"data.probe_path={root / 'nope.jsonl'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err == [f"paced: error: data.probe_path='{root / 'nope.jsonl'}' matches no "
                             "file; give a .jsonl file or a glob such as data/*.jsonl"]
  assert not (tmp_path / "run" / "config.json").exists()


def test_train_evaluates_heldout_files_or_says_off(files, tmp_path, capsys):
  root, _ = files
  base = ["train", TINY, "--quiet", "--set", "data.source=jsonl", "--set",
          f"data.path={root / 'train.jsonl'}", "--set", "train.steps=2", "--set",
          "paced.weighting=uniform"]
  assert cli.main(base + ["--workdir", str(tmp_path / "off")]) == 0
  out = capsys.readouterr().out
  assert "evaluation: off (no held-out set: set data.eval_path / data.probe_path (problems not " \
         "in the training pool))" in out
  assert not (tmp_path / "off" / "eval_before.json").exists()
  assert cli.main(base + ["--workdir", str(tmp_path / "on"), "--set",
                          f"data.eval_path={root / 'test.jsonl'}", "--set",
                          f"data.probe_path={root / 'probe.jsonl'}"]) == 0
  out = capsys.readouterr().out
  before = json.loads((tmp_path / "on" / "eval_before.json").read_text())
  assert before["eval_contaminated/test"] == 2 and before["eval_contaminated/probe"] == 0
  assert "eval/probe/overall" in before and "forgetting on the mastered probe" in out
  assert "also in the training pool (not held out): test 2 problems" in out
