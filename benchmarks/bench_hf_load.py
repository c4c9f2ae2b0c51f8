"""Load time and peak host RSS: `load_hf_model` (per tensor, straight to the device) vs loading
the whole safetensors state dict first (`safetensors.numpy.load_file` of every shard, then
building the model from it) -- the pattern of loaders that materialise a full state dict.

    JAX_PLATFORMS=cpu python benchmarks/bench_hf_load.py            # llama-3.2-1b shape, bf16
    python benchmarks/bench_hf_load.py --preset qwen2.5-0.5b --repeats 3 --dir /tmp/ckpt

A synthetic checkpoint of the preset's exact tensor names and shapes is written once (bf16,
~2.5 GB for llama-3.2-1b, 2 shards). Each measurement runs in a fresh subprocess so its peak
RSS is its own; runs alternate between the two loaders. The file pages stay in the page cache
between runs, so both loaders read from memory: this measures the loader, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def write_checkpoint(preset: str, out: Path, shard_bytes: int) -> None:
  import ml_dtypes
  import numpy as np
  from safetensors.numpy import save_file

  from paced_jax.models import get_preset
  from paced_jax.models.hf import hf_config_from_model, tensor_table

  cfg = get_preset(preset, dtype="bfloat16", param_dtype="bfloat16")
  # One random block tiled over every tensor: realistic bytes, seconds instead of minutes.
  block = (np.random.RandomState(0).standard_normal(1 << 20) * 0.02).astype(ml_dtypes.bfloat16)
  shards, current, size = [], {}, 0
  for e in tensor_table(cfg):
    n = int(np.prod(e.hf_shape))
    if current and size + 2 * n > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[e.hf_name] = np.resize(block, e.hf_shape)
    size += 2 * n
  shards.append(current)
  out.mkdir(parents=True, exist_ok=True)
  weight_map, total = {}, 0
  for i, tensors in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
    for k, v in tensors.items():
      weight_map[k] = name
      total += v.nbytes
  shards.clear()
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}))
  (out / "config.json").write_text(json.dumps(hf_config_from_model(cfg, "bfloat16")))


class _RssSampler(threading.Thread):
  """Peak VmRSS / RssAnon / RssFile every 5 ms (ru_maxrss gives only the total)."""

  def __init__(self):
    super().__init__(daemon=True)
    self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    self.stop = False

  def run(self):
    while not self.stop:
      with open("/proc/self/status") as f:
        for line in f:
          key, _, rest = line.partition(":")
          if key in self.peak:
            self.peak[key] = max(self.peak[key], int(rest.split()[0]) * 1024)
      time.sleep(0.005)


def child(mode: str, path: str) -> None:
  import resource

  import jax
  import numpy as np
  from flax import nnx

  from paced_jax.models.hf import _get, _set, load_hf_model, read_hf_config, tensor_table
  from paced_jax.models.transformer import Decoder

  jax.devices()  # backend start-up is not part of either loader
  with open("/proc/self/status") as f:
    base = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
  sampler = _RssSampler()
  sampler.start()
  t0 = time.perf_counter()
  if mode == "paced":
    model, cfg = load_hf_model(path)
  else:
    from safetensors.numpy import load_file

    root = Path(path)
    cfg = read_hf_config(root)
    state_dict = {}
    for shard in sorted(root.glob("*.safetensors")):
      state_dict.update(load_file(str(shard)))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(abstract)
    for e in tensor_table(cfg):
      _set(pure, e.path, jax.device_put(np.ascontiguousarray(e.to_ours(state_dict[e.hf_name]))))
    nnx.replace_by_pure_dict(abstract, pure)
    model = nnx.merge(graphdef, abstract)
    del state_dict
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  jax.block_until_ready(leaves)
  seconds = time.perf_counter() - t0
  sampler.stop = True
  sampler.join()
  peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sampler.peak["VmRSS"])
  model_bytes = sum(x.nbytes for x in leaves)
  print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss": peak, "base_rss": base,
                    "model_bytes": model_bytes, **{f"peak_{k}": v for k, v in
                                                   sampler.peak.items()}}))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--preset", default="llama-3.2-1b")
  ap.add_argument("--dir", default="", help="checkpoint directory (written if empty)")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--shard-gb", type=float, default=1.5)
  ap.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
  ap.add_argument("--write", metavar="DIR", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    return child(*args.child)
  if args.write:
    return write_checkpoint(args.preset, Path(args.write), int(args.shard_gb * 1e9))
  tmp = None
  path = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="paced_bench_"))
  try:
    if not (path / "config.json").is_file():
      t0 = time.perf_counter()
      # In a subprocess: a child's ru_maxrss starts from its parent's at fork time.
      subprocess.run([sys.executable, __file__, "--write", str(path), "--preset", args.preset,
                      "--shard-gb", str(args.shard_gb)], check=True)
      print(f"wrote {args.preset} bf16 checkpoint to {path} in {time.perf_counter() - t0:.0f}s")
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    results = {"paced": [], "state_dict": []}
    for _ in range(args.repeats):
      for mode in results:
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], env=env,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[mode].append(r)
        print(f"{mode:>10}: {r['seconds']:6.2f} s  peak RSS {r['peak_rss'] / 2**30:5.2f} GiB "
              f"(start {r['base_rss'] / 2**30:.2f}, anon {r['peak_RssAnon'] / 2**30:.2f}, "
              f"file {r['peak_RssFile'] / 2**30:.2f}; params {r['model_bytes'] / 2**30:.2f})",
              flush=True)
    best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in results.items()}
    peak = {m: min(r["peak_rss"] - r["base_rss"] for r in rs) for m, rs in results.items()}
    t_paced, t_sd = best["paced"]["seconds"], best["state_dict"]["seconds"]
    print(f"best time: paced {t_paced:.2f} s vs state_dict {t_sd:.2f} s (x{t_sd / t_paced:.2f}); "
          f"RSS growth: paced {peak['paced'] / 2**30:.2f} GiB vs state_dict "
          f"{peak['state_dict'] / 2**30:.2f} GiB (x{peak['state_dict'] / peak['paced']:.2f})")
  finally:
    if tmp:
      import shutil
      shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
