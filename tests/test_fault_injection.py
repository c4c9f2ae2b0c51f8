"""Faults: kill -9 at deterministic points then the same command, signals, and write failures.

Kill points are deterministic, never timing-based:
  - the test verifier below SIGKILLs its own process on its Nth call (PACED_TEST_KILL_CALL=N).
    On this config a fresh run verifies 48 teacher references first (data.reference=teacher),
    then 32 responses per estimate (16 problems x 2 rollouts): the first estimate, and the
    refresh at step 3;
  - `checkpoint.fault_point`: PACED_FAULT=save:S SIGKILLs right after the save of step S is
    dispatched (its files half written).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from paced_jax.metrics import read_metrics

TINY = "configs/demo.py:tiny"
VERIFIER = '''
import os, signal, threading, time
_lock, _n = threading.Lock(), [0]
def verify(text, problem):
  with _lock:
    _n[0] += 1
    n = _n[0]
  if n == int(os.environ.get("PACED_TEST_KILL_CALL", "0")):
    os.kill(os.getpid(), signal.SIGKILL)
  if os.environ.get("PACED_TEST_HANG_MARK"):  # hang, after saying so
    open(os.environ["PACED_TEST_HANG_MARK"], "w").close()
    time.sleep(3600)
  return (len(text) + len(problem.id)) % 2 == 0
'''
ARGS = ["--quiet", "--set", "data.reference=teacher", "--set", "paced.verifier=killer:verify",
        "--set", "eval.max_problems=0"]
TIMING = ("steps_per_s", "frontier/estimate_seconds")


def _run(tmp_path, wd, *extra, env=None, wait=True):
  (tmp_path / "killer.py").write_text(VERIFIER)
  full_env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
              **(env or {})}
  proc = subprocess.Popen([sys.executable, "-m", "paced_jax.cli", "train", TINY, "--workdir",
                           str(wd), *ARGS, *extra], env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _committed(wd):
  d = wd / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _params(wd, step):
  tree = ocp.StandardCheckpointer().restore(wd.absolute() / "checkpoints" / str(step) / "params")
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _metrics(wd):
  return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(wd)]


@pytest.mark.slow
def test_kill_9_at_five_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
  straight, wd = tmp_path / "straight", tmp_path / "killed"
  rc, err = _run(tmp_path, straight)
  assert rc == 0, err[-2000:]
  kills = []

  def kill(env):
    rc, err = _run(tmp_path, wd, env=env)
    assert rc == -signal.SIGKILL, (env, rc, err[-2000:])
    kills.append(env)

  kill({"PACED_TEST_KILL_CALL": "5"})  # 1. during reference generation
  assert not _committed(wd)
  kill({"PACED_TEST_KILL_CALL": "53"})  # 2. during the first estimate (48 references + 5)
  assert not _committed(wd) and list((wd / "references").glob("*.array_record"))
  kill({"PACED_FAULT": "save:3"})  # 3. during the save of step 3
  # 4. during the refresh at step 3: the run restarts from step 3 (5th call of its refresh), or
  # from 0 when the killed save never committed (first estimate 32 calls, then the refresh).
  kill({"PACED_TEST_KILL_CALL": "5" if _committed(wd) else "37"})
  kill({"PACED_FAULT": "save:6"})  # 5. during the last save
  rc, err = _run(tmp_path, wd)  # the same command, undisturbed
  assert rc == 0, err[-2000:]
  assert len(kills) == 5
  for a, b in zip(_params(straight, 6), _params(wd, 6)):
    np.testing.assert_array_equal(a, b)
  ma, mb = _metrics(straight), _metrics(wd)
  flops = lambda ms: [{k: v for k, v in m.items() if k.startswith("compute/")} for m in ms]
  other = lambda ms: [{k: v for k, v in m.items() if not k.startswith("compute/")} for m in ms]
  assert other(ma) == other(mb)  # every step once, same values (timings aside)
  losses = [m["step"] for m in mb if "loss" in m]
  assert losses == sorted(set(losses)) == list(range(6))
  # Every invocation's config is kept.
  assert (wd / "configs").is_dir() and (wd / "config.json").is_file()
  if flops(ma) != flops(mb):
    pytest.xfail("teacher references read back from the cache pack to other padded lengths "
                 "than freshly generated ones, so compute/train_flops differs (same losses); "
                 "data/references.py + rollout_data.py, not this test's subject")


def test_sigint_in_the_loop_checkpoints_and_exits_130(tmp_path):
  wd = tmp_path / "run"
  proc = _run(tmp_path, wd, "--set", "train.steps=100000", "--set", "train.ckpt_every=100000",
              "--set", "data.reference=dataset", wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and not any("loss" in m for m in read_metrics(wd)):
    if proc.poll() is not None:
      pytest.fail(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.3)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  line = [l for l in err.splitlines() if "stopped by SIGINT" in l]
  assert len(line) == 1 and line[0].startswith("WARNING"), err[-1000:]  # its own line
  step = _committed(wd)
  assert len(step) == 1 and step[0] >= 1
  steps = [m["step"] for m in read_metrics(wd) if "loss" in m]
  assert steps == sorted(set(steps))


def test_sigterm_during_the_first_estimate_exits_with_a_message(tmp_path):
  wd, mark = tmp_path / "run", tmp_path / "hanging"
  proc = _run(tmp_path, wd, "--set", "data.reference=dataset", "--set",
              "paced.verify_timeout_s=0.5", env={"PACED_TEST_HANG_MARK": str(mark)}, wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and not mark.exists():
    if proc.poll() is not None:
      pytest.fail(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.2)
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert time.time() - t0 < 60
  last = err.strip().splitlines()[-1]
  assert last.startswith("paced: interrupted by SIGTERM before the first checkpoint"), last
  assert "Traceback" not in err
  assert not _committed(wd)
  assert json.loads((wd / "config.json").read_text()) if (wd / "config.json").exists() else True
