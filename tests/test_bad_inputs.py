"""One line and a non-zero exit for every bad input; nothing lost (RELIABILITY.md lists them).

Rows call `paced_jax.cli.main` in-process (a traceback would fail the test); the rows that need
a run share one tiny trained workdir (module fixture, copied per row).
"""

import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from paced_jax import cli
from paced_jax.metrics import read_metrics

TINY = "configs/demo.py:tiny"
FAST = ["--quiet", "--set", "eval.max_problems=0", "--set", "paced.weighting=uniform"]


def _main(capsys, *argv):
  """cli.main(argv) -> (exit code, stderr); leaves the logging setup as it found it."""
  lg, root = logging.getLogger("paced_jax"), logging.getLogger()
  saved = (list(lg.handlers), lg.propagate, lg.level, list(root.filters),
           [list(h.filters) for h in root.handlers])
  capsys.readouterr()
  try:
    rc = cli.main([str(a) for a in argv])
  finally:
    lg.handlers[:], lg.propagate, lg.level = saved[0], saved[1], saved[2]
    root.filters[:] = saved[3]
    for h, f in zip(root.handlers, saved[4]):
      h.filters[:] = f
  return rc, capsys.readouterr().err


def _one_line(rc, err, match, code=2):
  lines = err.strip().splitlines()
  assert rc == code, err[-2000:]
  assert lines and lines[-1].startswith("paced: error:") and match in lines[-1], lines[-3:]
  assert "Traceback" not in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished 2-step run with checkpoints 1 and 2."""
  wd = tmp_path_factory.mktemp("base") / "run"
  from paced_jax.config import load_config
  from paced_jax.train import train

  train(load_config(TINY, ["train.steps=2", "train.ckpt_every=1", "eval.max_problems=0",
                           "paced.weighting=uniform"]), wd, progress=False)
  return wd


def _copy(run_dir, tmp_path):
  wd = tmp_path / "run"
  shutil.copytree(run_dir, wd)
  return wd


def _corrupt(step_dir: Path):
  for f in (step_dir / "params").rglob("d/*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[:10])


# ----------------------------------------------------------------------------- cheap rows


@pytest.mark.parametrize("argv,match", [
    (["train", TINY, "--set", "train.max_to_keep=0"], "train.max_to_keep=0 must be >= 1"),
    (["train", TINY, "--set", "train.max_to_keep=-1"], "train.max_to_keep=-1 must be >= 1"),
    (["train", TINY, "--set", "train.lr=-0.1"], "train.lr=-0.1 must be >= 0"),
    (["train", TINY, "--set", "train.ckpt_every=0"], "train.ckpt_every=0 must be >= 1"),
    (["train", TINY, "--set", "train.log_every=0"], "train.log_every=0 must be >= 1"),
    (["train", TINY, "--set", "eval.samples=0"], "eval.samples=0 must be >= 1"),
    (["train", TINY, "--set", "paced.verifier_errors=maybe"], "paced.verifier_errors"),
    (["train", TINY, "--set", "data.reference_verify=false"],
     "data.reference_verify=false keeps teacher references unverified"),
    (["smoke", TINY, "--batch", "0"], "--batch >= 1"),
    (["train", TINY, "--set", "data.chat_template_kwargs=effort=high"],
     "data.chat_template_kwargs entry 'effort=high': 'high' is not a JSON value"),
    (["smoke", TINY, "--set", "data.chat_template_kwargs=enable_thinking"],
     "not of the form name=json_value"),
    (["plan", TINY, "--devices", "0", "--device-memory", "16GiB"], "--devices 0 must be >= 1"),
    (["train", "{badcfg}"], "get_config('') failed: RuntimeError: boom"),
    (["train", TINY, "--set", "data.source=jsonl", "--set", "data.path={latin1}"],
     "latin1.jsonl:2: not UTF-8"),
    (["train", TINY, "--set", "train.init_student={missing}"],
     "train.init_student={missing} does not exist"),
    (["eval", TINY, "--checkpoint", "{missing}", "--baseline", "{missing2}"],
     "--baseline {missing2} does not exist"),
    (["eval", TINY, "--checkpoint", "{missing}"], "--checkpoint {missing} does not exist"),
    (["estimate", TINY, "--checkpoint", "{missing}", "--out", "{tmp}/o"],
     "--checkpoint {missing} does not exist"),
])
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, argv, match):
  (tmp_path / "badcfg.py").write_text("def get_config(arg=''):\n  raise RuntimeError('boom')\n")
  (tmp_path / "latin1.jsonl").write_bytes(
      b'{"prompt": "1+1", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "1"}\n')
  fill = dict(badcfg=tmp_path / "badcfg.py", latin1=tmp_path / "latin1.jsonl",
              missing=tmp_path / "missing", missing2=tmp_path / "missing2", tmp=tmp_path)
  # Cheap checks come first: building any model (or a baseline evaluation, which builds one)
  # before the bad input is reported fails the row.
  from paced_jax.models import transformer

  def no_model(*a, **k):
    raise AssertionError("a model was built before the bad input was reported")

  monkeypatch.setattr(transformer.Decoder, "__init__", no_model)
  rc, err = _main(capsys, *[a.format(**fill) for a in argv],
                  *(["--workdir", tmp_path / "w"] if argv[0] == "train" else []))
  _one_line(rc, err, match.format(**fill))
  assert not (tmp_path / "w" / "config.json").exists()


# ----------------------------------------------------------------------------- runs


def test_max_to_keep_zero_and_another_seed_lose_nothing(capsys, run_dir, tmp_path):
  wd = _copy(run_dir, tmp_path)
  before = sorted(p.name for p in (wd / "checkpoints").iterdir())
  config = (wd / "config.json").read_text()
  rc, err = _main(capsys, "train", TINY, "--workdir", wd, *FAST, "--set", "train.max_to_keep=0")
  _one_line(rc, err, "train.max_to_keep=0 must be >= 1")
  rc, err = _main(capsys, "train", TINY, "--workdir", wd, *FAST, "--set", "seed=1",
                  "--set", "train.steps=3")
  _one_line(rc, err, "seed: saved 0, now 1")
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before
  assert (wd / "config.json").read_text() == config  # validated before anything is written
  assert sorted(p.name for p in (wd / "configs").iterdir()) == ["0.json"]


def test_corrupt_latest_checkpoint_falls_back_and_is_kept(capsys, run_dir, tmp_path):
  wd = _copy(run_dir, tmp_path)
  _corrupt(wd / "checkpoints" / "2")
  # eval / convert on it: one line.
  rc, err = _main(capsys, "eval", TINY, "--quiet", "--checkpoint", wd / "checkpoints" / "2",
                  "--baseline", "none")
  _one_line(rc, err, "cannot be read")
  rc, err = _main(capsys, "convert", "--to-hf", wd / "checkpoints" / "2", "--out", tmp_path / "h")
  _one_line(rc, err, "cannot be read")
  # A step without meta is incomplete, not "lacks N parameters".
  shutil.rmtree(wd / "checkpoints" / "1" / "meta")
  rc, err = _main(capsys, "eval", TINY, "--quiet", "--checkpoint", wd / "checkpoints" / "1")
  _one_line(rc, err, "incomplete training checkpoint (no meta)")
  # Resume: both unreadable -> the newest error, one line, nothing deleted.
  rc, err = _main(capsys, "train", TINY, "--workdir", wd, *FAST, "--set", "train.steps=3")
  _one_line(rc, err, "checkpoints/2 is unreadable")
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["1", "2"]


def test_a_corrupt_checkpoint_read_by_the_command_is_one_line_and_nothing_after(run_dir,
                                                                               tmp_path):
  """In a process of its own, as a user meets it: `paced eval` / `paced convert` on a truncated
  checkpoint printed their one line, then (in some runs: the timing is TensorStore's)
  "Event loop is closed" tracebacks, its failed read's callbacks reaching the loop Orbax had
  closed. Now stderr is the one line. tests/test_orbax_noise.py checks the filter's rules
  deterministically."""
  wd = _copy(run_dir, tmp_path)
  _corrupt(wd / "checkpoints" / "2")
  for argv in (["eval", TINY, "--quiet", "--checkpoint", wd / "checkpoints" / "2",
                "--baseline", "none"],
               ["convert", "--to-hf", wd / "checkpoints" / "2", "--out", tmp_path / "hf"]):
    proc = subprocess.run([sys.executable, "-m", "paced_jax.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("paced: error:") and "cannot be read" in lines[0]
  assert not (tmp_path / "hf").exists()


def test_resume_skips_an_unreadable_newest_step_with_one_warning(capsys, run_dir, tmp_path):
  wd = _copy(run_dir, tmp_path)
  _corrupt(wd / "checkpoints" / "2")
  rc, err = _main(capsys, "train", TINY, "--workdir", wd, *FAST, "--set", "train.steps=3",
                  "--set", "train.ckpt_every=1")
  assert rc == 0, err[-2000:]
  warn = [l for l in err.splitlines() if "unreadable" in l]
  assert len(warn) == 1 and "checkpoints/2" in warn[0] and "resuming from step 1" in warn[0]
  assert "INFO paced_jax.train: resumed from step 1" in err  # INFO lines really print
  assert (wd / "checkpoints_unreadable" / "2" / "params").is_dir()  # kept
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["1", "2", "3"]
  steps = [m["step"] for m in read_metrics(wd) if "loss" in m]
  assert steps == [0, 1, 2]  # each step once
  assert sorted(p.name for p in (wd / "configs").iterdir()) == ["0.json", "1.json"]


def test_checkpoint_write_failure_exits_fast_with_one_line(capsys, run_dir, tmp_path,
                                                          monkeypatch):
  from orbax.checkpoint._src.serialization import jax_array_handlers as h

  async def no_space(*a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(h, "_async_serialize_shardings", no_space)
  wd = _copy(run_dir, tmp_path)
  t0 = time.time()
  rc, err = _main(capsys, "train", TINY, "--workdir", wd, *FAST, "--set", "train.steps=4",
                  "--set", "train.ckpt_every=1")
  _one_line(rc, err, "No space left on device")
  assert "earlier checkpoints are intact (latest: 2)" in err
  assert time.time() - t0 < 120
  assert [l for l in err.splitlines() if l.strip()][-1].startswith("paced: error:")
  assert threading.active_count() < 50
  monkeypatch.undo()
  from paced_jax.models.io import load_model

  load_model(wd / "checkpoints" / "2")  # intact


def test_converted_exports_refuse_bad_files(capsys, run_dir, tmp_path):
  rc, err = _main(capsys, "convert", "--to-hf", run_dir / "checkpoints" / "2", "--out",
                  tmp_path / "hf")
  assert rc == 0, err
  # In a process of its own: under pytest, absl's records reach pytest's log capture, not stderr.
  proc = subprocess.run([sys.executable, "-m", "paced_jax.cli", "eval", TINY, "--quiet",
                         "--checkpoint", str(run_dir / "checkpoints" / "2"), "--baseline", "none",
                         "--set", "eval.max_problems=2", "--set", "eval.samples=1"],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "_CHECKPOINT_METADATA" not in proc.stderr and "does not exist" not in proc.stderr
  from tokenizer_dirs import byte_bpe_dir

  big = byte_bpe_dir(tmp_path / "tok", ["<|endoftext|>"], {"eos_token": "<|endoftext|>"})
  rc, err = _main(capsys, "convert", "--to-hf", run_dir / "checkpoints" / "2", "--out",
                  tmp_path / "hf2", "--tokenizer", big)
  _one_line(rc, err, "vocab")
  shard = next((tmp_path / "hf").glob("*.safetensors"))
  shard.write_bytes(shard.read_bytes()[:100])
  rc, err = _main(capsys, "convert", "--from-hf", tmp_path / "hf", "--out", tmp_path / "back")
  _one_line(rc, err, "--from-hf")
  assert not (tmp_path / "back").exists()
  rc, err = _main(capsys, "train", TINY, "--workdir", tmp_path / "w", "--quiet", "--set",
                  f"train.init_student={tmp_path / 'hf'}")
  _one_line(rc, err, "train.init_student")
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_all_pass_rates_in_0_1_say_uniform_once_per_round(capsys, tmp_path, monkeypatch):
  (tmp_path / "always.py").write_text("def right(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  rc, err = _main(capsys, "train", TINY, "--workdir", tmp_path / "w", "--quiet", "--set",
                  "eval.max_problems=0", "--set", "paced.verifier=always:right", "--set",
                  "paced.eps=0.05", "--set", "train.steps=4", "--set", "paced.refresh_subset=0")
  assert rc == 0, err[-2000:]
  warn = [l for l in err.splitlines() if "frontier weight 0" in l]
  assert len(warn) == 2 and warn[0].startswith("WARNING")  # rounds 0 and 1
  rounds = [m for m in read_metrics(tmp_path / "w") if "frontier/fallback_uniform" in m]
  assert [m["frontier/fallback_uniform"] for m in rounds] == [1.0, 1.0]
  assert len([l for l in err.splitlines() if "problems estimated" in l]) == 2  # --quiet


# ----------------------------------------------------------------------------- verifiers


def _problems(n):
  from paced_jax.data.schema import Problem

  return [Problem(id=f"p{i}", prompt="q", answer="1") for i in range(n)]


def test_a_hanging_user_verifier_times_out_as_wrong():
  from paced_jax import verify as V

  def hang(text, problem):
    if problem.id == "p1":
      time.sleep(30)
    return True

  guarded = V.Guarded(hang, "mod:hang", timeout_s=0.3)
  t0 = time.time()
  out = V.verify_batch(["a", "b", "c"], _problems(3), guarded)
  assert out.tolist() == [True, False, True] and time.time() - t0 < 5
  assert guarded.counts.take()["verify/timeouts"] == 1


def test_hung_verifier_calls_are_bounded_then_one_line():
  """Threads cannot be killed: past max_stuck hung calls the run stops with one line, and calls
  that return late free their place."""
  from paced_jax import verify as V

  release = threading.Event()
  guarded = V.Guarded(lambda text, problem: release.wait(), "mod:hang", timeout_s=0.01,
                      max_stuck=3)
  assert V.verify_batch(["a"] * 3, _problems(3), guarded).tolist() == [False] * 3
  with pytest.raises(V.VerifierError, match=r"paced.verifier='mod:hang' hangs: 3 of its calls "
                     r"are still running past paced.verify_timeout_s=0.01 .*'p0'"):
    guarded("a", _problems(1)[0])
  release.set()  # the hung calls return (late): their places are free again
  deadline = time.time() + 10
  while guarded._stuck and time.time() < deadline:
    time.sleep(0.01)
  assert V.verify_batch(["a"] * 2, _problems(2), guarded).tolist() == [True] * 2


def test_a_raising_user_verifier_is_one_line_or_wrong():
  from paced_jax import verify as V

  def boom(text, problem):
    if problem.id == "p2":
      raise ValueError("no field answer\nsecond line")
    return True

  with pytest.raises(V.VerifierError, match=r"paced.verifier='mod:boom' raised on problem 'p2': "
                     r"ValueError: no field answer; .*paced.verifier_errors=wrong"):
    V.verify_batch(["a"] * 3, _problems(3), V.Guarded(boom, "mod:boom"))
  counts = V.VerifyCounts()
  out = V.verify_batch(["a"] * 3, _problems(3), V.Guarded(boom, "mod:boom", errors="wrong",
                                                           counts=counts))
  assert out.tolist() == [True, True, False] and counts.take()["verify/errors"] == 1
  assert counts.take()["verify/errors"] == 0  # taken once


@pytest.mark.parametrize("value", ["no", None, 2.0, -0.5, "1"])
def test_a_verifier_value_that_is_no_verdict_is_one_line(value):
  """Truthiness would count "no" as correct and None as wrong: only a bool or a score in
  [0, 1] is a verdict."""
  from paced_jax import verify as V

  guarded = V.Guarded(lambda text, problem: value, "mod:odd", errors="wrong")
  with pytest.raises(V.VerifierError, match=r"paced.verifier='mod:odd' returned .* on problem "
                     r"'p0'; a verifier returns a bool, or a score in \[0, 1\]"):
    V.verify_batch(["a"], _problems(1), guarded)


def test_verifier_scores_pass_only_at_one():
  from paced_jax import verify as V

  for value, want in ((1, True), (1.0, True), (0.99, False), (0, False), (True, True)):
    assert V.Guarded(lambda t, p, v=value: v, "mod:score")("a", _problems(1)[0]) is want


def test_safetensors_damage_is_seen_from_header_and_size(tmp_path):
  from safetensors.numpy import save_file

  from paced_jax.models.io import safetensors_damage

  f = tmp_path / "model.safetensors"
  save_file({"a": np.ones((4, 3), np.float32), "b": np.zeros(5, np.int32)}, str(f))
  whole = f.read_bytes()
  assert safetensors_damage(f) is None
  f.write_bytes(whole[:-4])  # the last tensor cut short, header intact
  assert "tensors end at byte" in safetensors_damage(f)
  f.write_bytes(whole + b"\0")  # trailing bytes: not what was written
  assert safetensors_damage(f) is not None
  f.write_bytes(whole[:20])  # the header cut
  assert "header of" in safetensors_damage(f)
  f.write_bytes(whole[:8] + b"{" * (len(whole) - 8))
  assert "unreadable header" in safetensors_damage(f)


@pytest.mark.parametrize("source", ["def verify(:\n", "raise RuntimeError('no gpu')\n"])
def test_a_verifier_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source):
  from paced_jax.config import ConfigError
  from paced_jax.verify import load_verifier

  name = f"broken_verifier_{abs(hash(source))}"
  (tmp_path / f"{name}.py").write_text(source)
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ConfigError, match=rf"paced.verifier='{name}:verify': cannot import") as e:
    load_verifier(f"{name}:verify")
  assert "\n" not in str(e.value)
