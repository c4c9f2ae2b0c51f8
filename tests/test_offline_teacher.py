"""Offline teacher end to end on the tiny demo config: `paced teacher-logits` writes the shards
(and resumes), the offline step equals the online one at k = V, `train()` on stored logits loads
no teacher and counts no teacher FLOPs, and bad inputs are one line from the `paced` command."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from paced_jax import build, flops, plan, step as step_lib
from paced_jax.config import load_config
from paced_jax.data.pipeline import FrontierPipeline
from paced_jax.data.sources import load_pool
from paced_jax.data.tokenizer import load_tokenizer
from paced_jax.metrics import read_metrics
from paced_jax.sharding import make_mesh
from paced_jax.teacher_logits import OfflineTeacher
from paced_jax.train import train

TINY = "configs/demo.py:tiny"
V = 128  # the tiny models' vocabulary: k = V stores every id


def _paced(*args, timeout=300):
  """`paced ARGS` in a subprocess: (returncode, stdout, stderr); the process must end."""
  p = subprocess.Popen([sys.executable, "-m", "paced_jax.cli", *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _shards(d):
  """{file name: bytes} of the shards and their index files."""
  return {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))
          if n.startswith("shard-")}


@pytest.fixture(scope="module")
def logits_dir(tmp_path_factory):
  """Teacher logits of the tiny pool at k = V, written in two runs: half the pool, then all of
  it (the second resumes); returns (dir, the second run's stdout)."""
  d = str(tmp_path_factory.mktemp("logits") / "tl")
  rc, _, err = _paced("teacher-logits", TINY, "--out", d, "--k", str(V), "--quiet",
                      "--set", "data.synthetic_size=24")
  assert rc == 0, err[-3000:]
  half = _shards(d)
  assert OfflineTeacher(d).manifest["records"] == 24
  rc, out, err = _paced("teacher-logits", TINY, "--out", d, "--k", str(V), "--quiet")
  assert rc == 0, err[-3000:]
  full = _shards(d)
  assert all(full[n] == b for n, b in half.items()) and len(full) > len(half)  # only added
  return d, out


def test_command_writes_shards_and_a_rerun_resumes(logits_dir):
  d, out = logits_dir
  assert "24 reference(s) written" in out and "24 already stored" in out
  t = OfflineTeacher(d, verify="full")
  m = t.manifest
  cfg = load_config(TINY)
  assert m["records"] == len(t) == cfg.data.synthetic_size and m["k"] == V
  assert m["temperature"] == cfg.loss.temperature and m["vocab_limit"] == 0 and m["vocab"] == V
  assert m["tokenizer"] == {"path": "char", "hash": "char"}
  assert m["teacher"]["path"] == "" and m["teacher"]["model"]["hidden"] == cfg.teacher.hidden
  assert m["data"]["max_response_len"] == cfg.data.max_response_len
  assert m["data"]["length_buckets"] == list(cfg.data.length_buckets)
  assert m["compute"]["offline_teacher_flops"] > 0
  pool = load_pool(cfg.data, "train", seed=cfg.seed)
  assert sorted(m["problem_ids"]) == sorted(pool[i].id for i in range(len(pool)))
  ids, logp, tail = t.get(m["problem_ids"][0])
  assert np.isneginf(tail).all()  # k = V: no mass outside the stored ids
  np.testing.assert_allclose(np.exp(logp.astype(np.float64)).sum(-1), 1.0, rtol=5e-3)
  # A third run has nothing left to do: no shard is added or rewritten.
  before, manifest = _shards(d), json.loads(open(os.path.join(d, "manifest.json")).read())
  rc, out, err = _paced("teacher-logits", TINY, "--out", d, "--k", str(V), "--quiet")
  assert rc == 0, err[-3000:]
  assert "0 reference(s) written" in out and "48 already stored" in out
  assert _shards(d) == before
  assert json.loads(open(os.path.join(d, "manifest.json")).read()) == manifest
  # Another k into the same directory is refused in one line.
  rc, _, err = _paced("teacher-logits", TINY, "--out", d, "--k", "8", "--quiet")
  assert rc == 2 and "k=128, not 8" in err and "Traceback" not in err


def _offline_cfg(d, *sets):
  return load_config(TINY, [f"loss.teacher=offline:{d}", f"loss.offline_k={V}",
                            "eval.max_problems=0", *sets])


@pytest.mark.parametrize("chunk", [0, 16])
def test_offline_step_equals_online_at_k_equal_v(logits_dir, chunk):
  d, _ = logits_dir
  cfg_off = _offline_cfg(d, f"loss.chunk_size={chunk}")
  cfg_on = dataclasses.replace(cfg_off, loss=dataclasses.replace(cfg_off.loss, teacher=""))
  mesh = make_mesh(cfg_off.mesh)
  pipe = FrontierPipeline(load_pool(cfg_off.data, "train", seed=cfg_off.seed),
                          load_tokenizer("char"), cfg_off.data, seed=cfg_off.seed, mesh=mesh,
                          offline=OfflineTeacher(d))
  pipe.set_round(0, None)
  batch = next(pipe)
  pipe.close()
  B, T = batch["tokens"].shape
  R = min(cfg_off.data.max_response_len, T)
  assert batch["teacher_ids"].shape == (B, R, V) and batch["teacher_log_tail"].shape == (B, R)
  assert batch["teacher_ids"].sharding.spec[0] == batch["tokens"].sharding.spec[0]  # by rows
  online = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
  # The student as the run builds it; the teacher the command ran (seed + 1).
  student = build.load_or_init("", cfg_off.model, mesh, cfg_off.seed, "student")
  teacher = build.load_or_init("", cfg_on.teacher, mesh, cfg_on.seed + 1, "teacher")
  tdef, tparams = nnx.split(teacher)
  sdef, params = nnx.graphdef(student), nnx.state(student, nnx.Param)

  # What was stored: the teacher's log-softmax at each row's scored positions (an independent
  # path: full [B, T, V] logits, positions from the loss mask), every id, to float16 precision.
  full = np.asarray(jax.nn.log_softmax(teacher(jax.numpy.asarray(batch["tokens"]))), np.float64)
  mask, ids = np.asarray(batch["loss_mask"]), np.asarray(batch["teacher_ids"])
  stored = np.asarray(batch["teacher_logp"])
  assert stored.dtype == np.float16
  exact = np.zeros(stored.shape, np.float32)
  for b in range(B):
    at = np.nonzero(mask[b])[0][:R]
    assert (np.sort(ids[b, :len(at)], -1) == np.arange(V)).all()
    exact[b, :len(at)] = np.take_along_axis(full[b, at], ids[b, :len(at)], -1)
    np.testing.assert_allclose(stored[b, :len(at)], exact[b, :len(at)], rtol=2 ** -11, atol=1e-6)
  assert np.isneginf(np.asarray(batch["teacher_log_tail"])).all()

  def value_and_grad(cfg, tp, b):
    f = lambda p: step_lib.loss_fn(p, tp, b, "forward_kl", cfg=cfg, student_def=sdef,
                                   teacher_def=tdef, mesh=mesh)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  def close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      x, y = np.asarray(x), np.asarray(y)
      np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()) + 1e-12)

  # With the stored arrays' ids and the exact (fp32) log-probabilities the offline step IS the
  # online one: loss, per-example sums, token counts and gradients.
  exact_batch = dict(batch, teacher_logp=jax.device_put(exact, batch["teacher_logp"].sharding))
  (l_on, (s_on, c_on)), g_on = value_and_grad(cfg_on, tparams, online)
  (l_ex, (s_ex, c_ex)), g_ex = value_and_grad(cfg_off, None, exact_batch)
  np.testing.assert_array_equal(c_ex, c_on)
  close((l_ex, s_ex), (l_on, s_on), 1e-5)
  close(g_ex, g_on, 1e-4)
  # The stored float16 log-probabilities move it by their rounding only (the tiny random
  # models' near-uniform KL, ~0.01 per token, is small against a rounding of ~1e-3 per log-prob).
  (l_off, (s_off, _)), g_off = value_and_grad(cfg_off, None, batch)
  close((l_off, s_off), (l_on, s_on), 1e-2)
  close(g_off, g_on, 3e-2)
  # The compiled steps (offline: no teacher parameters) report the same as each other.
  tx = step_lib.make_optimizer(cfg_off.train)
  metrics = []
  for cfg, tp, td, b in ((cfg_on, tparams, tdef, online), (cfg_off, None, None, exact_batch)):
    fresh = build.load_or_init("", cfg.model, mesh, cfg.seed, "student")  # a step donates it
    state = step_lib.init_train_state(fresh, tx, mesh)
    fn = step_lib.compile_train_step(cfg, mesh, state, sdef, tp, td, tx)
    metrics.append(fn(state, tp, b)[1])
  for key in ("loss", "grad_norm", "tokens"):
    np.testing.assert_allclose(metrics[1][key], metrics[0][key], rtol=1e-5)


