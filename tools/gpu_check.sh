#!/usr/bin/env bash
# Runs on the GPU machine in one go: build, every test with GPU tests required
# (a skip fails), compute-sanitizer memcheck on the GPU tests, then the dataset
# benchmark (tools/bench_data.sh). tools/bench_vs_torch.py is the separate
# comparison with PyTorch.
# Prints a short summary last. Logs go to $OUT (or /tmp/anvil-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/anvil-gpu-check}"
mkdir -p "$out"
export ANVIL_REQUIRE_GPU=1
summary=()

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1 | sed 's/^/gpu: /'
if ! tools/setup.sh >"$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "SUMMARY: build FAILED"
  exit 1
fi
grep -iE "warning" "$out/build.log" | head -5
summary+=("build: ok ($(grep -ciE 'warning' "$out/build.log") warning lines)")

ctest --test-dir build --output-on-failure -j 1 >"$out/ctest.log" 2>&1
ctest_rc=$?
grep -E "tests passed|tests failed|Skipped|\*\*\*Failed|Not Run" "$out/ctest.log" | tail -15
summary+=("tests: $(grep -E 'tests passed' "$out/ctest.log" | tail -1)")

# memcheck on the GPU tests (the full-size case is left to the plain run: too slow under the sanitizer)
if command -v compute-sanitizer >/dev/null; then
  timeout "${MEMCHECK_TIMEOUT:-240}" compute-sanitizer --tool memcheck --error-exitcode 9 build/tests/anvil_tests \
    --gtest_filter='*Gpu*:*Cuda*:*PhaseMma*:-*GpuFullSize*' >"$out/memcheck.log" 2>&1
  mc_rc=$?
  summary+=("memcheck: rc $mc_rc, $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)")
  grep -E "ERROR SUMMARY|FAILED|PASSED" "$out/memcheck.log" | tail -4
else
  summary+=("memcheck: compute-sanitizer not found")
  mc_rc=0
fi

# What training from a dataset costs: resident on the device against host memory (tools/bench_data.sh).
if tools/bench_data.sh "$out" >"$out/bench_data.out" 2>&1; then
  tail -3 "$out/bench_data.out"
  summary+=("data: $(tail -2 "$out/bench_data.out" | tr -s ' ' | paste -sd ';')")
else
  tail -5 "$out/bench_data.out"
  summary+=("data: tools/bench_data.sh FAILED")
fi

echo
echo "SUMMARY"
for line in "${summary[@]}"; do echo "  $line"; done
[ $ctest_rc -eq 0 ] && [ $mc_rc -eq 0 ]
