"""`paced estimate`: a real run on a saved student, and its one-line errors."""

import json
import subprocess
import sys

import pytest
from flax import nnx

from paced_jax.config import load_config
from paced_jax.models import Decoder
from paced_jax.models.io import save_model

TINY = "configs/demo.py:tiny"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
  cfg = load_config(TINY)
  root = tmp_path_factory.mktemp("ckpt")
  save_model(Decoder(cfg.model, rngs=nnx.Rngs(0)), root / "student")
  small = dataclasses_replace(cfg.model, vocab_size=64)
  save_model(Decoder(small, rngs=nnx.Rngs(0)), root / "small_vocab")
  return root


def dataclasses_replace(x, **kw):
  import dataclasses
  return dataclasses.replace(x, **kw)


def _estimate(*args):
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", "estimate", TINY, "--quiet",
                         *args], capture_output=True, text=True, timeout=600)


def test_estimate_writes_table_and_plot(student_dir, tmp_path):
  out = _estimate("--checkpoint", str(student_dir / "student"), "--out", str(tmp_path / "est"),
                  "--set", "data.synthetic_size=12")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(l) for l in (tmp_path / "est" / "passrates.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and all(r["trials"] == 2 for r in rows)
  assert (tmp_path / "est" / "passrates.png").stat().st_size > 1000
  assert "12 problems x 2 rollouts" in out.stdout
  table = out.stdout.splitlines()
  assert "mean p" in table[0] and any(l.startswith("level 1") for l in table)
  assert any(l.startswith("all") and " 12 " in l for l in table)  # the table README promises


def test_estimate_of_a_generated_config_is_per_cell(student_dir, tmp_path):
  out = _estimate("--checkpoint", str(student_dir / "student"), "--out", str(tmp_path / "est"),
                  "--set", "generate.source=synthetic", "--set", "generate.tasks=add,sort",
                  "--set", "generate.levels=1,7", "--set", "generate.probes_per_cell=3")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(l) for l in (tmp_path / "est" / "passrates.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and rows[0]["id"].startswith("gen/add/L1/train/")
  table = out.stdout.splitlines()
  for cell in ("add/L1", "add/L7", "sort/L1", "sort/L7"):
    assert any(l.startswith(cell) and " 3 " in l for l in table), out.stdout


@pytest.mark.parametrize("args,match", [
    (["--checkpoint", "{small_vocab}"], "has vocab_size=64 but the tokenizer"),
    (["--checkpoint", "{student}", "--set", "paced.verifier=nosuch.module:fn"], "nosuch"),
    (["--checkpoint", "{student}", "--set", "paced.rollouts=0"], "paced.rollouts=0"),
    (["--checkpoint", "{student}", "--set", "sample.prompt_buckets=4"], "prompt of"),
    (["--checkpoint", "{student}", "--set", "data.source=jsonl", "--set", "data.path={empty}"],
     "empty"),
    (["--checkpoint", "{missing}"], "missing"),
])
def test_estimate_bad_input(student_dir, tmp_path, args, match):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  fill = dict(small_vocab=student_dir / "small_vocab", student=student_dir / "student",
              empty=empty, missing=tmp_path / "missing")
  out = _estimate(*[a.format(**fill) for a in args], "--out", str(tmp_path / "o"))
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("paced: error:") and match in last, last


def test_eval_prints_table_with_forgetting(student_dir):
  out = subprocess.run([sys.executable, "-m", "paced_jax.cli", "eval", TINY, "--quiet",
                        "--checkpoint", str(student_dir / "student"),
                        "--baseline", str(student_dir / "student")],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "forgetting on the mastered probe: +0.000" in out.stdout  # same model both times
  assert "test/overall" in out.stdout
