#!/usr/bin/env bash
# The CPU-only build under AddressSanitizer and UndefinedBehaviorSanitizer
# (clang; any report fails the test that caused it), into build-asan/, and its
# tests. embed_example is left out: it builds a separate project against the
# installed library, which would need the sanitizer runtime too. MPI is left
# out (its test skips here): Open MPI's own allocations at exit would be
# reported as leaks in every process mpirun starts.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang++ >/dev/null || { echo "sanitize: clang++ not found (Debian package clang)" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
[ -f build-asan/CMakeCache.txt ] || env PATH=/usr/bin:/bin CC=clang CXX=clang++ cmake -S . -B build-asan \
  "${generator[@]}" -DANVIL_WITH_CUDA=OFF -DANVIL_WITH_MPI=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" >/dev/null
cmake --build build-asan -j "$(nproc)"
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -E '^embed_example$'
