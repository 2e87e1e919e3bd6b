#!/usr/bin/env bash
# Checks every tracked C++ and CUDA source against .clang-format and lists the
# files that differ (exit 1); `tools/check_format.sh --fix` rewrites them. The
# layout is clang-format 14's (Debian bookworm's clang-format package; other
# versions break some lines differently): where it is missing, the check says
# SKIPPED and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
format=$(command -v clang-format-14 || command -v clang-format || true)
if [ -z "$format" ] || ! "$format" --version | grep -q "version 14\."; then
  echo "check_format: SKIPPED: needs clang-format 14 (the Debian package clang-format), found ${format:-none}"
  exit 0
fi
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' '*.h')
if [ "${1:-}" = "--fix" ]; then
  "$format" -i "${files[@]}"
  exit 0
fi
unformatted=()
for f in "${files[@]}"; do
  "$format" "$f" | cmp -s - "$f" || unformatted+=("$f")
done
if [ ${#unformatted[@]} -gt 0 ]; then
  printf 'check_format: not as .clang-format lays it out (tools/check_format.sh --fix):\n' >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  exit 1
fi
echo "check_format: ${#files[@]} files as .clang-format lays them out"
