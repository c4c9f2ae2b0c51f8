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
# bf16 numerics on the accelerator first (bf16 vs fp32 logits, cached vs full decode, fp32
# losses from bf16 logits, a bf16 train step). --noconftest: tests/conftest.py pins the suite to
# 8 fake CPU devices. Images without pytest run the file's own runner.
if python -c "import pytest" 2>/dev/null; then
  timeout 180 python -m pytest -q -p no:cacheprovider --noconftest tests/test_bf16_numerics.py \
    2>&1 | tee "$out/bf16.txt"
  bf16_rc=${PIPESTATUS[0]}
else
  timeout 180 python tests/test_bf16_numerics.py 2>&1 | tee "$out/bf16.txt"
  bf16_rc=${PIPESTATUS[0]}
fi
# Real numerics in bf16 on the accelerator: cached decode vs full forward, the golden step.
timeout 240 python benchmarks/gpu_sampler.py $flag 2>&1 | tee "$out/sampler.txt"
timeout 300 python benchmarks/gpu_step.py $flag --remat full 2>&1 | tee "$out/step.txt"
echo
echo "== summary =="
bf16_line=$(grep -E "[0-9]+ (passed|failed|errors?)( |,|$)" "$out/bf16.txt" | tail -n 1)
if [ "$bf16_rc" -eq 0 ]; then bf16_status=PASS; else bf16_status="FAIL (exit $bf16_rc)"; fi
echo "  bf16 numerics: $bf16_status: ${bf16_line:-no result line}"
grep -hE "^\| (batch|[0-9])|tokens/s, " "$out/sampler.txt" "$out/step.txt" | sed 's/^/  /'
exit "$bf16_rc"
