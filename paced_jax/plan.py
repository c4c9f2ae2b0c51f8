"""`paced plan`: per-device memory of a `paced train` run, and the mesh to use.

    paced plan configs/qwen3_8b_to_0p6b.py --topology v5p-64
    paced plan configs/demo.py --devices 8 --device-memory 16GiB --set data.batch_size=64
    paced plan configs/demo.py:tiny --compile        # + XLA's memory analysis on local devices

Estimate (per device, bytes), from the real model and the real sharding table: the abstract
parameters come from `jax.eval_shape` of the `Decoder`, each array divided by the product of the
mesh axes `sharding.LOGICAL_RULES` shards it over (the same `logical_to_spec` the run uses).

  resident      teacher params + student params + AdamW mu, nu (param dtype) and count (no
                teacher with loss.teacher=offline:DIR: no params, forward or logits; its stored
                top-k arrays come with the batch, memory.offline_batch_bytes)
  train step    gradients (student params) + fsdp all-gather buffers (one layer, student and
                teacher) + student activations + loss-chunk logits + teacher forward
  sampler       KV cache of sample.batch_size rows x (max prompt bucket + the budget bucket
                of max_new_tokens) + its logits
  total         resident + max(train step, sampler): the two phases never overlap

Student activations per layer and token, in compute-dtype elements, with b rows per device,
T = max(data.length_buckets), scores in fp32 (the model has no flash attention):
  none           4D + 3F + (3N + 3K)H + N*T*(4/c + 1)        every tensor of the block
  dots           2D + 2F + (2N + 2K)H + N*T*4/c               outputs of every matmul
  dots_no_batch  2D + 2F + (N + 2K)H                          outputs of weight matmuls
  full           D                                            the block input only
plus one layer's `none` set as the backward working set, times ACT_OVERHEAD (XLA keeps a
layout copy or an fp32 cast of some tensors; measured below). N, K, F terms are divided by
the tensor axis when it divides them. The fused chunked loss holds LOSS_BUFFERS_FUSED fp32
[b, chunk, V/tensor] buffers (one chunk's student and teacher logits, softmaxes, dz) and an
fp32 dW of the unembedding; the unchunked one LOSS_BUFFERS fp32 [b, R, V/tensor]. The teacher's
forward working set is dead before the loss runs, so only its excess over the loss counts.
loss.chunk_size=-1 picks the chunk with `memory.auto_loss_chunk` (the step does the same).

Measured peak (what the estimate is checked against, tests/test_plan.py and
benchmarks/results/plan.md): XLA:CPU reports no allocator statistics (`memory_stats()` is
None), so the peak of one train step on device 0 is

  bytes of the live buffers on device 0 after setup (student params, AdamW state, teacher
  params: `jax.live_arrays()`), plus the batch, plus the executable's temp allocation and its
  non-aliased outputs (`compiled.memory_analysis()`: XLA allocates exactly these buffers for
  the step; the donated state is reused in place for the new state).

`--compile` prints the same analysis for the configured mesh without allocating anything
(abstract inputs); for a TPU target it needs libtpu (`jax.experimental.topologies`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax import divergences
from paced_jax.config import Config, ConfigError, MeshConfig, ModelConfig, add_config_args
from paced_jax.memory import (LOSS_BUFFERS, LOSS_BUFFERS_FUSED, auto_loss_chunk,
                              offline_batch_bytes, shard_div)
from paced_jax.topology import GiB, Target, parse_target

ACT_OVERHEAD = 1.0  # XLA:CPU buffers over the structural count (benchmarks/results/plan.md)


# ----------------------------------------------------------------------------- abstract state


def teacher_config(cfg: Config) -> ModelConfig | None:
  """The model the step runs as teacher (divergences.teacher_of): none for SFT and for an
  offline teacher (loss.teacher=offline:DIR), the student's own for self-distill; an error when
  the mode needs a teacher the config lacks."""
  if (divergences.needs_teacher(cfg.loss.mode) and not divergences.offline(cfg)
      and cfg.teacher is None):
    raise ConfigError(f"loss.mode={cfg.loss.mode!r} needs a teacher: set the config's teacher, "
                      "or use loss.mode=sft")
  return divergences.teacher_of(cfg)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


@functools.lru_cache(maxsize=8)
def abstract_model(mcfg: ModelConfig):
  """(graphdef, abstract nnx.State) of the real Decoder; nothing is allocated."""
  from paced_jax.models.transformer import Decoder

  return nnx.split(nnx.eval_shape(lambda: Decoder(mcfg, rngs=nnx.Rngs(0))))


@functools.lru_cache(maxsize=8)
def abstract_train_state(cfg: Config):
  """(student graphdef, abstract TrainState) exactly as `step.init_train_state` builds it."""
  from paced_jax import step as step_lib

  graphdef, _ = abstract_model(cfg.model)
  tx = step_lib.make_optimizer(cfg.train)

  def init():  # traced by eval_shape: shapes, dtypes and logical axes, no buffers
    from paced_jax.models.transformer import Decoder

    params = nnx.state(Decoder(cfg.model, rngs=nnx.Rngs(0)), nnx.Param)
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params))

  return graphdef, jax.eval_shape(init), tx


def device_bytes(tree: Any, mesh_shape: dict[str, int]) -> int:
  """Bytes one device holds of an abstract tree of nnx Variables: each array divided by the
  mesh axes its logical axes map to (sharding.logical_to_spec); plain leaves are replicated."""
  from paced_jax.sharding import variable_spec

  mesh = jax.sharding.AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape))
  total = 0
  for leaf in jax.tree.leaves(tree, is_leaf=_is_var):
    value = leaf.get_value() if _is_var(leaf) else leaf
    nbytes = math.prod(value.shape) * jnp.dtype(value.dtype).itemsize
    shards = 1
    if _is_var(leaf):
      for entry in variable_spec(leaf, mesh):
        for ax in (entry,) if isinstance(entry, str) else (entry or ()):
          shards *= mesh_shape[ax]
    total += nbytes // shards
  return total


# ----------------------------------------------------------------------------- the estimate


@dataclasses.dataclass(frozen=True)
class Estimate:
  mesh: dict[str, int]
  rows: tuple[tuple[str, str, int], ...]  # (phase, component, bytes per device)
  memory: int  # bytes per device available

  def phase(self, name: str) -> int:
    return sum(b for p, _, b in self.rows if p == name)

  @property
  def total(self) -> int:
    return self.phase("resident") + max(self.phase("train step"), self.phase("sampler"))

  @property
  def fits(self) -> bool:
    return self.total <= self.memory


def _layer_elements(m: ModelConfig, T: int, tensor: int, policy: str) -> float:
  """Compute-dtype elements per token of one block's activations kept for the backward pass
  under a remat policy (see the module docstring); scores are fp32."""
  c = jnp.dtype(m.dtype).itemsize
  D, H = m.hidden, m.head_dim
  N, K = shard_div(m.num_heads, tensor), shard_div(m.num_kv_heads, tensor)
  F = shard_div(m.mlp_dim, tensor)
  return {
      "none": 4 * D + 3 * F + (3 * N + 3 * K) * H + N * T * (4 / c + 1),
      "dots": 2 * D + 2 * F + (2 * N + 2 * K) * H + N * T * 4 / c,
      "dots_no_batch": 2 * D + 2 * F + (N + 2 * K) * H,
      "full": D,
  }[policy]


def _layer_param_bytes(m: ModelConfig, tensor: int) -> float:
  """One block's weights in compute dtype, sharded over tensor only: what an fsdp all-gather
  materialises per layer."""
  D, H, F = m.hidden, m.head_dim, m.mlp_dim
  n = (D * (shard_div(m.num_heads, tensor) * 2 + shard_div(m.num_kv_heads, tensor) * 2) * H
       + 3 * D * shard_div(F, tensor))
  return n * jnp.dtype(m.dtype).itemsize


def _budget(cfg: Config) -> int:
  return min(b for b in cfg.sample.budget_buckets if b >= cfg.sample.max_new_tokens)


def estimate(cfg: Config, mesh: dict[str, int], memory: int) -> Estimate:
  """Per-device bytes of each component of a `paced train` run on a (data, fsdp, tensor) mesh."""
  from paced_jax.sharding import batch_shards

  tcfg = teacher_config(cfg)
  rows_axes = batch_shards(mesh)
  tn = mesh["tensor"]
  _, state, _ = abstract_train_state(cfg)
  out: list[tuple[str, str, int]] = []
  if tcfg is not None:
    out.append(("resident", "teacher params", device_bytes(abstract_model(tcfg)[1], mesh)))
  params = device_bytes(state.params, mesh)
  out.append(("resident", "student params", params))
  out.append(("resident", "AdamW mu, nu, count", device_bytes(state.opt_state, mesh)))

  # Train step. b rows per device; the batch axis is (data, fsdp).
  m, T = cfg.model, max(cfg.data.length_buckets)
  b = cfg.data.batch_size / rows_axes
  c = jnp.dtype(m.dtype).itemsize
  out.append(("train step", "gradients", params))
  if mesh["fsdp"] > 1:
    gathered = _layer_param_bytes(m, tn) + (_layer_param_bytes(tcfg, tn) if tcfg else 0)
    out.append(("train step", "fsdp all-gathered layer", int(gathered)))
  saved, whole = _layer_elements(m, T, tn, m.remat), _layer_elements(m, T, tn, "none")
  # Backward of one layer: gradients of its whole set, plus the recomputed part of it.
  per_tok = m.num_layers * saved + 2 * whole - saved
  act = b * T * (per_tok + 3 * m.hidden) * c * ACT_OVERHEAD  # + embeddings, final norm, gather
  out.append(("train step", f"student activations (remat={m.remat})", int(act)))
  R = min(cfg.data.max_response_len, T)
  chunk = cfg.loss.chunk_size
  if chunk < 0:
    chunk = auto_loss_chunk(cfg, mesh, memory)
  fused = chunk > 0  # the step's fused loss, also with one chunk (chunk >= R)
  chunk = R if not chunk or chunk >= R else chunk
  n_logits = LOSS_BUFFERS_FUSED if fused else LOSS_BUFFERS
  n_logits = n_logits if tcfg is not None else n_logits // 2
  loss = int(n_logits * b * chunk * shard_div(m.vocab_size, tn) * 4)
  out.append(("train step", f"loss logits (chunk {chunk} x vocab, fp32)", loss))
  if divergences.offline(cfg):  # its stored top-k arrays come with the batch
    out.append(("train step", f"offline teacher arrays (k={cfg.loss.offline_k})",
                int(offline_batch_bytes(cfg, b))))
  if fused:  # the fused loss carries dW of the unembedding in fp32
    loss += int(m.hidden * shard_div(m.vocab_size, tn) * 4)
    out.append(("train step", "fused loss dW accumulator (fp32)",
                int(m.hidden * shard_div(m.vocab_size, tn) * 4)))
  if tcfg is not None:
    # The teacher's forward is done (only its hidden states stay) before the loss runs: its
    # working set and the loss buffers are never live together; only the excess counts.
    tc = jnp.dtype(tcfg.dtype).itemsize
    t_act = b * T * (_layer_elements(tcfg, T, tn, "none") + 2 * tcfg.hidden) * tc
    out.append(("train step", "teacher forward (one layer live), beyond the loss buffers",
                int(max(0, t_act - loss))))

  # Sampler (pass-rate refresh): KV cache [rows, K, S, H] per layer, k and v, compute dtype.
  rows = math.ceil(cfg.sample.batch_size / rows_axes)
  S = max(cfg.sample.prompt_buckets) + _budget(cfg)
  kv = rows * S * m.num_layers * 2 * shard_div(m.num_kv_heads, tn) * m.head_dim * c
  out.append(("sampler", f"KV cache ({cfg.sample.batch_size} rows x {S} slots)", int(kv)))
  out.append(("sampler", "sampling logits (fp32, x4)", int(4 * rows * m.vocab_size * 4)))
  return Estimate(mesh=dict(mesh), rows=tuple(out), memory=memory)


# ----------------------------------------------------------------------------- XLA's view


def _batch_struct(cfg: Config, sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch `FrontierPipeline` yields at the largest length bucket (see data/packing.py)."""
  B, T = cfg.data.batch_size, max(cfg.data.length_buckets)
  sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  out = {k: sd((B, T), jnp.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
  out["loss_mask"] = sd((B, T), jnp.float32)
  out.update({k: sd((B,), jnp.int32) for k in ("prompt_lens", "lengths", "index")})
  out["weights"] = sd((B,), jnp.float32)
  if divergences.offline(cfg):  # loss.teacher=offline:DIR: the stored teacher arrays
    R, k = min(cfg.data.max_response_len, T), cfg.loss.offline_k
    out["teacher_ids"] = sd((B, R, k), jnp.int32)
    out["teacher_logp"] = sd((B, R, k), jnp.float16)
    out["teacher_log_tail"] = sd((B, R), jnp.float32)
  return out


def compile_step(cfg: Config, mesh) -> Any:
  """AOT-compiles the real train step (`step.compile_train_step`) for `mesh` from abstract
  inputs: nothing is allocated. Returns the jax `Compiled`."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  from paced_jax import step as step_lib
  from paced_jax.sharding import variable_spec

  sdef, state, tx = abstract_train_state(cfg)

  def shard(leaf):
    if _is_var(leaf):
      v = leaf.get_value()
      s = NamedSharding(mesh, variable_spec(leaf, mesh))
      return leaf.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s))
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, P()))

  state = jax.tree.map(shard, state, is_leaf=_is_var)
  tcfg = teacher_config(cfg)
  tdef = tparams = None
  if tcfg is not None:
    tdef, tparams = abstract_model(tcfg)
    tparams = jax.tree.map(shard, tparams, is_leaf=_is_var)
  fn = step_lib.compile_train_step(cfg, mesh, state, sdef, tparams, tdef, tx)
  batch = _batch_struct(cfg, step_lib.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    return fn.lower(state, tparams, batch).compile()


def step_peak(ma) -> int:
  """Peak bytes of one step from XLA's memory analysis: inputs + temporaries + the outputs that
  do not reuse a donated input."""
  return (ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes
          - ma.alias_size_in_bytes)


def measure_peak(cfg: Config, mesh, compiler_options: dict | None = None) -> dict[str, int]:
  """Runs one real train step (random init, a random batch) and returns device 0's bytes:
  `resident` (live buffers after setup), `batch`, `temp` + `outputs` of the executable, `peak`.
  `compiler_options` go to XLA (e.g. a lower LLVM optimisation level: buffer assignment, and so
  the memory, does not depend on it)."""
  from paced_jax import step as step_lib
  from paced_jax.models.transformer import Decoder
  from paced_jax.sharding import shard_init

  dev0 = mesh.devices.flat[0]
  on_dev0 = lambda arrays: sum(s.data.nbytes for a in arrays for s in a.addressable_shards
                               if s.device == dev0)
  before = {id(a) for a in jax.live_arrays()}
  student = shard_init(lambda r: Decoder(cfg.model, rngs=r), mesh, seed=cfg.seed)
  tcfg = teacher_config(cfg)
  tdef = tparams = None
  if tcfg is not None:
    tdef, tparams = nnx.split(shard_init(lambda r: Decoder(tcfg, rngs=r), mesh, cfg.seed + 1))
  tx = step_lib.make_optimizer(cfg.train)
  state = step_lib.init_train_state(student, tx, mesh)
  sdef = nnx.graphdef(student)
  del student
  resident = on_dev0([a for a in jax.live_arrays() if id(a) not in before])
  B, T = cfg.data.batch_size, max(cfg.data.length_buckets)
  rng = np.random.default_rng(cfg.seed)
  t = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
  host = {"tokens": rng.integers(0, cfg.model.vocab_size, (B, T)).astype(np.int32),
          "positions": t, "segment_ids": np.ones((B, T), np.int32),
          "loss_mask": (t >= T // 4).astype(np.float32), "weights": np.ones((B,), np.float32)}
  host["targets"] = np.roll(host["tokens"], -1, axis=1)
  host.update({k: np.full((B,), T, np.int32) for k in ("prompt_lens", "lengths", "index")})
  if divergences.offline(cfg):  # k distinct ids per position, uniform over k + 1 buckets
    R, k = min(cfg.data.max_response_len, T), cfg.loss.offline_k
    V = cfg.loss.vocab_limit or cfg.model.vocab_size
    shift = rng.integers(0, V, (B, R, 1))
    host["teacher_ids"] = ((np.arange(k) + shift) % V).astype(np.int32)
    host["teacher_logp"] = np.full((B, R, k), -np.log(k + 1), np.float16)
    host["teacher_log_tail"] = np.full((B, R), -np.log(k + 1), np.float32)
  batch = jax.device_put(host, step_lib.batch_sharding(mesh))
  fn = step_lib.compile_train_step(cfg, mesh, state, sdef, tparams, tdef, tx)
  with jax.set_mesh(mesh):
    compiled = fn.lower(state, tparams, batch).compile(compiler_options)
    state, metrics = compiled(state, tparams, batch)
  if not np.isfinite(float(metrics["loss"])):
    raise RuntimeError("the measured train step produced a non-finite loss")
  ma = compiled.memory_analysis()
  extra = ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
  out = {"resident": resident, "batch": on_dev0(jax.tree.leaves(batch)),
         "temp": ma.temp_size_in_bytes, "outputs": ma.output_size_in_bytes - ma.alias_size_in_bytes}
  out["peak"] = resident + out["batch"] + extra
  return out


# ----------------------------------------------------------------------------- mesh search


def candidate_meshes(cfg: Config, n: int) -> list[dict[str, int]]:
  """(data, fsdp, tensor) factorisations of n devices the run accepts: tensor <= 8 divides the
  KV heads of every model; data * fsdp divides data.batch_size. Most data parallel first, then
  most fsdp (tensor parallelism costs the most communication)."""
  kv = [m.num_kv_heads for m in (cfg.model, teacher_config(cfg)) if m is not None]
  out = []
  for tensor in range(1, min(8, n) + 1):
    if n % tensor or any(k % tensor for k in kv):
      continue
    for data in range(1, n // tensor + 1):
      if (n // tensor) % data == 0 and cfg.data.batch_size % (n // tensor) == 0:
        out.append({"data": data, "fsdp": n // tensor // data, "tensor": tensor})
  return sorted(out, key=lambda m: (-m["data"], -m["fsdp"]))


def recommend(cfg: Config, target: Target) -> tuple[Estimate | None, list[Estimate]]:
  """(the first candidate mesh that fits, every estimate tried)."""
  tried = [estimate(cfg, m, target.memory) for m in candidate_meshes(cfg, target.count)]
  return next((e for e in tried if e.fits), None), tried


def resolve_mesh(mc: MeshConfig, n: int) -> dict[str, int] | None:
  """The config's mesh on n devices (-1 filled), or None when it does not match n."""
  sizes = [mc.data, mc.fsdp, mc.tensor]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or known < 1 or n % known:
    return None
  sizes = [n // known if s == -1 else s for s in sizes]
  return dict(zip(("data", "fsdp", "tensor"), sizes)) if math.prod(sizes) == n else None


# ----------------------------------------------------------------------------- report


def _gib(x: float) -> str:
  return f"{x / GiB:10.3f}"


def format_estimate(e: Estimate) -> str:
  w = 56
  lines = [f"{'component':<{w}}{'GiB/device':>10}"]
  for phase in ("resident", "train step", "sampler"):
    for p, name, b in e.rows:
      if p == phase:
        lines.append(f"  {phase + ': ' + name:<{w - 2}}{_gib(b)}")
  peak = max(("train step", "sampler"), key=e.phase)
  lines.append(f"{'total (resident + ' + peak + ')':<{w}}{_gib(e.total)}")
  head = e.memory - e.total
  lines.append(f"{'device memory':<{w}}{_gib(e.memory)}   headroom {head / GiB:.3f} GiB "
               f"({head / e.memory:+.0%})")
  return "\n".join(lines)


def mesh_flags(m: dict[str, int]) -> str:
  return " ".join(f"--set mesh.{k}={m[k]}" for k in ("data", "fsdp", "tensor"))


def tpu_aot(cfg: Config, target: Target, mesh_sizes: dict[str, int]) -> str:
  """XLA's memory analysis of the train step compiled for the TPU target, or why not."""
  if not target.tpu_topology:
    return "AOT check skipped: no libtpu topology is known for " + target.name
  from jax.experimental import topologies

  try:
    topo = topologies.get_topology_desc(
        topology_name=target.tpu_topology, platform="tpu",
        chip_config_name="megacore" if target.tpu_topology.startswith(("v4", "v5:")) else
        "default", chips_per_host_bounds=(2, 2, 1), num_slices=1)
  except Exception as e:  # no libtpu for this jax: the common case off TPU VMs
    return f"AOT check skipped: no TPU topology for {target.tpu_topology} ({str(e).splitlines()[0]})"
  from paced_jax.sharding import make_mesh

  mesh = make_mesh(MeshConfig(**mesh_sizes), topo.devices)
  return "XLA (TPU AOT): " + format_memory_analysis(compile_step(cfg, mesh).memory_analysis())


def format_memory_analysis(ma) -> str:
  return (f"arguments {ma.argument_size_in_bytes / GiB:.3f} GiB, temp "
          f"{ma.temp_size_in_bytes / GiB:.3f} GiB, outputs not aliased "
          f"{(ma.output_size_in_bytes - ma.alias_size_in_bytes) / GiB:.3f} GiB -> step peak "
          f"{step_peak(ma) / GiB:.3f} GiB per device")


# ----------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
  p = sub.add_parser("plan", help="per-device memory of `paced train` on a TPU slice or GPUs, "
                     "and the (data, fsdp, tensor) mesh to use")
  add_config_args(p)
  p.add_argument("--topology", help="v4-32, v5p-64, v5litepod-16, v6e-8, 8xh100, ... "
                 "(v4/v5p count TensorCores, v5e/v6e count chips)")
  p.add_argument("--devices", type=int, help="device count (with --device-memory)")
  p.add_argument("--device-memory", help="memory per device, e.g. 16GiB or 80GB")
  p.add_argument("--compile", action="store_true", help="also AOT-compile the train step on the "
                 "local devices (their count must match) and print XLA's memory analysis")
  p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
  from paced_jax.config import load_config

  cfg = load_config(args.config, args.overrides)
  target = parse_target(args.topology, args.devices, args.device_memory)
  hosts = f", {target.hosts} hosts" if target.hosts > 1 else ""
  print(f"target: {target.name}: {target.count} devices x {target.memory / GiB:.1f} GiB{hosts}"
        + (f" ({target.note})" if target.note else ""))
  candidates = candidate_meshes(cfg, target.count)
  if not candidates:
    raise ConfigError(f"no (data, fsdp, tensor) mesh of {target.count} devices suits "
                      f"data.batch_size={cfg.data.batch_size} (data*fsdp must divide it) and "
                      "tensor <= 8 dividing the KV heads; change the batch size or device count")
  current = resolve_mesh(cfg.mesh, target.count)
  if current is not None and current in candidates:
    e = estimate(cfg, current, target.memory)
    print(f"\nconfigured mesh {current}: {'fits' if e.fits else 'does NOT fit'}")
    print(format_estimate(e))
  best, tried = recommend(cfg, target)
  if best is None:
    low = min(tried, key=lambda e: e.total)
    if low.mesh != current:
      print(f"\nsmallest estimate, mesh {low.mesh}:\n{format_estimate(low)}")
    hint = ("set model.remat=full, " if cfg.model.remat != "full" else "") + (
        "lower data.batch_size or loss.chunk_size, or use about "
        f"{math.ceil(target.count * low.total / target.memory)} devices")
    print(f"paced plan: nothing fits in {target.memory / GiB:.1f} GiB per device on "
          f"{target.name} (best {low.total / GiB:.1f} GiB); {hint}")
    return 1
  if best.mesh != current:
    print(f"\nrecommended mesh {best.mesh}:\n{format_estimate(best)}")
  print(f"\nrecommended: {mesh_flags(best.mesh)}")
  if target.tpu_topology:
    print(tpu_aot(cfg, target, best.mesh))
  if args.compile:
    print(local_compile(cfg, target, best.mesh))
  return 0


def local_compile(cfg: Config, target: Target, mesh_sizes: dict[str, int]) -> str:
  """XLA's memory analysis of the train step compiled on the local devices, next to the
  estimate; one line saying why not when the local devices do not match the target."""
  from paced_jax.sharding import make_mesh

  devices = jax.devices()
  if len(devices) != target.count:
    return (f"compile check skipped: {len(devices)} local {devices[0].platform} devices, the "
            f"target has {target.count}")
  ma = compile_step(cfg, make_mesh(MeshConfig(**mesh_sizes), devices)).memory_analysis()
  est = estimate(cfg, mesh_sizes, target.memory)
  resident = est.phase("resident")
  return (f"XLA ({devices[0].platform}, mesh {mesh_sizes}): {format_memory_analysis(ma)}; "
          f"estimate of the same step {(resident + est.phase('train step')) / GiB:.3f} GiB")
