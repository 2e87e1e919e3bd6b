#!/usr/bin/env python3
"""The kernels PyTorch runs for one step of an anvil network, with their GPU time per step.

Builds the network as tools/bench_vs_torch.py does (JsonModel, the same data and
optimizer), warms the step up, then runs it under torch.profiler and prints a
Markdown table: each kernel (or copy, or memset), its calls and microseconds per
step, and the total. bench/SUITE.md's "where torch.compile's time goes" tables
come from it. Needs a GPU and PyTorch.

Usage: python3 tools/torch_kernels.py NETWORK [--precision fp32|tf32] [--measure forward|train]
       [--eager] [--steps N]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# First: without PyTorch it exits with one line naming this script, before `import torch` would fail.
from bench_vs_torch import JsonModel, load_case, make_step, set_precision  # noqa: E402
import torch  # noqa: E402

NAME_WIDTH = 110  # kernel names are long C++ signatures; the table keeps their start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="an anvil network JSON file")
    parser.add_argument("--precision", choices=("fp32", "tf32"), default="tf32")
    parser.add_argument("--measure", choices=("forward", "train"), default="forward")
    parser.add_argument("--eager", action="store_true", help="profile eager PyTorch, not torch.compile")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (default 20)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("torch_kernels: no GPU")

    set_precision(args.precision)
    torch.backends.cudnn.benchmark = True  # as bench_vs_torch.py times PyTorch
    case = load_case(args.network, JsonModel)
    model = case.model()
    x, target = case.data.x.cuda(), case.data.target.cuda()
    step = make_step(args.measure, model, x, target, case.optimizer(model), not args.eager, case.loss)
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()

    rows = []
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        if us > 0:
            rows.append((us / args.steps, event.count / args.steps, event.key))
    rows.sort(reverse=True)
    impl = "eager" if args.eager else "torch.compile"
    print(f"{case.net.name}, {impl}, {args.precision} {args.measure}, {args.steps} steps, "
          f"{torch.cuda.get_device_name()}\n")
    print("| kernel | calls a step | us a step |\n| --- | ---: | ---: |")
    for us, calls, name in rows:
        print(f"| `{name[:NAME_WIDTH]}` | {calls:g} | {us:.1f} |")
    print(f"| total | | {sum(r[0] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
