"""More bad inputs and events, met as a user meets them: the `paced` command in a subprocess,
its exit code, its one line, and that it ended (RELIABILITY.md lists them).

convert --force never deletes a run, a checkpoint or files convert did not write; two
`paced train` on one workdir are refused (the workdir lock, released by the kernel on kill -9);
an unreadable run or an unwritable report/ is one line (a warning at the end of `paced train`);
the pass-rate histogram has one bin per s/K and only each round's own estimates. The rows that
need a run share one finished tiny run (module fixture), whose own report fails on a full disk.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from paced_jax.config import ConfigError
from paced_jax.metrics import read_metrics

TINY = "configs/demo.py:tiny"
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
# `paced ...` with every PNG write failing as on a full disk (in the process itself).
ENOSPC = ("import errno, sys, matplotlib.figure\n"
          "def full(*a, **k):\n"
          "  raise OSError(errno.ENOSPC, 'No space left on device')\n"
          "matplotlib.figure.Figure.savefig = full\n"
          "from paced_jax.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")


def _paced(*args, wrapper=None, timeout=TIMEOUT):
  """Runs `paced ARGS` to its end -> (exit code, stdout, stderr)."""
  cmd = [sys.executable, "-c", wrapper, *map(str, args)] if wrapper else [
      sys.executable, "-m", "paced_jax.cli", *map(str, args)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def _one_line(rc, err, *match, code=2):
  lines = err.strip().splitlines()
  assert rc == code, err[-2000:]
  assert lines and lines[-1].startswith("paced: error:"), lines[-3:]
  for m in match:
    assert m in lines[-1], lines[-1]
  assert "Traceback" not in err
  return lines[-1]


def _tree(path: Path) -> dict:
  return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
          if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 6-step run (checkpoints 3 and 6, two estimated rounds), trained by
  `paced train` whose end-of-run plots hit a full disk; (workdir, rc, stdout, stderr)."""
  wd = tmp_path_factory.mktemp("base") / "run"
  rc, out, err = _paced("train", TINY, "--workdir", wd, "--quiet", "--set",
                        "eval.max_problems=0", wrapper=ENOSPC)
  return wd, rc, out, err


@pytest.fixture
def run(finished, tmp_path):
  """A copy of the finished run, for a row that may damage it."""
  wd = tmp_path / "run"
  shutil.copytree(finished[0], wd)
  return wd


# ----------------------------------------------------------------------------- convert --force


def test_convert_force_never_deletes_a_run_or_files_it_did_not_write(run, tmp_path):
  before = _tree(run)
  step = run / "checkpoints" / "6"
  # The user's case: --out contains the source (the run directory itself).
  line = _one_line(*_paced("convert", "--to-hf", step, "--out", run, "--force")[::2],
                   "must not be --to-hf", "contain it")
  assert str(run) in line
  # Its parent chain, and a directory inside the source, alike.
  _one_line(*_paced("convert", "--to-hf", step, "--out", run / "checkpoints", "--force")[::2],
            "contain it")
  _one_line(*_paced("convert", "--to-hf", step, "--out", step / "hf", "--force")[::2],
            "lie inside it")
  assert _tree(run) == before

  # Another run directory, a checkpoint, or a directory of one's own files: never replaced.
  other = tmp_path / "other"
  shutil.copytree(run, other)
  line = _one_line(*_paced("convert", "--to-hf", step, "--out", other, "--force")[::2],
                   "a paced run directory", "checkpoints/", "metrics.jsonl", "another --out")
  assert _tree(other) == before
  _one_line(*_paced("convert", "--to-hf", step, "--out", other / "checkpoints" / "3",
                    "--force")[::2], "a training checkpoint", "another --out")
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  _one_line(*_paced("convert", "--to-hf", step, "--out", mine, "--force")[::2],
            "notes.txt", "another --out")
  assert (mine / "notes.txt").read_text() == "mine"

  # An earlier convert output (either direction) is what --force replaces.
  hf, orbax = tmp_path / "hf", tmp_path / "orbax"
  for args in (("--to-hf", step, "--out", hf), ("--from-hf", hf, "--out", orbax)):
    for extra in ((), ("--force",)):
      rc, out, err = _paced("convert", *args, *extra)
      assert rc == 0 and "wrote" in out, err[-2000:]
  assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
  assert (orbax / "params").is_dir() and (orbax / "model_config.json").is_file()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
  assert _tree(run) == before


