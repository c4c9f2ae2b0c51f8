"""A rerun of a finished run says so, prints its summary and touches nothing (with fewer
steps too); an empty --workdir is refused; degenerate settings warn once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paced_jax.build import degenerate
from paced_jax.config import load_config

TINY = "configs/demo.py:tiny"
ROOT = Path(__file__).resolve().parents[1]


def _paced(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _snapshot(wd: Path) -> dict:
  return {str(p.relative_to(wd)): (p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(wd.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("finished") / "run"
  r = _paced("train", TINY, "--workdir", str(wd), "--quiet")
  assert r.returncode == 0, r.stderr[-2000:]
  assert (wd / "finished.json").exists() and (wd / "eval_after.json").exists()
  return wd


@pytest.mark.parametrize("extra", [[], ["--set", "train.steps=3"]])
def test_a_finished_run_reruns_as_a_summary_and_touches_nothing(finished_run, extra):
  before = _snapshot(finished_run)
  r = _paced("train", TINY, "--workdir", str(finished_run), "--quiet", *extra)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "finished at step 6" in r.stdout and "nothing to do" in r.stdout
  assert "split/bucket" in r.stdout  # the before/after table
  assert "Traceback" not in r.stderr
  assert _snapshot(finished_run) == before  # not a byte, not a timestamp


def test_raising_the_steps_of_a_finished_run_trains_on(finished_run, tmp_path):
  import shutil

  wd = tmp_path / "more"
  shutil.copytree(finished_run, wd)
  r = _paced("train", TINY, "--workdir", str(wd), "--quiet", "--set", "train.steps=7")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "done: step 7" in r.stdout


def test_an_empty_workdir_is_refused():
  r = _paced("train", TINY, "--workdir", "", "--quiet", timeout=120)
  assert r.returncode == 2 and "--workdir is empty" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_degenerate_settings_warn():
  cfg = load_config(TINY, ["paced.rollouts=1"])
  assert any("paced.rollouts=1" in w for w in degenerate(cfg, 48))
  assert any("exceeds the pool" in w for w in degenerate(load_config(TINY), 4))
  assert any("one problem" in w for w in degenerate(load_config(TINY), 1))
  assert degenerate(load_config(TINY), 48) == []
  assert degenerate(load_config(TINY, ["paced.rollouts=1", "paced.weighting=paced_posterior"]),
                    48) == []


def test_resume_names_changed_settings_and_refuses_fixed_ones(finished_run, tmp_path):
  import shutil

  wd = tmp_path / "changed"
  shutil.copytree(finished_run, wd)
  r = _paced("train", TINY, "--workdir", str(wd), "--quiet", "--set", "train.steps=7",
             "--set", "train.lr=0.1", "--set", "paced.rollouts=3")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "changed setting(s)" in r.stderr and "train.lr: 0.0003 -> 0.1" in r.stderr
  assert "paced.rollouts: 2 -> 3" in r.stderr
  # config.json deleted: configs/<start>.json still guards the fixed sections.
  (wd / "config.json").unlink()
  r = _paced("train", TINY, "--workdir", str(wd), "--quiet", "--set", "train.steps=8",
             "--set", "loss.divergence=reverse_kl")
  assert r.returncode == 2 and "holds checkpoints of a different config" in r.stderr
  assert "loss.divergence" in r.stderr and not (wd / "config.json").exists()


def test_a_field_added_after_a_run_was_written_counts_as_its_default():
  from paced_jax import checkpoint as ckpt
  from paced_jax.config import to_dict

  now = to_dict(load_config(TINY))
  old = {k: v for k, v in now.items() if k != "generate"}  # a config.json from before them
  old["loss"] = {k: v for k, v in now["loss"].items() if k not in ("teacher", "offline_k")}
  assert ckpt.config_mismatch(old, now, ("loss", "generate")) is None
  gen = to_dict(load_config(TINY, ["generate.source=synthetic"]))
  assert ckpt.config_changes(old, gen, ("generate",)) == [
      "generate.source: '' -> 'synthetic'"]
