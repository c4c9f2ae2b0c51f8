"""The device mesh and the ONE table from logical axis names to mesh axes.

Every parameter is created with `logical_axes=(...)` metadata (see `models/transformer.py`);
nothing in the model names a mesh axis. Changing how a dimension is sharded is one line in
`LOGICAL_RULES`. A logical axis whose size does not divide by its mesh axes is replicated along
that dimension (e.g. 2 KV heads on tensor=4) -- `assert_sharded` catches large parameters that end
up fully replicated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from paced_jax.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    # activations, batches and the KV cache
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_vocab": "tensor",
    "act_kv_heads": "tensor",
}


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the `(data, fsdp, tensor)` mesh; at most one size may be -1 (fill)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} are invalid: use positive "
                      "sizes with at most one -1 (fill)")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {len(devices)} "
                        "devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                      f"{len(devices)} are available; set mesh.* so the product matches or use -1")
  # Auto axes: sharding propagation decides inside jit (Explicit axes break the embedding gather).
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
  """Maps logical names to a PartitionSpec.

  With `shape` and `mesh`, a mesh axis is dropped from a dimension it does not divide, and a mesh
  axis is never used twice in one spec (first dimension wins).
  """
  used: set[str] = set()
  out = []
  for dim, name in enumerate(logical_axes):
    if name is not None and name not in LOGICAL_RULES:
      raise KeyError(f"logical axis {name!r} is not in sharding.LOGICAL_RULES")
    rule = LOGICAL_RULES.get(name) if name is not None else None
    axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    keep = []
    for ax in axes:
      if ax in used:
        continue
      if mesh is not None and shape is not None:
        size = mesh.shape[ax] * math.prod(mesh.shape[a] for a in keep)
        if shape[dim] % size:
          continue
      keep.append(ax)
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None],
                     shape: Sequence[int]) -> NamedSharding:
  _require_mesh(mesh)
  return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh))


def constrain(x, mesh: Mesh | None, logical_axes: Sequence[str | None]):
  """`x` constrained to the sharding its logical axes give on `mesh` (no-op without a mesh)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_sharding(mesh, logical_axes, x.shape))


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def variable_spec(var: nnx.Variable, mesh: Mesh | None = None) -> P:
  axes = var.get_metadata().get("logical_axes")
  if axes is None:
    return P()
  return logical_to_spec(axes, var.shape, mesh)


def state_specs(state: Any, mesh: Mesh | None = None) -> Any:
  """The PartitionSpec of every Variable in an (abstract) nnx State, same tree structure."""
  return jax.tree.map(lambda v: v.replace(variable_spec(v, mesh)), state, is_leaf=_is_var)


def state_shardings(state: Any, mesh: Mesh) -> Any:
  _require_mesh(mesh)
  return jax.tree.map(lambda v: v.replace(NamedSharding(mesh, variable_spec(v, mesh))), state,
                      is_leaf=_is_var)


M = TypeVar("M", bound=nnx.Module)


def shard_init(ctor: Callable[[nnx.Rngs], M], mesh: Mesh, seed: int = 0) -> M:
  """Creates `ctor(rngs)` with every parameter born sharded on `mesh`.

  eval_shape(ctor) -> shardings from the table -> jit(init, out_shardings): the full
  parameters never exist on one device. Restore from a checkpoint reuses `abstract_state`.
  """
  _require_mesh(mesh)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ctor(nnx.Rngs(seed))))
  shardings = state_shardings(abstract, mesh)

  def init():
    return nnx.state(ctor(nnx.Rngs(seed)))

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def abstract_state(ctor: Callable[[nnx.Rngs], M], mesh: Mesh) -> tuple[Any, Any]:
  """(graphdef, State of ShapeDtypeStructs carrying their target shardings) for restore."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ctor(nnx.Rngs(0))))

  def with_sharding(v):
    s = NamedSharding(mesh, variable_spec(v, mesh))
    return v.replace(jax.ShapeDtypeStruct(v.shape, v.get_value().dtype, sharding=s))

  return graphdef, jax.tree.map(with_sharding, abstract, is_leaf=_is_var)


def assert_sharded(state: Any, mesh: Mesh, min_elements: int = 1 << 16) -> None:
  """Raises if a parameter of >= `min_elements` is fully replicated on a mesh that could shard it.

  A guard against silent memory blow-ups: with fsdp or tensor > 1 every large weight must be
  split over at least one mesh axis.
  """
  _require_mesh(mesh)
  if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
    return
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    size = int(np.prod(leaf.shape))
    sharding = getattr(leaf, "sharding", None)
    if size >= min_elements and (sharding is None or sharding.is_fully_replicated):
      bad.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}")
  if bad:
    raise AssertionError(f"{len(bad)} large parameters are fully replicated on mesh "
                         f"{dict(mesh.shape)}: " + "; ".join(bad[:5]))


def batch_shards(mesh: Mesh | Mapping[str, int]) -> int:
  """How many ways the rows of a batch are split: the product of the mesh axes of the `batch`
  rule (data x fsdp), so row counts come in multiples of it. `mesh`: a Mesh or its axis sizes
  (the planner's dicts)."""
  rule = LOGICAL_RULES["batch"]
  axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
  sizes = mesh.shape if isinstance(mesh, Mesh) else mesh
  return math.prod(sizes[a] for a in axes)


def _require_mesh(mesh: Any) -> None:
  if not isinstance(mesh, Mesh):
    raise ValueError(f"a jax.sharding.Mesh is required here, got {type(mesh).__name__}; build "
                     "one with paced_jax.sharding.make_mesh(MeshConfig(...))")