def test_train_on_stored_logits_loads_no_teacher_and_counts_no_teacher_flops(
    logits_dir, tmp_path, monkeypatch):
  d, _ = logits_dir
  cfg = _offline_cfg(d, "train.steps=3", "paced.refresh_every=3")  # its teacher section stays
  roles = []
  load = build.load_or_init
  monkeypatch.setattr(build, "load_or_init",
                      lambda path, m, mesh, seed, role: roles.append(role) or load(
                          path, m, mesh, seed, role))
  out = train(cfg, tmp_path / "run", progress=False)
  assert out["step"] == 3 and np.isfinite(out["loss"]) and roles == ["student"]
  rows = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
  assert [m["step"] for m in rows] == [0, 1, 2]
  # Every step's FLOPs are the student's alone at one of the length buckets.
  B, R = cfg.data.batch_size, cfg.data.max_response_len
  chunk = cfg.loss.chunk_size
  student_only = {flops.step_flops(cfg.model, None, B, T, min(R, T), chunk=chunk)
                  for T in cfg.data.length_buckets}
  with_teacher = {flops.step_flops(cfg.model, load_config(TINY).teacher, B, T, min(R, T),
                                   chunk=chunk) for T in cfg.data.length_buckets}
  spent = np.diff([0.0] + [m["compute/train_flops"] for m in rows])
  assert all(s in student_only and s not in with_teacher for s in spent), spent
  assert out["compute/train_flops"] == sum(spent)
  # A config without a teacher section sets up the same (its teacher is not needed).
  run, _ = build.setup(dataclasses.replace(cfg, teacher=None), tmp_path / "no_teacher",
                       progress=False)
  run.pipeline.close()
  assert run.teacher_params is None and run.pipeline.offline is not None
  assert roles == ["student", "student"]


