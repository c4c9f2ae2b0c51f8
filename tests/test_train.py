"""The training loop end to end on the tiny demo config: resume exactness, SIGTERM, bad input."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from paced_jax.config import ConfigError, load_config
from paced_jax.metrics import read_metrics
from paced_jax.train import TrainingDiverged, train

TINY = "configs/demo.py:tiny"


def _params(workdir, step):
  tree = ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "checkpoints" / str(step)
                                            / "params")
  return [np.asarray(x) for x in __import__("jax").tree.leaves(tree)]


def _losses(workdir):
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def test_resume_is_exact(tmp_path):
  # 6 steps, pass-rate refresh every 3 (rounds 0 and 1), checkpoint every 3. The interrupted
  # run stops after 2 steps: mid-round and between checkpoints.
  cfg = load_config(TINY)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  out = train(cfg, straight, progress=False)
  assert out["step"] == 6
  first = train(cfg, resumed, progress=False, stop_after=2)
  assert first["step"] == 2
  second = train(cfg, resumed, progress=False)
  assert second["step"] == 6
  for a, b in zip(_params(straight, 6), _params(resumed, 6)):
    np.testing.assert_array_equal(a, b)
  la, lb = _losses(straight), _losses(resumed)
  assert sorted(la) == sorted(lb) == list(range(6))
  for s in range(6):
    assert la[s] == lb[s], (s, la[s], lb[s])
  # Two pass-rate rounds were estimated and snapshotted, and the run dir has its parts.
  assert sorted(p.name for p in (straight / "passrates").iterdir()) == [
      "round_00000.jsonl", "round_00001.jsonl"]
  assert (straight / "tensorboard").is_dir() and (straight / "config.json").is_file()


def test_incompatible_workdir_and_divergence(tmp_path):
  cfg = load_config(TINY, ["train.steps=2", "train.ckpt_every=1"])
  wd = tmp_path / "run"
  train(cfg, wd, progress=False)
  before = sorted(p.name for p in (wd / "checkpoints").iterdir())
  other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden=48))
  with pytest.raises(ConfigError, match=r"holds checkpoints of a different config \(model.hidden"):
    train(other, wd, progress=False)
  # A diverging run stops with a clear error and leaves earlier checkpoints untouched.
  bad = load_config(TINY, ["train.steps=4", "train.ckpt_every=1", "train.lr=inf"])
  wd2 = tmp_path / "nan"
  with pytest.raises(TrainingDiverged, match="diverged"):
    train(bad, wd2, progress=False)
  saved = sorted(int(p.name) for p in (wd2 / "checkpoints").iterdir() if p.name.isdigit())
  for s in saved:
    assert all(np.isfinite(x).all() for x in _params(wd2, s))
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before


def _cli(*args, **kw):
  return subprocess.Popen([sys.executable, "-m", "paced_jax.cli", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  wd = tmp_path / "run"
  proc = _cli("train", TINY, "--workdir", str(wd), "--quiet", "--set", "train.steps=100000",
              "--set", "train.ckpt_every=100000", "--set", "train.log_every=1")
  deadline = time.time() + 300
  while time.time() < deadline:
    if any("loss" in m for m in read_metrics(wd)):
      break
    if proc.poll() is not None:
      pytest.fail(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  steps = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 1
  assert (wd / "checkpoints" / str(steps[0]) / "commit_success.txt").exists() or \
      (wd / "checkpoints" / str(steps[0]) / "_CHECKPOINT_METADATA").exists()
  meta = json.loads(next((wd / "checkpoints" / str(steps[0]) / "meta").glob("*")).read_text())
  assert meta["step"] == steps[0]
  # It resumes from there.
  out = train(load_config(TINY, [f"train.steps={steps[0] + 1}"]), wd, progress=False)
  assert out["step"] == steps[0] + 1


@pytest.mark.parametrize("args,match", [
    (["--set", "teacher.vocab_size=64"], "teacher vocab_size=64 differs from student"),
    (["--set", "model.vocab_size=64", "--set", "teacher.vocab_size=64"],
     "tokenizer 'char' has 128 ids but model.vocab_size=64"),
])
def test_cli_bad_input(tmp_path, args, match):
  proc = _cli("train", TINY, "--workdir", str(tmp_path / "w"), "--quiet", *args)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err
  lines = err.strip().splitlines()
  assert lines[-1].startswith("paced: error:") and match in lines[-1], lines[-3:]


def test_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  cfg = load_config(TINY)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match="is a URL"):
    train(cfg, "gs://bucket/run", progress=False)
  assert not any(tmp_path.iterdir())


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  proc = _cli("train", TINY, "--workdir", str(blocker / "sub"), "--quiet")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "is not writable" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("mode", ["on_policy", "self_distill"])
def test_on_policy_modes_run(tmp_path, mode):
  over = [f"loss.mode={mode}", "train.steps=2",
          "eval.max_problems=0", "paced.weighting=uniform"]
  out = train(load_config(TINY, over), tmp_path / mode, progress=False)
  assert out["step"] == 2 and np.isfinite(out["loss"]) and out["tokens"] > 0


def test_teacher_references_are_generated_once(tmp_path, monkeypatch):
  # A verifier that keeps every response, importable by path as users' verifiers are.
  (tmp_path / "accept_all.py").write_text("def verify(text, problem):\n  return True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  over = ["data.reference=teacher", "paced.verifier=accept_all:verify", "train.steps=1",
          "eval.max_problems=0", "paced.weighting=uniform"]
  wd = tmp_path / "run"
  train(load_config(TINY, over), wd, progress=False)
  shards = sorted((wd / "references").glob("*.array_record"))
  assert shards
  stamps = [p.stat().st_mtime_ns for p in shards]
  train(load_config(TINY, over + ["train.steps=2"]), wd, progress=False)  # resumes
  assert sorted((wd / "references").glob("*.array_record")) == shards
  assert [p.stat().st_mtime_ns for p in shards] == stamps  # read back, not regenerated


def test_compute_accounting_and_flops_budget(tmp_path):
  # Uniform weighting: no rollouts, so compute is the train steps alone, each counted from its
  # batch shape. The budget of 2.5 steps stops the run after the step that crosses it.
  over = ["paced.weighting=uniform", "eval.max_problems=0", "train.schedule=constant"]
  free = train(load_config(TINY, over), tmp_path / "free", progress=False)
  per_step = free["compute/train_flops"] / free["step"]
  assert free["compute/rollout_flops"] == 0 and per_step > 0
  cfg = load_config(TINY, over + [f"train.max_flops={2.5 * per_step}"])
  out = train(cfg, tmp_path / "budget", progress=False)
  assert 2 <= out["step"] < cfg.train.steps
  flops = {m["step"]: m["compute/flops"] for m in read_metrics(tmp_path / "budget")
           if "compute/flops" in m}
  last = out["step"] - 1
  assert flops[last] >= cfg.train.max_flops > flops[last - 1]
  # Resuming a run whose budget is spent trains no further.
  again = train(cfg, tmp_path / "budget", progress=False)
  assert again["step"] == out["step"]
  # PACED weighting pays for its estimates: rollout FLOPs of the K samples per problem.
  paced = train(load_config(TINY, ["eval.max_problems=0", "train.steps=1"]), tmp_path / "paced",
                progress=False)
  assert paced["compute/rollout_flops"] > 0


def test_a_refresh_the_budget_cannot_pay_for_is_not_started(tmp_path, caplog):
  # PACED arms refresh every step here. Under a budget the run stops within one step of it
  # (as uniform does), not a refresh past it: a refresh the budget left cannot pay for (with
  # a step) is not started, said once, and the last steps train on the round the run has.
  over = ["eval.max_problems=0", "train.schedule=constant", "paced.refresh_every=1",
          "train.steps=12", "paced.rollouts=4", "paced.refresh_subset=32"]
  # Two steps and two refreshes (rounds 0 and 1), exactly as the budgeted run starts.
  two = train(load_config(TINY, over + ["train.steps=2"]), tmp_path / "two", progress=False)
  refreshes, steps = two["compute/rollout_flops"], two["compute/train_flops"]
  step_cost = steps / 2
  budget = refreshes + steps + 0.25 * refreshes  # round 2 would cost ~0.5 * refreshes
  with caplog.at_level("INFO", logger="paced_jax.train"):
    out = train(load_config(TINY, over + [f"train.max_flops={budget}"]), tmp_path / "b",
                progress=False)
  assert out["compute/rollout_flops"] == pytest.approx(refreshes, rel=1e-9)  # no round 2
  assert budget <= out["compute/flops"] <= budget + 1.01 * step_cost
  said = [r.getMessage() for r in caplog.records if "not started" in r.getMessage()]
  assert len(said) == 1 and "round 2 at step 2" in said[0], said


def test_constant_schedule_holds_the_peak():
  from paced_jax.step import learning_rate

  cfg = load_config(TINY, ["train.schedule=constant", "train.warmup_steps=2", "train.lr=0.1"])
  # Step 0 already learns: lr / warmup_steps, then lr from step warmup_steps - 1 on.
  assert [round(float(learning_rate(cfg.train, s)), 6) for s in (0, 1, 2, 5, 999)] == [
      0.05, 0.1, 0.1, 0.1, 0.1]
  cosine = load_config(TINY, ["train.warmup_steps=2", "train.lr=0.1"])
  assert float(learning_rate(cosine.train, cosine.train.steps)) == pytest.approx(0.01)


def test_gcsfuse_workdirs_commit_checkpoints_by_file(tmp_path, monkeypatch):
  from paced_jax import checkpoint as ckpt

  mounts = tmp_path / "mounts"
  mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nbkt {tmp_path}/bucket fuse.gcsfuse rw 0 0\n")
  assert ckpt.fuse_filesystem(tmp_path / "bucket" / "run", mounts) == "fuse.gcsfuse"
  assert ckpt.fuse_filesystem(tmp_path / "bucketx", mounts) is None
  assert ckpt.fuse_filesystem(tmp_path, tmp_path / "missing") is None
  # On such a mount a step is marked finished by a commit file (renames there are copies).
  monkeypatch.setattr(ckpt, "fuse_filesystem", lambda path: "fuse.gcsfuse")
  mgr = ckpt.manager(tmp_path / "ckpt", async_save=False)
  params = {"w": np.arange(4.0, dtype=np.float32)}
  ckpt.save(mgr, 1, params=params, opt_state={"m": np.zeros(2, np.float32)},
            passrates={"s": np.ones(3, np.int64)}, meta={"step": 1})
  mgr.wait_until_finished()
  out = ckpt.restore(mgr, None, params=params, opt_state={"m": np.zeros(2, np.float32)})
  mgr.close()
  np.testing.assert_array_equal(out["params"]["w"], params["w"])
  assert out["meta"] == {"step": 1}
  np.testing.assert_array_equal(out["passrates"]["s"], np.ones(3, np.int64))
  assert any("commit" in p.name for p in (tmp_path / "ckpt" / "1").iterdir())
