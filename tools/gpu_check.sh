#!/usr/bin/env bash
# Runs on the GPU machine in one go: build, every test with GPU tests required
# (a skip fails), compute-sanitizer's memcheck on the GPU tests and racecheck,
# initcheck and synccheck on anvil's kernels, each
# precision's error against PyTorch float64 (tools/precision_report.py), then
# the dataset benchmark (tools/bench_data.sh). tools/bench_vs_torch.py is the
# separate comparison with PyTorch.
# Knobs: STAGES (default "tests sanitizers precision data"; the build always
# runs: a session whose calls each have 10 minutes runs the stages across warm
# calls; "suite" adds tools/bench_vs_torch.py --suite into $out/SUITE.md and
# "random" the same over RANDOM_COUNT (default 8) networks of
# tools/random_suite.py from RANDOM_SEED (default 1) into $out/RANDOM_SUITE.md,
# "bandwidth" tools/kernel_bandwidth.py's train-step table for each of
# BANDWIDTH_NETWORKS (suite names, default pyramid_join_2d residual_add_2d)), CTEST_JOBS (default 4: all 1191 tests took 181 s so on an H100, 2026-12-07, and 1219 took 170 s at 8; one at a time they do not fit a 10-minute call with the build; a failure is rerun alone), SANITIZER_TOOLS (default all four),
# CTEST_RANGE (ctest -I: "611,768" runs tests 611 to 768, for a run split across calls),
# TEST_TIMEOUT (s each test may run before it fails, default 120: the slowest take about 15 s),
# SANITIZER_TIMEOUT (s per tool's shard, default 420), SANITIZER_SHARDS (gtest shards a tool runs
# in, side by side, default 4: the tools are bound by the host's instrumentation, and one process
# a tool no longer fitted 420 s on an H100, 2026-12-07, with CudaKernels.ChannelsLastPool (now one test a pool case) alone
# at 150 to 200 s; all four tools at once, 4 shards each, did not fit 450 s on an H100,
# 2026-12-07: run one tool a call, e.g. SANITIZER_TOOLS=memcheck SANITIZER_SHARDS=8, 120 s),
# MEMCHECK_FILTER and
# KERNEL_FILTER (gtest filters), PRECISION_CASES (tools/precision_report.py
# --cases). Prints a short summary last. Logs go to /tmp/anvil-gpu-check; with
# OUT set (the device tool's folder, which brings back at most 8 files) they
# also come back packed as $OUT/gpu_check_logs.tar.gz, written on exit (so
# give the script its own time, not an outer timeout that kills it first).
set -uo pipefail
cd "$(dirname "$0")/.."
out=/tmp/anvil-gpu-check
mkdir -p "$out"
pack_logs() { [ -n "${OUT:-}" ] && tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$out" .; }
trap pack_logs EXIT
export ANVIL_REQUIRE_GPU=1
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off (docs/distributed.md)
summary=()

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1 | sed 's/^/gpu: /'
build_start=$(date +%s)
if ! tools/setup.sh >"$out/build.log" 2>&1; then
  tail -30 "$out/build.log"
  echo "SUMMARY: build FAILED"
  exit 1
fi
grep -iE "warning" "$out/build.log" | head -5
summary+=("build: ok in $(( $(date +%s) - build_start )) s ($(grep -ciE 'warning' "$out/build.log") warning lines)")

stages=" ${STAGES:-tests sanitizers precision data} "
stage() { [[ "$stages" == *" $1 "* ]] || { summary+=("$1: not in STAGES"); false; }; }

ctest_rc=0
if stage tests; then
  ctest --test-dir build --output-on-failure -j "${CTEST_JOBS:-4}" --timeout "${TEST_TIMEOUT:-120}" \
    ${CTEST_RANGE:+-I "$CTEST_RANGE"} >"$out/ctest.log" 2>&1
  ctest_rc=$?
  grep -E "tests passed|tests failed|Skipped|\*\*\*Failed|\*\*\*Timeout|Not Run" "$out/ctest.log" | tail -15
  summary+=("tests: $(grep -E 'tests passed' "$out/ctest.log" | tail -1)")
  # Tests that failed beside others get one serial rerun (GPU memory and timing are shared);
  # one that timed out is a failure as it stands: a hang would only take its limit again.
  # (By name: ctest's --rerun-failed goes by test number, which -E renumbers.)
  failed() {  # the names ctest lists as failed for a reason that is (=) or is not (!=) a timeout
    sed -n '/The following tests FAILED:/,$p' "$out/ctest.log" |
      awk -v want="$1" '/^\t *[0-9]+ - / { timeout = ($NF == "(Timeout)"); if ((want == "=") == timeout) print $3 }' |
      paste -sd '|'
  }
  timed_out=$(failed =)
  others=$(failed !=)
  if [ -n "$others" ] && [ "${CTEST_JOBS:-4}" != 1 ]; then
    ctest --test-dir build --output-on-failure -j 1 --timeout "${TEST_TIMEOUT:-120}" -R "^($others)\$" \
      >"$out/ctest_rerun.log" 2>&1
    ctest_rc=$?
    summary+=("tests rerun serially: $(grep -E 'tests passed' "$out/ctest_rerun.log" | tail -1)")
  fi
  if [ -n "$timed_out" ]; then
    ctest_rc=1
    summary+=("tests timed out (${TEST_TIMEOUT:-120} s), not rerun: ${timed_out//|/, }")
  fi
fi

# compute-sanitizer. memcheck runs over the GPU tests, cuDNN's kernels included (the full-size
# case is left to the plain run: too slow under the sanitizer). racecheck, initcheck and synccheck
# check anvil's own kernels only (--kernel-name kns=5anvil: every kernel of anvil's namespace;
# cuDNN's are left out, docs/reliability.md says why) over the kernel tests, on small shapes.
# AddChainPool runs ChainPool's kernels again with a second input: memcheck covers it, the
# shared-memory tools would only repeat ChainPool at the cost of the time limit.
sanitizer_rc=0
if ! stage sanitizers; then
  :
elif command -v compute-sanitizer >/dev/null; then
  kernel_tests="CudaPointwise*:CudaKernels*:*DirectConv*:*WgmmaConv*:*PhaseMma*:*ConvWgradMma*:*ConvFpropMma*:GatherCuda*:LossOptimizerCuda*:*CheckFinite*cuda:DataParallelGpu*:-*LargeTensors*:CudaKernels.AddChainPool*"
  tools="${SANITIZER_TOOLS:-memcheck racecheck initcheck synccheck}"
  rcs=$(mktemp -d)
  shards=${SANITIZER_SHARDS:-4}
  # None would run nothing and report it clean.
  [[ "$shards" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: SANITIZER_SHARDS must be a whole number above 0, not '$shards'" >&2; exit 2; }
  # The tools, and each tool's gtest shards, run side by side: each is bound by the host's
  # instrumentation, not the GPU.
  for tool in $tools; do
    if [ "$tool" = memcheck ]; then
      # DataParallelGpu is left out: ncclCommInitAll probes its own kernels with cudaFuncGetAttributes,
      # and memcheck reports the 4 "no kernel image" answers as API errors (racecheck, initcheck and
      # synccheck below do run it, on anvil's kernels).
      filter="${MEMCHECK_FILTER:-*Gpu*:*Cuda*:*WgmmaConv*:*PhaseMma*:*ConvWgradMma*:*ConvFpropMma*:*cuda:-*GpuFullSize*:DataParallelGpu*:Generated/GpuVsCpu*}"
      only=()
    else
      filter="${KERNEL_FILTER:-$kernel_tests}"
      only=(--kernel-name kns=5anvil)
    fi
    for ((shard = 0; shard < shards; ++shard)); do
      ( GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$shard timeout "${SANITIZER_TIMEOUT:-420}" \
          compute-sanitizer --tool "$tool" "${only[@]}" --error-exitcode 9 build/tests/anvil_tests \
          --gtest_filter="$filter" >"$out/$tool.$shard.log" 2>&1
        echo $? >"$rcs/$tool.$shard" ) &
    done
  done
  wait
  for tool in $tools; do
    rc=0 note="" passed=0
    for ((shard = 0; shard < shards; ++shard)); do
      shard_rc=$(cat "$rcs/$tool.$shard" 2>/dev/null)
      [[ "$shard_rc" =~ ^[0-9]+$ ]] || shard_rc=255  # the tool's shell died before writing its status: a failure
      log="$out/$tool.$shard.log"
      [ "$shard_rc" -eq 124 ] && shard_note="TIMED OUT" || shard_note="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
      note+="${note:+; }shard $shard: ${shard_note#========= }"
      passed=$((passed + $(grep -cE '^\[       OK \]' "$log")))
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED  \]" "$log" | tail -3
      [ "$shard_rc" -ne 0 ] && rc=$shard_rc
    done
    summary+=("$tool: rc $rc, $note; $passed tests passed")
    [ "$rc" -ne 0 ] && sanitizer_rc=$rc
  done
  rm -rf "$rcs"
else
  summary+=("compute-sanitizer: not found")
fi

# How far each precision is from PyTorch's float64 (docs/network-format.md quotes it).
if ! stage precision; then
  :
elif python3 tools/precision_report.py ${PRECISION_CASES:+--cases "$PRECISION_CASES"} >"$out/precision.md" 2>&1; then
  tail -2 "$out/precision.md"
  summary+=("precision: $(tail -2 "$out/precision.md" | sed 's/worst relative L2 error against float64, //' | paste -sd ';')")
else
  tail -3 "$out/precision.md"
  summary+=("precision: tools/precision_report.py FAILED")
fi

# What training from a dataset costs: resident on the device against host memory (tools/bench_data.sh).
if ! stage data; then
  :
elif tools/bench_data.sh "$out" >"$out/bench_data.out" 2>&1; then
  tail -3 "$out/bench_data.out"
  summary+=("data: $(tail -2 "$out/bench_data.out" | tr -s ' ' | paste -sd ';')")
else
  tail -5 "$out/bench_data.out"
  summary+=("data: tools/bench_data.sh FAILED")
fi

# anvil against PyTorch on the suite, and on random networks nobody tuned it for (bench/SUITE.md
# holds the analysis; these reports are copied there by hand).
bench_rc=0
bench_suite() {  # NAME DIR
  if python3 tools/bench_vs_torch.py --suite "$2" --out "$out/$1.md" >"$out/$1.log" 2>&1; then
    summary+=("$1: $(grep -c '^|.*BELOW 1.0x' "$out/$1.md") rows below torch.compile; $out/$1.md")
  else
    tail -5 "$out/$1.log"
    summary+=("$1: tools/bench_vs_torch.py FAILED ($out/$1.log)")
    bench_rc=1
  fi
}
if stage suite; then bench_suite SUITE bench/suite; fi
if stage random; then
  python3 tools/random_suite.py --count "${RANDOM_COUNT:-8}" --seed "${RANDOM_SEED:-1}" \
    --out "$out/random_suite" >"$out/random_suite.log" 2>&1 && bench_suite RANDOM_SUITE "$out/random_suite" ||
    { summary+=("random: tools/random_suite.py FAILED"); bench_rc=1; }
fi
# Each kernel of a train step against the copy bandwidth (ncu), for the suite networks whose
# layers run outside the fusion rules (bench/RESULTS.md's per-layer tables).
if stage bandwidth; then
  for net in ${BANDWIDTH_NETWORKS:-pyramid_join_2d residual_add_2d}; do
    if python3 tools/kernel_bandwidth.py "bench/suite/$net.json" --mode train --out "$out/bandwidth_$net.md" \
      >"$out/bandwidth_$net.log" 2>&1; then
      summary+=("bandwidth: $out/bandwidth_$net.md")
    else
      tail -5 "$out/bandwidth_$net.log"
      summary+=("bandwidth: tools/kernel_bandwidth.py FAILED on $net")
      bench_rc=1
    fi
  done
fi

echo
echo "SUMMARY"
for line in "${summary[@]}"; do echo "  $line"; done
[ $ctest_rc -eq 0 ] && [ $sanitizer_rc -eq 0 ] && [ $bench_rc -eq 0 ]