def _one_line_error(rc, err):
  lines = [line for line in err.splitlines() if line.startswith("paced: error:")]
  assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


def _train_cli(wd, d, *sets):
  return _paced("train", TINY, "--workdir", str(wd), "--quiet", "--set",
                f"loss.teacher=offline:{d}", "--set", f"loss.offline_k={V}", *(
                    x for s in sets for x in ("--set", s)))


def test_bad_offline_inputs_are_one_line(logits_dir, tmp_path):
  d, _ = logits_dir
  line = _one_line_error(*_train_cli(tmp_path / "a", d, "loss.temperature=2")[::2])
  assert "manifest field temperature is 1.0, expected 2.0" in line
  line = _one_line_error(*_train_cli(tmp_path / "b", d, "data.synthetic_size=64")[::2])
  assert "16 of the pool's 64 reference responses have no stored logits (first: '" in line
  line = _one_line_error(*_train_cli(tmp_path / "c", d, "loss.mode=on_policy")[::2])
  assert "loss.mode=on_policy needs a live teacher" in line
  bad = str(tmp_path / "truncated")
  shutil.copytree(d, bad)
  shard = os.path.join(bad, [n for n in _shards(bad) if n.endswith(".array_record")][-1])
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  line = _one_line_error(*_train_cli(tmp_path / "d", bad)[::2])
  assert shard in line and "truncated" in line
  # None of them got past its checks into training.
  assert not any((tmp_path / w / "metrics.jsonl").exists() for w in "abcd")


def test_plan_counts_no_teacher_and_the_stored_arrays():
  # test_plan.py's sizes, where parameters and activations dominate XLA's overheads.
  sizes = [f"{role}.{k}={v}" for role in ("model", "teacher") for k, v in
           dict(hidden=256, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=768,
                vocab_size=4096).items()]
  cfg = load_config(TINY, sizes + ["data.length_buckets=128", "data.max_response_len=96",
                                   "mesh.fsdp=1", "loss.teacher=offline:/not/read",
                                   "loss.offline_k=64"])
  mesh = make_mesh(cfg.mesh, jax.devices()[:1])
  online = plan.estimate(dataclasses.replace(
      cfg, loss=dataclasses.replace(cfg.loss, teacher="")), dict(mesh.shape), 1 << 30)
  est = plan.estimate(cfg, dict(mesh.shape), 1 << 30)
  names = {n: b for _, n, b in est.rows}
  assert "teacher params" not in names and not any(n.startswith("teacher") for n in names)
  assert names["offline teacher arrays (k=64)"] == 8 * 96 * (64 * 6 + 4)  # B R (k (4 + 2) + 4)
  assert est.total < online.total
  assert plan.estimate(dataclasses.replace(cfg, teacher=None), dict(mesh.shape),
                       1 << 30).total == est.total  # the teacher section is not read
  measured = plan.measure_peak(cfg, mesh, {"xla_backend_optimization_level": 0,
                                           "xla_llvm_disable_expensive_passes": True})
  assert 0.8 <= est.total / measured["peak"] <= 1.2, (est.total, measured)


@pytest.mark.parametrize("sets,match", [
    (["loss.mode=two_stage", "loss.divergence=auto"], "loss.mode=two_stage needs a live teacher"),
    (["loss.mode=self_distill"], "loss.mode=self_distill needs a live teacher"),
    (["loss.divergence=jsd"], "stored top-k teacher logits give forward KL only"),
    (["loss.teacher_top_k=8"], "set loss.teacher_top_k=0"),
    (["data.reference=teacher"], "data.reference=teacher needs a live teacher"),
    (["generate.source=synthetic"], "makes new problems every round"),
    (["loss.mode=sft", "loss.divergence=auto"], "without a teacher; set loss.teacher=''"),
    (["loss.teacher=offline: "], "must be '' (the teacher runs in the step) or 'offline:DIR'"),
    (["loss.teacher=/some/dir"], "must be '' (the teacher runs in the step) or 'offline:DIR'"),
    (["loss.offline_k=0"], "loss.offline_k=0 must be >= 1"),
])
def test_offline_config_refusals_are_one_line(sets, match):
  from paced_jax.config import ConfigError

  with pytest.raises(ConfigError, match=re.escape(match)) as e:
    load_config(TINY, ["loss.teacher=offline:/d", *sets])
  assert "\n" not in str(e.value)
  cfg = load_config(TINY, ["loss.teacher=offline:/d", "loss.divergence=auto"])
  assert cfg.loss.offline_dir == "/d" and load_config(TINY).loss.offline_dir == ""
