#!/usr/bin/env bash
# Measures what training from a dataset costs on the GPU machine: the headline
# network's train step on one fixed batch, against steps that take their batch
# from a dataset of 1024 samples (3 GiB), resident on the device (gathered
# inside the captured step) and kept in host memory (gathered there and copied
# before each step). Writes bench_data.log and the JSON of each run to $1.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/anvil-bench-data}"
mkdir -p "$out"
data="$out/kb74_1024.safetensors"
net=examples/kernelbench74.json
python3 - "$data" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
save_file({"input": rng.random((1024, 16, 16, 32, 32), dtype=np.float32),
           "target": rng.random((1024, 32, 16, 32, 32), dtype=np.float32)}, sys.argv[1])
PY
{
  build/anvil bench "$net" --mode train --iters 100 --json "$out/single_batch.json" | grep -E "^data|median"
  build/anvil bench "$net" --mode train --iters 100 --data "$data" --json "$out/data_device.json" | grep -E "^data|median"
  build/anvil bench "$net" --mode train --iters 100 --data "$data" --data-budget 0 --json "$out/data_host.json" |
    grep -E "^data|median"
} 2>&1 | tee "$out/bench_data.log"
python3 - "$out" <<'PY'
import json, sys
runs = {k: json.load(open(f"{sys.argv[1]}/{k}.json")) for k in ("single_batch", "data_device", "data_host")}
base = runs["single_batch"]["samples_per_s"]
for k, r in runs.items():
    print(f"{k:13s} median {r['ms']['median']:.4f} ms  {r['samples_per_s']:9.1f} samples/s  {r['samples_per_s'] / base:.3f}x single batch")
PY
rm -f "$data"
