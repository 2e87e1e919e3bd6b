#!/usr/bin/env python3
"""Write random networks at benchmark size, for measuring anvil on networks nobody tuned it for.

bench/suite holds hand-picked networks; anvil will also be run on networks
nobody here wrote. This script draws COUNT networks from SEED into DIR, sized
like the suite's (each forward moves tens to hundreds of MB), for
`tools/bench_vs_torch.py --suite DIR --out FILE` to check parity and time
against PyTorch eager and torch.compile:

    python3 tools/random_suite.py --count 8 --seed 1 --out /tmp/random_suite
    python3 tools/bench_vs_torch.py --suite /tmp/random_suite --out bench/RANDOM_SUITE.md

A network is one or two blocks: a conv (kernel 1 to 5, stride 1 or 2) or a
transposed conv (kernel 2 to 4, stride 1 or 2, output_padding below the
stride), 2-D or 3-D, 16 to 128 output channels; a chain of up to three
activations and channel_scales; sometimes a residual join (a stride-1 "same"
conv and chain on a branch, added to the block's output); then a max pool,
an average pool or none. Every tensor stays within 256 MB. The same seed
writes the same files. (tests/generated_networks.hpp draws small networks
of the same kinds for the correctness tests.)
"""

import argparse
import json
import os
import random
import sys

MAX_TENSOR_BYTES = 256 << 20
MIN_INPUT_BYTES = 4 << 20
ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "channel_scale"]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def per_dim(values):
    """One integer where every dimension agrees, as people write them."""
    return values[0] if all(v == values[0] for v in values) else values


class Builder:
    def __init__(self, rng, dims):
        self.rng = rng
        self.dims = dims
        self.layers = []

    def name(self, kind):
        return f"{kind}{len(self.layers)}"

    def conv(self, source, x, out_channels, same=False):
        """A conv or transposed conv after source (shape x) whose output fits; its output shape."""
        rng = self.rng
        for _ in range(1000):
            transposed = not same and rng.random() < 0.35
            k, s, p, op, y = [], [], [], [], [x[0], out_channels]
            for i in range(self.dims):
                if same:
                    ki = rng.choice([1, 3])
                    si, pi = 1, (ki - 1) // 2
                elif transposed:
                    ki, si = rng.choice([2, 3, 4]), rng.choice([1, 2])
                    pi = rng.randint(0, (ki - 1) // 2)
                else:
                    ki, si = rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 1, 2])
                    pi = rng.randint(0, ki // 2)
                opi = rng.randint(0, si - 1) if transposed else 0
                n = x[2 + i]
                out = (n - 1) * si - 2 * pi + ki + opi if transposed else (n + 2 * pi - ki) // si + 1
                k.append(ki), s.append(si), p.append(pi), op.append(opi), y.append(out)
            if min(y[2:]) < 1 or numel(y) * 4 > MAX_TENSOR_BYTES:
                continue
            layer = {"type": f"conv_transpose{self.dims}d" if transposed else f"conv{self.dims}d",
                     "name": self.name("up" if transposed else "conv"), "inputs": [source],
                     "in_channels": x[1], "out_channels": out_channels, "kernel_size": per_dim(k),
                     "stride": per_dim(s), "padding": per_dim(p)}
            if transposed and any(op):
                layer["output_padding"] = per_dim(op)
            self.layers.append(layer)
            return y
        raise SystemExit(f"no conv fits after {x}")

    def chain(self, source, most):
        for _ in range(self.rng.randint(0, most)):
            kind = self.rng.choice(ACTIVATIONS)
            layer = {"type": kind, "name": self.name(kind), "inputs": [source]}
            if kind == "leaky_relu":
                layer["negative_slope"] = self.rng.choice([0.2, 0.1, 0.01])
            self.layers.append(layer)
            source = layer["name"]
        return source

    def pool(self, source, x):
        """A max or average pool after source where one fits; the output's name and shape."""
        rng = self.rng
        k = rng.choice([2, 3])
        s = rng.choice([k, 2, 1]) if k == 3 else 2
        p = rng.randint(0, k // 2)
        y = x[:2] + [(n + 2 * p - k) // s + 1 for n in x[2:]]
        if min(y[2:]) < 1:
            return source, x
        kind = rng.choice(["max", "avg"])
        self.layers.append({"type": f"{kind}_pool{self.dims}d", "name": self.name(kind + "pool"),
                            "inputs": [source], "kernel_size": k, "stride": s, "padding": p})
        return self.layers[-1]["name"], y

    def add(self, a, b):
        self.layers.append({"type": "add", "name": self.name("sum"), "inputs": [a, b]})
        return self.layers[-1]["name"]


def draw(seed):
    rng = random.Random(seed)
    dims = 2 if rng.random() < 0.6 else 3
    while True:
        if dims == 2:
            x = [rng.choice([8, 16, 32, 64]), rng.choice([3, 16, 32, 64]), *[rng.choice([32, 64, 128])] * 2]
        else:
            x = [rng.choice([1, 2, 4, 8]), rng.choice([3, 16, 32, 64]), *[rng.choice([16, 32])] * 3]
        if MIN_INPUT_BYTES <= numel(x) * 4 <= MAX_TENSOR_BYTES:
            break
    build = Builder(rng, dims)
    shape, at = list(x), "input"
    for _ in range(rng.randint(1, 2)):
        shape = build.conv(at, shape, rng.choice([16, 32, 64, 128]))
        at = build.chain(build.layers[-1]["name"], 3)
        if rng.random() < 0.3:
            build.conv(at, shape, shape[1], same=True)
            at = build.chain(build.add(at, build.chain(build.layers[-1]["name"], 1)), 1)
        if rng.random() < 0.7:
            at, shape = build.pool(at, shape)
    return {"name": f"random_{seed}", "input": x, "layers": build.layers, "loss": "mse",
            "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}, "precision": "tf32", "seed": seed}


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line (exit 2), as anvil's own."""

    def error(self, message):
        print(f"random_suite: {message}", file=sys.stderr)
        sys.exit(2)


def write_file(path, text):
    """Written to a temporary file beside it, then renamed over it: a failure leaves no part."""
    temporary = f"{path}.partial"
    try:
        with open(temporary, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except OSError:
        if os.path.isfile(temporary) and not os.path.islink(temporary):
            os.remove(temporary)
        raise


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="networks to write (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="the first network's seed; the others follow (default 1)")
    parser.add_argument("--out", required=True, help="the directory to write random_<seed>.json into")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 10000:
        parser.error(f"--count must be from 1 to 10000, got {args.count}")
    if not 0 <= args.seed <= 2**63 - 1 - args.count:  # each network's seed is a JSON seed anvil takes
        parser.error(f"--seed must be from 0 to 2^63 - 1 - count, got {args.seed}")
    path = args.out
    try:
        os.makedirs(args.out, exist_ok=True)
        paths = [os.path.join(args.out, f"random_{seed}.json") for seed in range(args.seed, args.seed + args.count)]
        # Every destination checked before any is written: a new name or a regular file, never
        # through a symlink (it would write outside --out) or over a directory.
        for path in paths:
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
                print(f"random_suite: {path}: not a regular file (a symlink or a directory): not replaced",
                      file=sys.stderr)
                return 1
        for seed, path in zip(range(args.seed, args.seed + args.count), paths):
            net = draw(seed)
            write_file(path, json.dumps(net, indent=1) + "\n")
            kinds = " ".join(layer["type"] for layer in net["layers"])
            print(f"{path}: input {net['input']}: {kinds}")
    except OSError as e:
        print(f"random_suite: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
