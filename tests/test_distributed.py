"""Multi-process JAX for real: two CPU processes on localhost (4 devices each, gloo collectives)
train the tiny demo config and must match one process with 8 devices step for step."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from paced_jax.cli import main
from paced_jax.config import load_config
from paced_jax.distributed import initialize
from paced_jax.metrics import read_metrics
from paced_jax.train import train

TINY = "configs/demo.py:tiny"
# Two pass-rate rounds, an on-policy-free forward-KL run, checkpoints from both processes.
OVER = ["train.steps=4", "paced.refresh_every=2", "train.ckpt_every=2", "train.log_every=1",
        "eval.max_problems=0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _params(workdir, step, like=None):
  """A checkpoint's parameters on this process's first device (`like`: a restored tree whose
  shapes and dtypes name the target, for checkpoints written by another topology)."""
  import jax

  path = Path(workdir).absolute() / "checkpoints" / str(step) / "params"
  target = None
  if like is not None:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), like)
  return ocp.StandardCheckpointer().restore(path, target)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, monkeypatch):
  # The tiny student solves nothing under the exact verifier, so every pass rate would be 0
  # whatever the rollouts: this verifier's outcome is a function of the sampled text instead.
  (tmp_path / "parity_verifier.py").write_text(
      "def verify(text, problem):\n  return sum(map(ord, text)) % 2 == 0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  over = OVER + ["paced.verifier=parity_verifier:verify"]
  one, two = tmp_path / "one", tmp_path / "two"
  train(load_config(TINY, over), one, progress=False)

  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                      os.environ.get("PYTHONPATH")])))
  sets = [a for o in over for a in ("--set", o)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "paced_jax.cli", "train", TINY, "--workdir", str(two), "--quiet",
       *sets, "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
       str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  # Only process 0 reports.
  assert "done: step 4" in outs[0] and "done: step" not in outs[1]

  la = {m["step"]: m["loss"] for m in read_metrics(one) if "loss" in m}
  lb = {m["step"]: m["loss"] for m in read_metrics(two) if "loss" in m}
  assert sorted(la) == sorted(lb) == [0, 1, 2, 3]
  np.testing.assert_allclose([lb[s] for s in range(4)], [la[s] for s in range(4)], rtol=1e-5)
  # The same pass-rate estimates (rollouts sampled over 8 devices of 2 processes) ...
  for r in ("round_00000.jsonl", "round_00001.jsonl"):
    ra = [json.loads(x) for x in (one / "passrates" / r).read_text().splitlines()]
    rb = [json.loads(x) for x in (two / "passrates" / r).read_text().splitlines()]
    assert ra == rb
    estimated = [x for x in ra if x["trials"]]
    assert any(x["successes"] > 0 for x in estimated)  # the outcomes are not trivial
    assert any(x["successes"] < x["trials"] for x in estimated)
  # ... and the same parameters in the checkpoint both processes wrote with Orbax.
  import jax

  ref = _params(one, 4)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(_params(two, 4, like=ref))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,match", [
    (["--coordinator", "localhost:1"], "need all of --coordinator"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "must be in [0, 2)"),
    (["--distributed", "off", "--process-id", "0"], "contradicts"),
])
def test_bad_distributed_flags(args, match, capsys):
  assert main(["smoke", TINY, *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and match in err[0]


def test_single_process_stays_single(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"):
    monkeypatch.delenv(var, raising=False)
  assert initialize() is False and initialize(mode="off") is False


def _cluster(monkeypatch, env, chips, libtpu):
  """A fake environment: variables, TPU device files, an installed libtpu; records whether
  jax.distributed.initialize was called (with no arguments: JAX's own cluster detection)."""
  import importlib.util

  import jax
  from paced_jax import distributed

  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(distributed.glob, "glob",
                      lambda pattern: ["/dev/accel0"] if chips and "accel" in pattern else [])
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(distributed.importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" and libtpu else (
                          None if name == "libtpu" else find_spec(name, *a)))
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  return calls


@pytest.mark.parametrize("env,chips,libtpu,started", [
    ({}, False, False, False),
    ({"SLURM_NTASKS": "1"}, False, False, False),  # one task: nothing to coordinate
    ({"SLURM_NTASKS": "4"}, False, False, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, False, False, True),
    ({}, True, True, True),  # a Cloud TPU VM
    ({}, False, True, False),  # libtpu on a CPU machine (for AOT compilation) is no TPU VM
    ({}, True, False, False),
])
def test_auto_detection(monkeypatch, env, chips, libtpu, started):
  calls = _cluster(monkeypatch, env, chips, libtpu)
  assert initialize() is started
  assert calls == ([((), {})] if started else [])
  assert initialize(mode="off") is False and len(calls) == started


@pytest.mark.parametrize("env,chips,why", [({"SLURM_NTASKS": "2"}, False, "SLURM"),
                                           ({"JAX_COORDINATOR_ADDRESS": "h:1"}, False,
                                            "JAX_COORDINATOR_ADDRESS"),
                                           ({}, True, None)])
def test_auto_detection_failure(monkeypatch, env, chips, why):
  import jax
  from paced_jax.config import ConfigError

  _cluster(monkeypatch, env, chips, True)

  def fail(*a, **k):
    raise RuntimeError("no coordinator found\nsecond line")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  if why is None:  # a TPU VM whose JAX cannot start the service: one process, not an error
    assert initialize() is False
    return
  with pytest.raises(ConfigError) as e:
    initialize()
  msg = str(e.value)
  assert f"from the {why} environment" in msg and "no coordinator found" in msg
  assert "--distributed off" in msg and "\n" not in msg
