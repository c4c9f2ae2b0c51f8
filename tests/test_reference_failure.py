"""data.reference=teacher when nothing verifies (issue 13): one line with how many responses were
generated and verified and one failed example (prompt + response, truncated); generation shows a
progress bar; the cache survives the failed run and a rerun generates nothing."""

import glob

import pytest

from paced_jax import cli
from paced_jax.config import DataConfig
from paced_jax.data import ListSource, Problem, build_references
from paced_jax.data.sources import DataError

PROBLEMS = [Problem(f"p{i}", f"what is {i} plus {i}? " + "x" * 200, str(2 * i)) for i in range(10)]


def wrong(problems):
  return [["#### -1 " + "y" * 400, {"text": "cut", "eos": False}, "#### -2"] for _ in problems]


def never(problems):
  raise AssertionError("the cache should have answered")


def test_nothing_verified_is_one_line_with_an_example(tmp_path, capsys):
  cfg = DataConfig(reference="teacher", reference_cache=str(tmp_path / "refs"))
  src = ListSource(PROBLEMS)
  verify = lambda text, p: text.rsplit("####", 1)[-1].strip() == p.answer
  with pytest.raises(DataError) as e:
    build_references(src, cfg, generate_fn=wrong, verify=verify, cache_key="t", chunk_size=4,
                     progress=True)
  msg = str(e.value)
  assert "\n" not in msg and len(msg) < 900, msg
  assert msg.startswith("data.reference=teacher: none of the teacher's 30 responses to 10 "
                        "problems verified (e.g. problem 'p0', answer '0': prompt \"what is 0 "
                        "plus 0? xxx")
  assert '-> response "#### -1 yyy' in msg and '..."' in msg
  assert f"the generations stay cached in {tmp_path / 'refs'}" in msg
  assert "teacher references: 100%" in capsys.readouterr().err  # the progress bar
  assert len(glob.glob(str(tmp_path / "refs" / "*.array_record"))) == 3
  with pytest.raises(DataError) as again:  # the cache answers: nothing is generated
    build_references(src, cfg, generate_fn=never, verify=verify, cache_key="t")
  assert str(again.value) == msg


def test_train_reports_the_failure_and_keeps_the_cache(tmp_path, capsys):
  wd = tmp_path / "run"
  rc = cli.main(["train", "configs/demo.py:tiny", "--workdir", str(wd), "--quiet",
                 "--set", "data.reference=teacher", "--set", "eval.max_problems=0"])
  err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("paced: ")]
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith("paced: error: data.reference=teacher: none of the teacher's ")
  assert "-> response " in err[0] and "prompt " in err[0]
  assert glob.glob(str(wd / "references" / "*.array_record"))
