"""Logical sharding: golden PartitionSpecs on a 2x4 mesh, sharded init and forward."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from paced_jax.config import ConfigError, MeshConfig
from paced_jax.models import Decoder, get_preset
from paced_jax.sharding import (abstract_state, assert_sharded, batch_shards, logical_to_spec,
                                make_mesh, shard_init, state_specs)


def _ctor(name, **kw):
  cfg = get_preset(name, **kw)
  return lambda rngs: Decoder(cfg, rngs=rngs)


def _flat_specs(state):
  return {".".join(str(k) for k in path): v.get_value()
          for path, v in nnx.to_flat_state(state)}


def test_golden_partition_specs_2x4(mesh_2x4):
  # tiny-qwen2: V=128, D=64, N=4, K=2, H=16, F=128; mesh fsdp=2, tensor=4.
  _, abstract = nnx.split(nnx.eval_shape(lambda: _ctor("tiny-qwen2")(nnx.Rngs(0))))
  specs = _flat_specs(state_specs(abstract, mesh_2x4))
  golden = {
      "embed": P("tensor", "fsdp"),
      "final_norm.scale": P(),
      "layers.0.input_norm.scale": P(),
      "layers.0.attn.q_proj.kernel": P("fsdp", "tensor"),
      "layers.0.attn.q_proj.bias": P("tensor"),
      # K=2 kv heads do not divide tensor=4: that dimension stays replicated.
      "layers.0.attn.k_proj.kernel": P("fsdp"),
      "layers.0.attn.k_proj.bias": P(),
      "layers.0.attn.v_proj.kernel": P("fsdp"),
      "layers.0.attn.o_proj.kernel": P("tensor", None, "fsdp"),
      "layers.0.mlp.gate_proj.kernel": P("fsdp", "tensor"),
      "layers.0.mlp.up_proj.kernel": P("fsdp", "tensor"),
      "layers.0.mlp.down_proj.kernel": P("tensor", "fsdp"),
  }
  for key, spec in golden.items():
    assert specs[key] == spec, (key, specs[key], spec)
  # embed + final norm + 12 per layer, and every one of them is annotated.
  assert len(specs) == 2 + 2 * 12
  for path, var in nnx.to_flat_state(abstract):
    assert var.get_metadata().get("logical_axes") is not None, path


def test_untied_head_spec(mesh_2x4):
  _, abstract = nnx.split(nnx.eval_shape(lambda: _ctor("tiny-qwen3")(nnx.Rngs(0))))
  specs = _flat_specs(state_specs(abstract, mesh_2x4))
  assert specs["lm_head"] == P("fsdp", "tensor")
  assert specs["layers.1.attn.q_norm.scale"] == P()


def test_logical_to_spec_rules():
  assert logical_to_spec(("batch", "length")) == P(("data", "fsdp"))
  # A mesh axis is never used twice in one spec.
  assert logical_to_spec(("batch", "embed")) == P(("data", "fsdp"))
  with pytest.raises(KeyError, match="not in sharding.LOGICAL_RULES"):
    logical_to_spec(("nonsense",))


def test_batch_shards_follow_the_batch_rule(mesh_2x4):
  # Rows split over the mesh axes of the "batch" rule (data x fsdp); tensor holds whole rows.
  assert batch_shards(mesh_2x4) == mesh_2x4.shape["data"] * mesh_2x4.shape["fsdp"]
  assert batch_shards({"data": 2, "fsdp": 4, "tensor": 8}) == 8


def test_shard_init_places_params_and_forward_matches(mesh_2x4):
  ctor = _ctor("tiny-qwen2", hidden=128, mlp_dim=256)
  sharded = shard_init(ctor, mesh_2x4, seed=0)
  q = sharded.layers[0].attn.q_proj.kernel[...]
  assert q.sharding.spec == P("fsdp", "tensor")
  assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (64, 1, 16)
  assert_sharded(nnx.state(sharded, nnx.Param), mesh_2x4, min_elements=4096)

  single = ctor(nnx.Rngs(0))  # same seed -> same values, on one device
  for a, b in zip(jax.tree.leaves(nnx.state(single)), jax.tree.leaves(nnx.state(sharded))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)

  tokens = jax.random.randint(jax.random.key(0), (8, 16), 0, 128)
  fwd = nnx.jit(lambda m, t: m(t))
  with jax.set_mesh(mesh_2x4):
    tokens_sharded = jax.device_put(
        tokens, jax.sharding.NamedSharding(mesh_2x4, P(("data", "fsdp"))))
    out = fwd(sharded, tokens_sharded)
  np.testing.assert_allclose(np.asarray(out), np.asarray(fwd(single, tokens)), atol=1e-5)


def test_assert_sharded_catches_replicated(mesh_2x4):
  model = _ctor("tiny-qwen2", hidden=128, mlp_dim=256)(nnx.Rngs(0))
  state = jax.device_put(nnx.state(model, nnx.Param),
                         jax.sharding.NamedSharding(mesh_2x4, P()))
  with pytest.raises(AssertionError, match="fully replicated"):
    assert_sharded(state, mesh_2x4, min_elements=4096)


def test_abstract_state_carries_shardings(mesh_2x4):
  _, abstract = abstract_state(_ctor("tiny-qwen2"), mesh_2x4)
  leaf = abstract["layers"][0]["mlp"]["down_proj"]["kernel"].get_value()
  assert isinstance(leaf, jax.ShapeDtypeStruct)
  assert leaf.sharding.spec == P("tensor", "fsdp")


def test_no_mesh_is_an_error():
  with pytest.raises(ValueError, match="Mesh is required"):
    shard_init(_ctor("tiny-qwen2"), None)


@pytest.mark.parametrize("cfg,match", [
    (MeshConfig(data=3, fsdp=-1, tensor=1), "does not divide"),
    (MeshConfig(data=-1, fsdp=-1, tensor=1), "at most one -1"),
    (MeshConfig(data=2, fsdp=2, tensor=1), "needs 4 devices"),
])
def test_bad_mesh(cfg, match):
  with pytest.raises(ConfigError, match=match):
    make_mesh(cfg)


def test_fill_axis():
  mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
