#!/usr/bin/env bash
# The GPU check: one command, < 8 minutes on one H100/H200, no network, no grain/tfds needed.
#   bash benchmarks/gpu_check.sh            (on the GPU machine, from the repository root)
#   TINY=1 JAX_PLATFORMS=cpu bash benchmarks/gpu_check.sh   (seconds on a CPU: checks the script)
# Prints each benchmark's lines, then a short table at the end. Record results in BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, uninstalled
flag=${TINY:+--tiny}
out=${OUT:-$(mktemp -d)}
python -c "import jax; print('devices:', jax.devices())"
# Real numerics in bf16 on the accelerator: cached decode vs full forward, the golden step.
timeout 240 python benchmarks/gpu_sampler.py $flag 2>&1 | tee "$out/sampler.txt"
timeout 300 python benchmarks/gpu_step.py $flag --remat full 2>&1 | tee "$out/step.txt"
echo
echo "== summary =="
grep -hE "^\| (batch|[0-9])|tokens/s, " "$out/sampler.txt" "$out/step.txt" | sed 's/^/  /'
