#!/usr/bin/env bash
# Installs anvil from the build tree into a temporary prefix, builds the
# embedding example against it with find_package(anvil 0.1), and runs it.
set -euo pipefail
src="$1"; build="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/examples/embed" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/build" >/dev/null
"$tmp/build/embed_example" "$src/tests/data/kb74_small.json" 2 | tee "$tmp/out.txt"
# The installed version.hpp and the version functions of the library: "anvil X.Y.Z (commit ...)".
grep -Eq "^anvil [0-9]+\.[0-9]+\.[0-9]+ \(commit " "$tmp/out.txt"
grep -q "step 2 loss" "$tmp/out.txt"
grep -q "conv_transpose.weight: 13824 gradient values" "$tmp/out.txt"