# ----------------------------------------------------------------------------- workdir lock


def _holder(tmp_path, wd):
  """A process holding the workdir lock (stdlib and paced_jax.lock only) until killed."""
  ready = tmp_path / "ready"
  proc = subprocess.Popen([sys.executable, "-c", (
      "import sys, time, pathlib\n"
      "from paced_jax.lock import WorkdirLock\n"
      "with WorkdirLock(sys.argv[1]):\n"
      "  pathlib.Path(sys.argv[2]).write_text('ok')\n"
      "  time.sleep(600)\n"), str(wd), str(ready)])
  deadline = time.time() + 60
  while not ready.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  assert ready.exists(), "the lock holder did not start"
  return proc


def test_lock_is_released_by_kill_9_and_falls_back_to_the_pid_without_flock(tmp_path,
                                                                          monkeypatch):
  from paced_jax import lock as lock_mod

  wd = tmp_path / "w"
  proc = _holder(tmp_path, wd)
  try:
    with pytest.raises(ConfigError, match=rf"is in use by another paced train \(host "
                       rf"{socket.gethostname()}, pid {proc.pid}\)"):
      lock_mod.WorkdirLock(wd).acquire()
  finally:
    proc.kill()  # SIGKILL: no cleanup runs; the record stays in the file
    proc.wait(timeout=30)
  assert json.loads((wd / ".lock").read_text())["pid"] == proc.pid
  with lock_mod.WorkdirLock(wd) as held:
    assert held.flock
    assert json.loads((wd / ".lock").read_text())["pid"] == os.getpid()
  assert (wd / ".lock").read_text() == ""  # a finished holder leaves no name behind

  # Without flock (gcsfuse: ENOSYS): only a live pid recorded on this host refuses.
  def no_flock(fd, op):
    raise OSError(errno.ENOSYS, "Function not implemented")

  monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    for host, pid, refused in ((socket.gethostname(), live.pid, True),
                               ("another-host", live.pid, False)):
      (wd / ".lock").write_text(json.dumps({"host": host, "pid": pid}))
      if refused:
        with pytest.raises(ConfigError, match=f"pid {pid}"):
          lock_mod.WorkdirLock(wd).acquire()
      else:
        with lock_mod.WorkdirLock(wd) as held:
          assert not held.flock
  finally:
    live.kill()
    live.wait(timeout=30)
  (wd / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid}))
  with lock_mod.WorkdirLock(wd):  # that process is dead now
    pass


@pytest.mark.slow  # over 30 s: subprocess runs
def test_two_trains_on_one_workdir_the_second_is_refused(tmp_path):
  wd = tmp_path / "run"
  sets = ["--quiet", "--set", "eval.max_problems=0", "--set", "train.steps=2000"]
  with open(tmp_path / "first.log", "w") as log:
    first = subprocess.Popen([sys.executable, "-m", "paced_jax.cli", "train", TINY,
                              "--workdir", str(wd), *sets], stdout=log, stderr=log)
  try:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and first.poll() is None and not any(
        "loss" in m for m in read_metrics(wd)):  # the lock exists, and it is in its loop
      time.sleep(0.1)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
    rc, _, err = _paced("train", TINY, "--workdir", wd, *sets, timeout=120)
    line = _one_line(rc, err, f"workdir '{wd}' is in use by another paced train",
                     f"(host {socket.gethostname()}, pid {first.pid})", "another --workdir")
    assert line.endswith("wait for it to finish or use another --workdir")
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]  # unharmed
    # It trains on: wait for a committed checkpoint, then kill -9 it.
    while time.time() < deadline and first.poll() is None and not any(
        p.name.isdigit() for p in (wd / "checkpoints").glob("*")):
      time.sleep(0.1)
    time.sleep(1.0)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
  finally:
    first.kill()
    first.wait(timeout=60)
  steps = [m["step"] for m in read_metrics(wd) if "loss" in m]
  assert len(steps) == len(set(steps)) and steps, "one writer: each step once"
  newest = max(int(p.name) for p in (wd / "checkpoints").glob("*") if p.name.isdigit())
  # The killed run's lock blocks nothing: the next run resumes and finishes.
  rc, out, err = _paced("train", TINY, "--workdir", wd, "--quiet", "--set",
                        "eval.max_problems=0", "--set", f"train.steps={newest + 3}")
  assert rc == 0 and "Traceback" not in err, err[-2000:]
  assert "resumed from step" in err and f"done: step {newest + 3}" in out
  steps = [m["step"] for m in read_metrics(wd) if "loss" in m]
  assert len(steps) == len(set(steps))


