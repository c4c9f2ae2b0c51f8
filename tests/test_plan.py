"""`paced plan`: topology parsing, the per-device estimate against a measured CPU peak, the
mesh recommendation and the CLI."""

import jax
import pytest

from paced_jax import plan, topology
from paced_jax.cli import main
from paced_jax.config import ConfigError, load_config
from paced_jax.sharding import make_mesh

GiB = 1 << 30
# Tiny, but large enough that parameters and activations dominate XLA's fixed overheads.
SIZES = [f"{role}.{k}={v}" for role in ("model", "teacher") for k, v in
         dict(hidden=256, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=768,
              vocab_size=4096).items()]
FAST_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _cfg(*sets):
  return load_config("configs/demo.py:tiny", SIZES + list(sets))


@pytest.mark.parametrize("name,count,hosts,gib,topo", [
    ("v5p-64", 32, 8, 95, "v5:2x4x4"), ("v4-32", 16, 4, 32, "v4:2x2x4"),
    ("v5p-8", 4, 1, 95, "v5:2x2x1"), ("v5litepod-16", 16, 2, 16, "v5e:4x4"),
    ("v5e-8", 8, 1, 16, "v5e:2x4"), ("v6e-256", 256, 32, 32, "v6e:16x16")])
def test_tpu_topologies(name, count, hosts, gib, topo):
  t = topology.parse_target(name, None, None)
  assert (t.count, t.hosts, t.memory, t.tpu_topology) == (count, hosts, gib * GiB, topo)


