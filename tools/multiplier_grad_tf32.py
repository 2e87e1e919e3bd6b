#!/usr/bin/env python3
"""Is the multiplier gradient as <W, G> + b * sum(e0) accurate enough in TF32?

The design for a backward that keeps no Y (docs/performance.md, "What the
backward saves") computes a channel_scale's gradient from the filter
gradient G of e0 (the gradient reaching Y, multipliers left out) instead of
summing dz * z over a stored Y. This emulates both on the CPU, with numpy, on
conv -> relu -> channel_scale -> relu -> MSE for a few stride = kernel convs
(whose patches are a reshape), and prints the error of each against float64:

  PyTorch, tf32:   Y from a TF32 conv, then the sum of dz * z in float32;
  <W, G>, tf32:    G from TF32-rounded operands, float32 sums;
  <W, G>, 3xTF32:  G from float32 operands (as strict fp32's compensated kernels).

TF32 is emulated as round-to-nearest-even to 10 mantissa bits with float32
accumulation; the tensor cores' accumulation order is not modelled.

    python3 tools/multiplier_grad_tf32.py [--seeds 3]
"""

import argparse

from needs import needs

with needs("numpy", "numpy"):
    import numpy as np

# name: (batch, in channels, out channels, output size a side, kernel = stride, weight std, bias std)
CASES = {
    "Cin 64, k2 (512 taps)": (2, 64, 128, 8, 2, 0.04, 0.1),
    "Cin 1, k3 (27 taps)": (4, 1, 64, 12, 3, 0.3, 0.1),
    "Cin 16, k3 (432 taps), large bias": (2, 16, 64, 8, 3, 0.05, 1.0),
    "Cin 128, k2 (1024 taps)": (1, 128, 64, 8, 2, 0.03, 0.05),
}


def tf32(a):
    """float32 rounded to TF32 (10 mantissa bits), nearest, ties to even."""
    a = np.asarray(a, np.float32).copy()
    bits = a.view(np.uint32)
    bits += np.uint32(0xFFF) + ((bits >> 13) & 1)
    bits &= np.uint32(0xFFFFE000)
    return a


def errors(rng, batch, cin, cout, side, k, w_std, b_std):
    x = rng.standard_normal((batch, cin) + (side * k,) * 3)
    w = rng.standard_normal((cout, cin * k**3)) * w_std
    b = rng.standard_normal(cout) * b_std
    s = rng.uniform(0.5, 1.5, cout)
    patches = x.reshape(batch, cin, side, k, side, k, side, k).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    patches = patches.reshape(batch * side**3, cin * k**3)
    target = rng.standard_normal((patches.shape[0], cout))

    y = patches @ w.T + b  # float64 truth
    out = np.maximum(np.maximum(y, 0) * s, 0)
    e0 = 2 * (out - target) / out.size * (y > 0) * (y * s > 0)
    truth = (e0 * y).sum(0)

    f32 = np.float32
    y32 = (tf32(patches) @ tf32(w).T).astype(f32) + b.astype(f32)
    z1 = np.maximum(y32, 0)
    z2 = z1 * s.astype(f32)
    d = (2 * (np.maximum(z2, 0) - target.astype(f32)) / z2.size).astype(f32)
    pytorch = (d * (z2 > 0) * z1).sum(0, dtype=f32)
    e0_32 = (d * (y32 > 0) * (z2 > 0)).astype(f32)
    bias_term = b.astype(f32) * e0_32.sum(0, dtype=f32)
    g_tf32 = (tf32(e0_32).T @ tf32(patches)).astype(f32)
    g_3x = (e0_32.T @ patches.astype(f32)).astype(f32)
    via = {name: (w.astype(f32) * g).sum(1, dtype=f32) + bias_term for name, g in (("tf32", g_tf32), ("3x", g_3x))}

    rel_l2 = lambda got: np.linalg.norm(got - truth) / np.linalg.norm(truth)
    worst = lambda got: np.max(np.abs(got - truth) / np.maximum(np.abs(truth), 1e-30))
    return [f(g) for g in (pytorch, via["tf32"], via["3x"]) for f in (rel_l2, worst)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="draws of each case (default 3)")
    args = parser.parse_args()
    print("Error of each channel_scale gradient against float64: relative L2 over the channels / worst channel.\n")
    print("| case | seed | PyTorch, tf32 | <W, G>, tf32 | <W, G>, 3xTF32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, shape in CASES.items():
        for seed in range(args.seeds):
            e = errors(np.random.default_rng(seed), *shape)
            cells = [f"{e[i]:.1e} / {e[i + 1]:.1e}" for i in (0, 2, 4)]
            print(f"| {name} | {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