# ----------------------------------------------------------------------------- report


def test_end_of_train_report_failure_is_a_warning_not_a_failure(finished):
  wd, rc, out, err = finished
  assert rc == 0, err[-2000:]
  assert "done: step 6" in out and "Traceback" not in err
  warn = [line for line in err.splitlines() if "end-of-run report" in line]
  assert len(warn) == 1 and warn[0].startswith("WARNING paced_jax.report:"), err[-2000:]
  assert "No space left on device" in warn[0] and f"paced report {wd}" in warn[0]
  assert not list((wd / "report").glob("*.png"))  # no partial PNG left behind
  assert (wd / "checkpoints" / "6").is_dir() and (wd / "finished.json").is_file()


def test_paced_report_failures_are_one_line(run, tmp_path):
  rc, out, err = _paced("report", run)
  assert rc == 0 and "Traceback" not in err, err[-2000:]
  assert (run / "report" / "passrate_histograms.png").is_file()

  # The disk fills while it writes: one line naming the file, no partial PNG.
  shutil.rmtree(run / "report")
  _one_line(*_paced("report", run, wrapper=ENOSPC)[::2], "report/",
            "could not be written (No space left on device)")
  assert not list((run / "report").glob("*.png"))
  # report/ cannot be created (a file is in the way).
  shutil.rmtree(run / "report")
  (run / "report").write_text("")
  _one_line(*_paced("report", run)[::2], "report cannot be created")
  (run / "report").unlink()

  # A missing directory.
  _one_line(*_paced("report", tmp_path / "missing")[::2], "is not a directory")
  # A corrupt metrics line (not the torn last line a kill -9 leaves, which is skipped).
  metrics = run / "metrics.jsonl"
  good = metrics.read_text()
  metrics.write_text(good + '{"step": 7, "lo')
  assert _paced("report", run)[0] == 0
  lines = good.splitlines()
  metrics.write_text("\n".join(lines[:2] + ["[1, 2]"] + lines[2:]) + "\n")
  _one_line(*_paced("report", run)[::2], "metrics.jsonl:3: not a metrics row")
  metrics.write_text("\n".join(lines[:2] + ['{"step": "x"}'] + lines[2:]) + "\n")
  _one_line(*_paced("report", run)[::2], "metrics.jsonl:3:", "'step'")
  metrics.write_text(good)
  # An unreadable pass-rate snapshot: not UTF-8, a bad row, not a file.
  snap = run / "passrates" / "round_00001.jsonl"
  text = snap.read_bytes()
  snap.write_bytes(b"\xff\xfe" + text)
  _one_line(*_paced("report", run)[::2], "round_00001.jsonl cannot be read (not UTF-8")
  snap.write_text('{"id": "a", "successes": 3, "trials": 2}\n' + text.decode())
  _one_line(*_paced("report", run)[::2], "round_00001.jsonl:1: not a pass-rate row")
  snap.unlink()
  snap.mkdir()
  _one_line(*_paced("report", run)[::2], "round_00001.jsonl cannot be read (Is a directory)")


# ----------------------------------------------------------------------------- histogram


