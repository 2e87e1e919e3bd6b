#!/usr/bin/env bash
# Installs what the build needs (only what is missing; nothing on machines that
# already have it, such as the GPU machine, which has no network), then
# configures and builds anvil into build/: every target, or the ones named
# (tools/setup.sh anvil_cli). ANVIL_BUILD_DIR names another build directory and
# ANVIL_CMAKE_ARGS adds arguments to its first configure; a CPU-only build
#   ANVIL_BUILD_DIR=build-cpu ANVIL_CMAKE_ARGS=-DANVIL_WITH_CUDA=OFF tools/setup.sh
# needs no CUDA toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a command it provides, a header under /usr/include or
# /usr/local/include, or a Python module (for tools/plot_metrics.py).
declare -A needs=(
  [cmake]=cmd:cmake
  [g++]=cmd:g++
  [nlohmann-json3-dev]=hdr:nlohmann/json.hpp
  [libcli11-dev]=hdr:CLI/CLI.hpp
  [libgtest-dev]=hdr:gtest/gtest.h
  [python3-matplotlib]=py:matplotlib
)
present() {
  case "$1" in
    cmd:*) command -v "${1#cmd:}" >/dev/null ;;
    hdr:*) [ -e "/usr/include/${1#hdr:}" ] || [ -e "/usr/local/include/${1#hdr:}" ] ;;
    # The python3 on PATH (pyenv, a venv) or Debian's, which plot_metrics.py falls back to.
    py:*) python3 -c "import ${1#py:}" 2>/dev/null || /usr/bin/python3 -c "import ${1#py:}" 2>/dev/null ;;
  esac
}
missing=()
for pkg in "${!needs[@]}"; do
  present "${needs[$pkg]}" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing missing packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
build_dir="${ANVIL_BUILD_DIR:-build}"
read -r -a cmake_args <<< "${ANVIL_CMAKE_ARGS:-}"
if [[ " ${cmake_args[*]} " != *" -DANVIL_WITH_CUDA=OFF "* ]]; then
  [ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null || { echo "setup: nvcc not found: install the CUDA toolkit (with cuDNN)" >&2; exit 1; }
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}" >/dev/null
fi
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j "$(nproc)" "${targets[@]}"
