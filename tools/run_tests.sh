#!/usr/bin/env bash
# Builds anvil and runs every test. GPU tests skip visibly without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