def test_passrate_histogram_one_bin_per_value_and_each_rounds_own_estimates(tmp_path,
                                                                          monkeypatch):
  import matplotlib.axes

  from paced_jax import cli
  from paced_jax.estimate import plot_frontier
  from paced_jax.frontier import pass_rate_levels
  from paced_jax.report import passrate_bins

  K = 4
  # Round 1 (step 10) estimated 10 problems, two at each s/4; 3 rows are stale estimates of
  # round 0 (step 0) that round 1 skipped, and 2 problems were never estimated.
  fresh = [{"id": f"f{i}", "successes": i % (K + 1), "trials": K, "step": 10} for i in range(10)]
  stale = [{"id": f"s{i}", "successes": K, "trials": K, "step": 0} for i in range(3)]
  never = [{"id": f"n{i}", "successes": 0, "trials": 0, "step": -1} for i in range(2)]
  round0 = [{**r, "step": 0} for r in fresh[:4]] + stale + never
  levels, grid, estimated = passrate_bins([round0, fresh + stale + never], [0, 10])
  np.testing.assert_allclose(levels, [0, 0.25, 0.5, 0.75, 1])
  assert grid.shape == (K + 1, 2) and list(estimated) == [7, 10]
  np.testing.assert_allclose(grid[:, 1], [0.2] * 5)  # stale rows left out; none empty
  np.testing.assert_allclose(grid[:, 0], np.array([1, 1, 1, 1, 3]) / 7)
  np.testing.assert_allclose(grid.sum(0), 1)
  # Without the step of the round (no metrics line): the newest step in the snapshot.
  np.testing.assert_allclose(passrate_bins([fresh + stale], [None])[1], grid[:, 1:])
  # Mixed trial counts: the union of the grids; past 41 values, the most common n's grid.
  np.testing.assert_allclose(pass_rate_levels([2, 4, 4]), [0, 0.25, 0.5, 0.75, 1])
  np.testing.assert_allclose(pass_rate_levels([4] * 9 + list(range(5, 20))), levels)

  # What `paced report` draws is that grid.
  wd = tmp_path / "run"
  (wd / "passrates").mkdir(parents=True)
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
      {"step": 0, "frontier/round": 0.0}, {"step": 10, "frontier/round": 1.0},
      {"step": 1, "loss": 1.0})))
  for r, recs in enumerate((round0, fresh + stale + never)):
    (wd / "passrates" / f"round_{r:05d}.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in recs))
  images, bars = [], []
  imshow, bar = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.bar
  monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda self, x, *a, **k: (
      images.append(np.asarray(x)), imshow(self, x, *a, **k))[1])
  monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, x, h, *a, **k: (
      bars.append((np.asarray(x), np.asarray(h))), bar(self, x, h, *a, **k))[1])
  assert cli.main(["report", str(wd)]) == 0
  np.testing.assert_allclose(images[-1], grid)
  # `paced estimate`'s plot: one bar per s/4, counts of the estimated problems.
  recs = fresh + never
  p = [r["successes"] / r["trials"] if r["trials"] else np.nan for r in recs]
  first = len(bars)  # the pass rates' bars come first, then the weights' histogram
  plot_frontier(tmp_path / "p.png", p, np.ones(len(recs)), trials=[r["trials"] for r in recs])
  np.testing.assert_allclose(bars[first][0], levels)
  np.testing.assert_array_equal(bars[first][1], [2] * 5)


