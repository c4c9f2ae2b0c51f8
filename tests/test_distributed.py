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


def test_two_processes_match_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  train(load_config(TINY, OVER), one, progress=False)

  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  sets = [a for o in OVER for a in ("--set", o)]
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
