#!/usr/bin/env python3
"""How far anvil's GPU results are from PyTorch's float64, per precision.

For each stored reference case (tests/data, computed by PyTorch in float64),
runs `anvil run` and `anvil train --steps 1 --dump-grads` on the GPU in tf32
and in strict fp32, with the case's input, target and weights, and prints the
relative L2 error of the output and of every parameter gradient. The figures
in docs/network-format.md ("What each precision computes") come from here.

    python3 tools/precision_report.py [--anvil build/anvil] [--cases kb74_small,...] [--device cpu]

Needs numpy and safetensors (no PyTorch).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

from needs import needs

with needs("numpy", "numpy"):
    import numpy as np
with needs("safetensors", "safetensors.numpy"):
    from safetensors.numpy import load_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO_ROOT, "tests", "data")
DEFAULT_CASES = "kb74_small,odd_sizes,dcgan_2d,stride1_block,relu_avgpool,activations"


def rel_l2(got, want):
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def run(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise SystemExit(f"precision_report.py: cannot run {shlex.join(cmd)}: {e.strerror}")
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()  # the last is anvil's one-line error
        raise SystemExit(f"precision_report.py: {shlex.join(cmd)} failed with exit status {done.returncode}"
                         + (f": {lines[-1]}" if lines else ""))


def case_errors(anvil, device, case, precision, workdir):
    with open(os.path.join(DATA, case + ".json"), encoding="utf-8") as f:
        net = json.load(f)
    net["precision"] = precision
    cfg = os.path.join(workdir, f"{case}_{precision}.json")
    with open(cfg, "w", encoding="utf-8") as f:
        json.dump(net, f)
    ref_path = os.path.join(DATA, case + ".safetensors")
    ref = load_file(ref_path)
    out = os.path.join(workdir, "out.safetensors")
    grads = os.path.join(workdir, "grads.safetensors")
    run([anvil, "run", cfg, "--device", device, "--weights", ref_path, "--input", ref_path, "--output", out])
    run([anvil, "train", cfg, "--device", device, "--steps", "1", "--data", ref_path, "--weights", ref_path,
         "--dump-grads", grads])
    errors = {"output": rel_l2(load_file(out)["output"], ref["output"])}
    for name, value in load_file(grads).items():  # keyed by parameter name
        errors["grad." + name] = rel_l2(value, ref["grad." + name])
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anvil", default=os.path.join(REPO_ROOT, "build", "anvil"))
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    worst = {}
    print("| case | precision | output | worst gradient |")
    print("| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="anvil_precision_") as workdir:
        for case in args.cases.split(","):
            for precision in ("fp32", "tf32"):
                e = case_errors(args.anvil, args.device, case, precision, workdir)
                grad = max(v for k, v in e.items() if k.startswith("grad."))
                print(f"| {case} | {precision} | {e['output']:.1e} | {grad:.1e} |")
                worst[precision] = max(worst.get(precision, 0.0), e["output"], grad)
    for precision, value in worst.items():
        print(f"worst relative L2 error against float64, {precision}: {value:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
