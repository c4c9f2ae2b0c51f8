#!/usr/bin/env bash
# The GPU check: one command, < 8 minutes on one H100/H200, no network, no grain/tfds needed.
#   bash benchmarks/gpu_check.sh            (on the GPU machine, from the repository root)
#   TINY=1 JAX_PLATFORMS=cpu bash benchmarks/gpu_check.sh   (a few minutes on a CPU: checks the
#                                                            script; the CPU test step is cut)
# Prints each step's lines, then a short summary table at the end (one line per result). Record
# results in BENCHMARKS.md.
#
# Steps, in order (each with its own timeout, all inside one time budget: BUDGET_S seconds,
# default 480, 1200 under TINY=1; a GPU step gets at most what is left less TESTS_RESERVE_S
# (default 90) kept for step 5, the test step what is left; one that would get under 30 s is
# skipped):
#   1. bf16 numerics on the accelerator (tests/test_bf16_numerics.py)
#   2. benchmarks/gpu_sampler.py   decode ms/step and memory-roofline fraction, batch 64 / 256
#   3. benchmarks/gpu_rollouts.py  continuous-batching engine vs static sampler, long-tailed
#                                  lengths, 64 / 256 slots
#   4. benchmarks/gpu_step.py      distillation step, fused chunked loss vs unfused: tokens/s,
#                                  MFU, peak HBM (one process per config)
#   5. the core CPU test modules under this image's jax (JAX_PLATFORMS=cpu, tests/conftest.py's
#      8 fake CPU devices): the ones that need neither grain nor tensorflow_datasets. Under
#      TINY=1 only a quick subset (CPU_TESTS_TINY) runs; CPU_TESTS=... overrides the list.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, uninstalled
flag=${TINY:+--tiny}
out=${OUT:-$(mktemp -d)}
budget=${BUDGET_S:-${TINY:+1200}}  # a loaded 2-core CPU needs longer than the GPU
budget=${budget:-480}
start=$SECONDS
# Core modules that import neither grain nor tensorflow_datasets (nor matplotlib, tensorboardX,
# pyarrow, math_verify) and pass without them, most jax-sensitive first (pytest runs them in this
# order; at the time limit it is interrupted and reports what ran). Run time on a loaded 2-core
# CPU: ~500 s with -m "not slow"; expected ~2.5-3.5 min on a 16-core host.
CPU_TESTS=${CPU_TESTS:-"tests/test_presets.py tests/test_overrides.py tests/test_flops.py
  tests/test_model.py tests/test_sharding.py tests/test_sampler.py tests/test_step.py
  tests/test_fused_loss.py tests/test_rollouts.py"}
CPU_TESTS_TINY="tests/test_flops.py tests/test_presets.py tests/test_overrides.py"

reserve=${TESTS_RESERVE_S:-90}  # kept back from the GPU steps for the CPU test step
# Seconds the next step may run: min(its cap, what is left of the budget, less `reserve` for a
# GPU step); 0 means skip it.
allow() {
  local left=$((budget - (SECONDS - start) - ${2:-0}))
  if [ "$left" -lt 30 ]; then echo 0
  elif [ "$left" -lt "$1" ]; then echo "$left"
  else echo "$1"; fi
}
declare -A rc
# run NAME CAP CMD...: runs CMD under `timeout`, output to the screen and $out/NAME.txt.
run() {
  local name=$1 cap=$2 t; shift 2
  if [ "$name" = cpu_tests ]; then t=$(allow "$cap"); else t=$(allow "$cap" "$reserve"); fi
  echo
  echo "== $name (timeout ${t}s; $((SECONDS - start))s elapsed) =="
  if [ "$t" -eq 0 ]; then
    echo "skipped: under 30 s left of the ${budget}s budget (GPU steps leave ${reserve}s for" \
      "the CPU tests)" | tee "$out/$name.txt"
    rc[$name]=skipped-budget
    return
  fi
  # SIG=INT for pytest: interrupted, it still prints how many tests passed so far.
  timeout -s "${SIG:-TERM}" -k 20 "$t" "$@" 2>&1 | tee "$out/$name.txt"
  rc[$name]=${PIPESTATUS[0]}
}
status() {  # PASS / FAIL (exit N) / TIMEOUT / SKIPPED for step $1
  case "${rc[$1]}" in
    0) echo PASS ;;
    skipped-budget) echo "SKIPPED (the time budget was spent)" ;;
    skipped-nopytest) echo "SKIPPED (no pytest in this image)" ;;
    124|137) echo "TIMEOUT (stopped at its time limit, exit ${rc[$1]})" ;;
    *) echo "FAIL (exit ${rc[$1]})" ;;
  esac
}

python -c "import jax; print('devices:', jax.devices(), '- jax', jax.__version__)"
have_pytest=0
python -c "import pytest" 2>/dev/null && have_pytest=1
# bf16 numerics on the accelerator first (bf16 vs fp32 logits, cached vs full decode, fp32
# losses from bf16 logits, a bf16 train step). --noconftest: tests/conftest.py pins the suite to
# 8 fake CPU devices. Images without pytest run the file's own runner.
if [ "$have_pytest" -eq 1 ]; then
  run bf16 180 python -m pytest -q -p no:cacheprovider --noconftest tests/test_bf16_numerics.py
else
  run bf16 180 python tests/test_bf16_numerics.py
fi
# The GPU benchmarks: each prints its own lines; the summary below picks their result lines.
run sampler 180 python benchmarks/gpu_sampler.py $flag
run rollouts 240 python benchmarks/gpu_rollouts.py $flag
run step 240 python benchmarks/gpu_step.py $flag
# The core CPU tests under this image's jax (the GPU image is the only place jax 0.11.2 runs).
# --continue-on-collection-errors: a module that cannot import here fails alone, the rest run.
if [ "$have_pytest" -eq 1 ]; then
  tests=$CPU_TESTS
  [ -n "${TINY:-}" ] && tests=$CPU_TESTS_TINY
  # shellcheck disable=SC2086
  SIG=INT run cpu_tests 210 env JAX_PLATFORMS=cpu python -m pytest -q -p no:cacheprovider \
    -m "not slow" --continue-on-collection-errors $tests
else
  echo "no pytest in this image: the CPU test step is skipped" | tee "$out/cpu_tests.txt"
  rc[cpu_tests]=skipped-nopytest
fi

echo
echo "== summary ($((SECONDS - start))s; logs in $out) =="
last_pytest() { grep -E "[0-9]+ (passed|failed|errors?|skipped)( |,|$)" "$1" | tail -n 1; }
bf16_line=$(last_pytest "$out/bf16.txt")
echo "  bf16 numerics: $(status bf16): ${bf16_line:-no result line}"
echo "  sampler: $(status sampler)"
grep -hE "^\| (batch|[0-9])" "$out/sampler.txt" | sed 's/^/    /'
echo "  rollouts: $(status rollouts)"
grep -hE "^rollouts slots=" "$out/rollouts.txt" | sed 's/^/    /'
echo "  step: $(status step)"
grep -hE "^step " "$out/step.txt" | sed -e 's/;.*//' -e 's/^step /    /'
tests_line=$(last_pytest "$out/cpu_tests.txt")
jax_version=$(python -c 'import jax; print(jax.__version__)' 2>/dev/null)
echo "  cpu tests, jax $jax_version${TINY:+ (TINY subset)}: $(status cpu_tests):" \
  "${tests_line:-no result line}"
final=0
for k in bf16 sampler rollouts step cpu_tests; do
  [ "${rc[$k]}" = 0 ] || final=1
done
exit "$final"
