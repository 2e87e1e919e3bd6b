#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer into build-fuzz/ (CPU only, no MPI), then runs each for
# FUZZ_SECONDS (default 60) from a seed corpus of the stored networks, tensor
# files and datasets. Any crash, sanitizer report or unexpected exception fails.
# Usage: tools/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-${FUZZ_SECONDS:-60}}"
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (Debian package clang)" >&2; exit 1; }
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fsanitize=fuzzer-no-link"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
[ -f build-fuzz/CMakeCache.txt ] || CC=clang CXX=clang++ cmake -S . -B build-fuzz "${generator[@]}" \
  -DANVIL_WITH_CUDA=OFF -DANVIL_WITH_MPI=OFF -DANVIL_BUILD_TESTS=OFF -DANVIL_BUILD_FUZZERS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" >/dev/null
cmake --build build-fuzz --target fuzz_network fuzz_safetensors fuzz_dataset
for fuzzer in fuzz_network fuzz_safetensors fuzz_dataset; do
  corpus="build-fuzz/corpus/$fuzzer"
  mkdir -p "$corpus" build-fuzz/artifacts
  max_len=65536
  case "$fuzzer" in
    fuzz_network) cp -n tests/data/*.json examples/*.json bench/suite/*.json "$corpus"/ ;;
    fuzz_safetensors) find tests/data -name '*.safetensors' -size -2M -exec cp -n {} "$corpus"/ \; ;;
    # The datasets of dataset_epochs.json, whose sample shapes the harness uses;
    # the training set is 100 KB, so the inputs may be as long.
    fuzz_dataset) cp -n tests/data/dataset_*.safetensors "$corpus"/; max_len=131072 ;;
  esac
  echo "fuzz: $fuzzer for ${seconds} s"
  "build-fuzz/$fuzzer" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix=build-fuzz/artifacts/ -print_final_stats=1 "$corpus" 2>&1 | tail -12
done
echo "fuzz: PASSED"
