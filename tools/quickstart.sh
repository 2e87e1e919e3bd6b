#!/usr/bin/env bash
# Builds anvil and trains the headline network (KernelBench level 2 #74) for a
# few steps. With a GPU it runs at full KernelBench size on CUDA; without one it
# runs on the CPU reference backend at a reduced batch and size
# (examples/kernelbench74_cpu.json: batch 2, input 16x8x16x16).
# Writes the run's metrics to build/quickstart/metrics.jsonl and plots them in
# build/quickstart/loss.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh anvil_cli
out=build/quickstart
mkdir -p "$out"
rm -f "$out/metrics.jsonl"  # --metrics appends: start this run's file afresh
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  build/anvil train examples/kernelbench74.json --device cuda --steps 50 --log-every 1 --metrics "$out/metrics.jsonl"
else
  echo "quickstart: no GPU found: training the reduced-size network on the CPU reference backend"
  build/anvil train examples/kernelbench74_cpu.json --device cpu --steps 50 --log-every 1 --metrics "$out/metrics.jsonl"
fi
python3 tools/plot_metrics.py "$out/metrics.jsonl" -o "$out/loss.png" >/dev/null
echo "quickstart: metrics in $out/metrics.jsonl, loss and learning-rate plot in $(pwd)/$out/loss.png"