def test_gpu_and_explicit_targets(monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  t = topology.parse_target("8xh100", None, None)
  assert t.count == 8 and t.memory == int(79.6 * GiB * 0.75) and not t.tpu_topology
  assert topology.parse_target("a100-80gb", None, None).count == 1
  t = topology.parse_target(None, 8, "16GiB")
  assert (t.count, t.memory) == (8, 16 * GiB)
  assert topology.parse_bytes("80GB") == 80 * 10**9
  for bad in (("v5p-63", None, None), ("tpu9-8", None, None), (None, 8, "lots"),
              (None, 8, None)):
    with pytest.raises(ConfigError):
      topology.parse_target(*bad)


def test_estimate_follows_the_sharding_table():
  cfg = _cfg("model.remat=full")
  one = plan.estimate(cfg, dict(data=1, fsdp=1, tensor=1), GiB)
  fsdp = plan.estimate(cfg, dict(data=1, fsdp=4, tensor=1), GiB)
  tp = plan.estimate(cfg, dict(data=2, fsdp=1, tensor=2), GiB)
  get = lambda e, name: next(b for _, n, b in e.rows if n.startswith(name))
  # Every matrix shards its "embed" dimension over fsdp; only the norm scales stay whole.
  assert 3.9 < get(one, "student params") / get(fsdp, "student params") <= 4
  assert 1.9 < get(one, "teacher params") / get(tp, "teacher params") <= 2
  assert get(one, "AdamW") == pytest.approx(2 * get(one, "student params"), abs=16)
  # Rows split over data*fsdp: the KV cache (and activations) follow.
  assert get(one, "KV cache") == 4 * get(fsdp, "KV cache")
  assert get(one, "student activations") == pytest.approx(4 * get(fsdp, "student activations"))
  assert one.total == one.phase("resident") + max(one.phase("train step"), one.phase("sampler"))


@pytest.mark.parametrize("sets,devices", [
    ((), 1),
    (("model.remat=full", "data.batch_size=16", "data.length_buckets=64,96"), 1)])
def test_estimate_within_20_percent_of_measured_peak(sets, devices):
  cfg = _cfg("data.length_buckets=128", "data.max_response_len=96", "mesh.fsdp=1", *sets)
  mesh = make_mesh(cfg.mesh, jax.devices()[:devices])
  measured = plan.measure_peak(cfg, mesh, FAST_XLA)
  est = plan.estimate(cfg, dict(mesh.shape), GiB)
  assert measured["temp"] > measured["resident"]  # activations and logits dominate
  assert 0.8 <= est.total / measured["peak"] <= 1.2, (est.total, measured)


def test_recommendation_prefers_data_then_fsdp_and_respects_kv_heads():
  cfg = _cfg("teacher.num_kv_heads=1")  # tensor=1 only: fsdp is the one way to shard
  data8 = plan.estimate(cfg, dict(data=8, fsdp=1, tensor=1), GiB)
  fsdp8 = plan.estimate(cfg, dict(data=1, fsdp=8, tensor=1), GiB)
  assert fsdp8.total < data8.total
  roomy = topology.Target("t", 8, 16 * GiB)
  assert plan.recommend(cfg, roomy)[0].mesh == dict(data=8, fsdp=1, tensor=1)
  tight = topology.Target("t", 8, (data8.total + fsdp8.total) // 2)  # only sharded params fit
  best, tried = plan.recommend(cfg, tight)
  assert best.fits and best.mesh["fsdp"] > 1 and best.mesh["data"] < 8
  assert not tried[0].fits and tried[0].mesh == dict(data=8, fsdp=1, tensor=1)
  # 2 KV heads: tensor in {1, 2}; a 1-KV-head teacher forbids tensor > 1 altogether.
  assert {m["tensor"] for m in plan.candidate_meshes(cfg, 8)} == {1}
  two_kv = _cfg()
  assert {m["tensor"] for m in plan.candidate_meshes(two_kv, 8)} == {1, 2}
  # data * fsdp must divide the batch (8): 16 devices need tensor=2.
  assert all(m["tensor"] == 2 for m in plan.candidate_meshes(two_kv, 16))


def test_cli_recommends_a_mesh(capsys):
  assert main(["plan", "configs/demo.py:tiny", "--devices", "8", "--device-memory",
               "16GiB"]) == 0
  out = capsys.readouterr().out
  assert "recommended: --set mesh.data=8 --set mesh.fsdp=1 --set mesh.tensor=1" in out
  assert "configured mesh {'data': 1, 'fsdp': 8, 'tensor': 1}: fits" in out
  assert "train step: student activations (remat=none)" in out and "headroom" in out


def test_cli_tpu_target_reports_the_aot_check(capsys):
  assert main(["plan", "configs/demo.py:tiny", "--topology", "v5p-64", "--set",
               "data.batch_size=32"]) == 0
  out = capsys.readouterr().out
  assert "target: v5p-64: 32 devices x 95.0 GiB, 8 hosts" in out
  aot = [line for line in out.splitlines() if line.startswith(("AOT check", "XLA (TPU AOT)"))]
  assert len(aot) == 1, aot  # one line: XLA's analysis, or why it was skipped (no libtpu)
  assert "step peak" in aot[0] if aot[0].startswith("XLA") else "v5:2x4x4" in aot[0], aot


def test_cli_nothing_fits(capsys):
  assert main(["plan", "configs/demo.py:tiny", "--devices", "8", "--device-memory",
               "1MiB"]) == 1
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("paced plan: nothing fits in 0.0 GiB per device")
  assert "model.remat=full" in last and "devices" in last


def test_cli_user_errors_are_one_line(capsys):
  assert main(["plan", "configs/demo.py:tiny", "--topology", "v9z-8"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "--topology" in err
  # Batch 8 on 32 devices with 1 KV head: no mesh can split it.
  assert main(["plan", "configs/demo.py:tiny", "--topology", "v5p-64"]) == 2
  assert "data.batch_size=8" in capsys.readouterr().err


def test_cli_compile_on_local_devices(capsys):
  assert main(["plan", "configs/demo.py:tiny", "--devices", "8", "--device-memory", "16GiB",
               "--compile"]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("XLA (cpu, mesh {'data': 8, 'fsdp': 1, 'tensor': 1}): arguments")
  assert "estimate of the same step" in line
