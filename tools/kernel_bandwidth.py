#!/usr/bin/env python3
"""Each kernel of one anvil step against the copy bandwidth, under Nsight Compute.

Runs `anvil bench NETWORK --mode MODE --iters 1 --no-graph` under ncu, keeping the
kernels inside the step's NVTX range ("forward" or "train step"), and prints a
Markdown table: the layer whose NVTX range launched each kernel, the kernel,
its duration, the DRAM bytes it read and wrote, that over its duration, and
that as a share of the device-to-device copy bandwidth (measured by
tools/bench_vs_torch.py's copy, in the same run). This is the measurement that
bench/RESULTS.md's per-layer tables quote. Needs ncu and PyTorch (the GPU
machine has both); ncu runs with --clock-control none (the device notes say to
leave the clocks alone).

Usage: python3 tools/kernel_bandwidth.py NETWORK [--mode forward|train] [--anvil build/anvil] [--out FILE]
       [--ncu PATH] [--bandwidth TB/s (skips the copy, and PyTorch)]
"""

import argparse
import csv
import io
import math
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum")
STEP_RANGE = {"forward": "forward", "train": "train step"}
# ncu's units row, to seconds and bytes.
UNIT_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3,
              "second": 1.0, "B": 1.0, "byte": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "Kbyte": 1e3, "Mbyte": 1e6,
              "Gbyte": 1e9}


def ncu_rows(ncu, anvil, network, mode, rename):
    """ncu's rows for the kernels of one step, in launch order; rename: kernel names become NVTX ranges."""
    cmd = [ncu, "--clock-control", "none", "--csv", "--page", "raw", "--print-units", "base", "--metrics", ",".join(METRICS),
           "--nvtx", "--nvtx-include", STEP_RANGE[mode] + "/"]
    if rename:
        cmd += ["--print-nvtx-rename", "kernel"]
    cmd += [anvil, "bench", network, "--mode", mode, "--iters", "1", "--warmup", "0", "--no-graph"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except OSError as e:
        sys.exit(f"kernel_bandwidth: cannot run {ncu} (Nsight Compute): {e.strerror}")
    if run.returncode != 0:
        sys.exit(f"kernel_bandwidth: ncu exited {run.returncode}: {run.stderr.strip()[-2000:]}")
    text = run.stdout[run.stdout.find('"ID"'):] if '"ID"' in run.stdout else ""
    table = list(csv.DictReader(io.StringIO(text)))
    units = next((r for r in table if not r.get("ID", "").isdigit()), {})  # the row under the header
    rows = [r for r in table if r.get("ID", "").isdigit()]
    if rows and "Kernel Name" not in rows[0]:
        sys.exit("kernel_bandwidth: ncu's table has no Kernel Name column")
    if not rows:
        sys.exit("kernel_bandwidth: ncu profiled no kernel in the step's NVTX range:\n" + run.stdout[-2000:])
    for metric in METRICS:
        if units.get(metric) not in UNIT_SCALE:
            sys.exit(f"kernel_bandwidth: ncu gave {metric} in unknown units {units.get(metric)!r}")
        for r in rows:
            try:
                r[metric] = float(r[metric].replace(",", "")) * UNIT_SCALE[units[metric]]
            except (AttributeError, ValueError):
                sys.exit(f"kernel_bandwidth: ncu gave {metric} = {r[metric]!r} for kernel {r['ID']}, not a number")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network")
    parser.add_argument("--mode", choices=sorted(STEP_RANGE), default="train")
    parser.add_argument("--anvil", default=os.path.join(REPO_ROOT, "build", "anvil"))
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--ncu", default="ncu", help="the Nsight Compute binary (default: ncu on the PATH)")
    parser.add_argument("--bandwidth", type=float, default=None, metavar="TB/s",
                        help="the copy bandwidth to compare with (default: measured with PyTorch)")
    args = parser.parse_args()
    if args.bandwidth is not None and not (math.isfinite(args.bandwidth) and args.bandwidth > 0):
        parser.error(f"--bandwidth must be a positive number of TB/s, got {args.bandwidth}")

    if args.bandwidth is None:
        sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
        from bench_vs_torch import copy_bandwidth  # imports torch: GPU machine only
        bandwidth = copy_bandwidth()
        source = "1 GiB device-to-device copy, bytes read + written"
    else:
        bandwidth = args.bandwidth * 1e12
        source = "given"
    kernels = ncu_rows(args.ncu, args.anvil, args.network, args.mode, rename=False)
    layers = ncu_rows(args.ncu, args.anvil, args.network, args.mode, rename=True)
    same_launches = len(layers) == len(kernels)
    lines = [f"`{os.path.relpath(args.network, REPO_ROOT)}`, {args.mode}: every kernel of one step (ncu, "
             f"--clock-control none); copy bandwidth {bandwidth / 1e12:.2f} TB/s ({source}).", "",
             "| layer (NVTX range) | kernel | us | MB read + written | TB/s | of copy bandwidth |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    total_us = total_mb = 0.0
    for i, row in enumerate(kernels):
        us = row["gpu__time_duration.sum"] * 1e6
        mb = (row["dram__bytes_read.sum"] + row["dram__bytes_write.sum"]) / 1e6
        total_us += us
        total_mb += mb
        # Renamed, a kernel reads "<innermost NVTX range>/<kernel>".
        layer = layers[i]["Kernel Name"].split("/", 1)[0] if same_launches else "?"
        name = row["Kernel Name"].split("(")[0][:80]
        rate = mb * 1e6 / (us * 1e-6) if us > 0 else 0.0
        lines.append(f"| {layer} | `{name}` | {us:.1f} | {mb:.1f} | {rate / 1e12:.2f} | {100 * rate / bandwidth:.0f}% |")
    lines.append(f"| all | {len(kernels)} kernels | {total_us:.1f} | {total_mb:.1f} | | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        try:  # whole or not at all: a temporary file renamed over the output
            with open(args.out + ".tmp", "w") as f:
                f.write(table)
            os.replace(args.out + ".tmp", args.out)
        except OSError as e:
            sys.exit(f"kernel_bandwidth: cannot write {args.out}: {e.strerror}")


if __name__ == "__main__":
    main()