@pytest.mark.slow  # over 30 s: subprocess runs
def test_an_unwritable_checkpoint_directory_ends_within_seconds_of_its_line(tmp_path):
  """`chattr +i RUN/checkpoints`, then resume to a later step: the one line comes, and the
  process ends right after it (Orbax's signalling threads used to hold it for ~330 s)."""
  import shutil
  import time

  if shutil.which("chattr") is None:
    pytest.skip("chattr is not installed")
  wd = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "paced_jax.cli", "train", "configs/demo.py:tiny", "--workdir",
          str(wd), "--quiet", "--set", "eval.max_problems=0"]
  r = subprocess.run(base + ["--set", "train.steps=3"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  if subprocess.run(["chattr", "+i", str(wd / "checkpoints")], capture_output=True).returncode:
    pytest.skip("chattr +i is not permitted here")
  try:
    t0 = time.monotonic()
    r = subprocess.run(base + ["--set", "train.steps=6"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=200)
    elapsed = time.monotonic() - t0
  finally:
    subprocess.run(["chattr", "-i", str(wd / "checkpoints")])
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("paced: error: a checkpoint could not be written"), last
  assert "Traceback" not in r.stderr
  assert elapsed < 120  # a run that takes seconds; the hang was minutes
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]


@pytest.mark.slow  # over 30 s: subprocess runs
def test_a_disk_that_fills_mid_run_is_one_line_and_the_run_resumes(tmp_path):
  """A 350 kB tmpfs workdir fills during the run: one line naming the path and what to free,
  exit 2, the checkpoints written so far intact; after moving the run where there is space, the
  same command resumes and finishes."""
  mnt = tmp_path / "small"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=350k", "tmpfs", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = lambda wd: [sys.executable, "-m", "paced_jax.cli", "train", TINY, "--workdir",
                     str(wd), "--quiet", "--set", "eval.max_problems=0"]
  try:
    r = subprocess.run(args(mnt / "run"), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    # Where it fills decides which write reports it (a checkpoint save, or any other file).
    assert last.startswith("paced: error: ") and "No space left on device" in last, last
    assert "intact" in last, last
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr, r.stderr[-3000:]
    shutil.copytree(mnt / "run", tmp_path / "run")
  finally:
    subprocess.run(["umount", str(mnt)])
  r = subprocess.run(args(tmp_path / "run"), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "done: step 6" in r.stdout


@pytest.mark.slow  # over 30 s: subprocess runs
def test_a_disk_that_fills_inside_a_checkpoint_save_is_one_line_without_tracebacks(tmp_path):
  """One step is trained (checkpoint 1) on a tmpfs, which is then shrunk to leave half a
  checkpoint free: the resumed run (a save at every step) fills the disk inside Orbax's write of
  step 2. One line, exit 2, and none of the tracebacks Orbax's threads print on their own then
  (TensorStore finishing abandoned writes on an event loop Orbax closed, unretrieved task
  exceptions); the process ends; step 1 stays readable; with more space the same command
  resumes from it and finishes."""
  from paced_jax.models.io import incomplete, load_model

  mnt = tmp_path / "small"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  wd = mnt / "run"
  ckpts = wd / "checkpoints"
  cmd = [sys.executable, "-m", "paced_jax.cli", "train", TINY, "--workdir", str(wd), "--quiet",
         "--set", "eval.max_problems=0", "--set", "train.ckpt_every=1"]
  try:
    r = subprocess.run(cmd + ["--set", "train.steps=1"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = sum(p.stat().st_blocks * 512 for p in (ckpts / "1").rglob("*") if p.is_file())
    fs = os.statvfs(mnt)
    used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    # Sizes differ with the device count (shards) and the Orbax version: measured, not assumed.
    size_k = (used + one // 2) // 1024 + 1
    assert subprocess.run(["mount", "-o", f"remount,size={size_k}k", str(mnt)]).returncode == 0
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("paced: error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == errors[0], r.stderr[-3000:]
    assert "No space left on device" in errors[0] and "intact" in errors[0], errors[0]
    for noise in ("Traceback", "Event loop is closed", "never retrieved", "Exception in thread",
                  "meta_path"):
      assert noise not in r.stderr, r.stderr[-3000:]
    assert elapsed < 150  # ended (a run of seconds), not held by Orbax's threads
    names = sorted(p.name for p in ckpts.iterdir())
    assert "2.orbax-checkpoint-tmp" in names, names  # the disk filled inside the save of step 2
    assert [n for n in names if n.isdigit()] == ["1"], names
    assert incomplete(ckpts / "1") is None  # the checkpoint written before the fill is whole
    load_model(ckpts / "1")
    assert subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)]).returncode == 0
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  finally:
    subprocess.run(["umount", str(mnt)])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 1" in r.stderr, r.stderr[-3000:]
  assert "done: step 6" in r.stdout
  assert "Traceback" not in r.stderr


def test_unverified_references_without_teacher_references_is_one_line(tmp_path):
  """data.reference_verify=false on dataset solutions: one line, exit 2, the process ends, and
  the workdir is not created (the config is refused before anything is written)."""
  wd = tmp_path / "wd"
  rc, _, err = _paced("train", TINY, "--workdir", wd, "--set", "data.reference_verify=false")
  _one_line(rc, err, "data.reference_verify=false keeps teacher references unverified",
            "data.reference=teacher")
  assert not wd.exists()
