#!/usr/bin/env python3
"""Write the golden reference tensors that anvil's C++ tests compare against.

Every number here comes from PyTorch (CPU, float64), never from anvil. For each
network description tests/data/<case>.json the script

  1. builds the network from the JSON (the same format anvil reads),
  2. fills the input, the target and every parameter from the counter-based
     generator of engine/include/anvil/random.hpp (reimplemented below with
     64-bit integer arithmetic), with PyTorch's default distributions,
  3. runs forward, the loss (mse, l1 or smooth_l1, mean) and backward, then N
     optimizer steps (torch.optim.SGD, Adam or AdamW, single-tensor path, with an
     optional StepLR or warmup + cosine schedule); N is 3, or the case's entry
     in CASE_STEPS,
  4. writes tests/data/<case>.safetensors (float32 storage).

Tensors in a case file:
  input, target, <param>            the starting point
  output, loss [1]                  forward of the initial network
  grad.<param>, grad.input          gradients of that loss
  after<N>.<param>, losses [N]      parameters after N steps, loss of each step
  lrs [N]                           the lr of each step (only in cases that use a
                                    loss other than mse, an optimizer other than
                                    sgd, or an lr schedule; the older cases keep
                                    their exact bytes)

The dataset case (dataset_epochs) trains in shuffled minibatches for several
epochs, as `anvil train --data` does: it writes a training and a validation
dataset (dataset_epochs_train/_val.safetensors, `input` [S, ...] and `target`
[S, ...]) and the reference dataset_epochs.safetensors: the initial parameters,
the loss of every minibatch step, the validation loss after each epoch, the
final parameters, the first two epochs' sample orders, and a keep-last run
(a partial last batch). Its shuffle is epoch_order below, the twin of
engine/include/anvil/dataset.hpp.

The full-size case (kb74_full.safetensors, examples/kernelbench74.json at its
KernelBench size) stores no big tensors: the C++ side regenerates input and
target from the same generator. It holds the parameters, loss, losses, grads,
after3, output.norm, output.sum, grad.input.norm and a fixed subsample of the
output: output.index (flat indices, stored as F64, exact below 2^53) and
output.sample.

Reruns are byte-identical: tensors and header keys are written in a fixed
order, and nothing depends on the time.

Usage:
  python3 tools/make_reference.py                  # every case, then the full case
  python3 tools/make_reference.py --no-full        # small cases only
  python3 tools/make_reference.py --cases kb74_small --no-full
  python3 tools/make_reference.py --cases          # no small cases (full case only)
"""

import argparse
import json
import math
import os
import struct
import sys
import time

from needs import needs

# Without PyTorch or numpy: one line and exit 1, not a traceback. PyTorch first, the larger of the two.
with needs("PyTorch", "torch"):
    import torch
    import torch.nn.functional as F
with needs("numpy", "numpy"):
    import numpy as np

SCRIPT_NAME = "tools/make_reference.py"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = ["kb74_small", "odd_sizes", "stride1_nopad", "variant_2d", "residual_dag",
                 "adam_step", "adamw_cosine", "sgd_step_schedule", "activations", "dataset_epochs",
                 "relu_avgpool", "dcgan_2d", "stride1_block", "transposed_fan_out", "direct_stems",
                 "generated_31", "generated_53", "dag_fanout"]
FULL_SOURCE = "examples/kernelbench74.json"
FULL_CASE = "kb74_full"
STEPS = 3  # optimizer steps of a case not listed in CASE_STEPS
CASE_STEPS = {"adam_step": 5, "adamw_cosine": 5, "sgd_step_schedule": 5}
SAMPLE_COUNT = 4096
DATASET_CASE = "dataset_epochs"

# ---------------------------------------------------------------------------
# Counter-based generator (mirror of engine/include/anvil/random.hpp)
# ---------------------------------------------------------------------------

MASK64 = (1 << 64) - 1
FNV_OFFSET = 14695981039346656037
FNV_PRIME = 1099511628211
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def splitmix64(x):
    """splitmix64 finalizer on a Python int, mod 2^64."""
    z = x & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def fnv1a64(text):
    """FNV-1a 64 over the UTF-8 bytes of text."""
    h = FNV_OFFSET
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def random_stream(seed, name):
    return splitmix64((seed & MASK64) ^ fnv1a64(name))


def bits_scalar(stream, index):
    """bits(stream, i) for one index, with Python ints (the spec, verbatim)."""
    return splitmix64((stream + (index + 1) * GOLDEN) & MASK64)


def splitmix64_np(x):
    """splitmix64 on a uint64 array; numpy wraps on overflow (mod 2^64)."""
    with np.errstate(over="ignore"):
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))


def bits_np(stream, start, count):
    """bits(stream, i) for i in [start, start + count) as a uint64 array."""
    with np.errstate(over="ignore"):
        counters = np.arange(start + 1, start + count + 1, dtype=np.uint64)
        return splitmix64_np(np.uint64(stream) + counters * np.uint64(GOLDEN))


def uniform01_np(stream, count):
    """uniform01(i) = (bits >> 40) * 2^-24 for i in [0, count), as float64 (exact)."""
    return (bits_np(stream, 0, count) >> np.uint64(40)).astype(np.float64) * (2.0 ** -24)


def fill_uniform(stream, count, lo, hi):
    """float32(lo + (hi - lo) * u), the arithmetic done in float64."""
    u = uniform01_np(stream, count)
    return (lo + (hi - lo) * u).astype(np.float32)


def fill_normal(stream, count):
    """Box-Muller: float32(sqrt(-2 log(1 - u(2i))) * cos(2 pi u(2i+1))) in float64."""
    u = uniform01_np(stream, 2 * count)
    u1, u2 = u[0::2], u[1::2]
    return (np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * math.pi * u2)).astype(np.float32)


def uniform_tensor(seed, name, shape, lo, hi):
    count = math.prod(shape)
    data = fill_uniform(random_stream(seed, name), count, lo, hi)
    return torch.from_numpy(data).reshape(shape).double()


def normal_tensor(seed, name, shape):
    count = math.prod(shape)
    data = fill_normal(random_stream(seed, name), count)
    return torch.from_numpy(data).reshape(shape).double()


def check_generator():
    """Cross-check the vectorised generator against the scalar spec; print a few values."""
    stream = random_stream(0, "input")
    vector = bits_np(stream, 0, 4)
    for i in range(4):
        assert int(vector[i]) == bits_scalar(stream, i), "numpy generator disagrees with the spec"
    # Far indices exercise the 64-bit wrap of (i + 1) * GOLDEN.
    far = 5_000_000
    assert int(bits_np(stream, far, 1)[0]) == bits_scalar(stream, far)
    uni = uniform01_np(stream, 4)
    nor = fill_normal(stream, 2)
    print(f"generator: fnv1a64('input') = 0x{fnv1a64('input'):016x}")
    print(f"generator: stream(0, 'input') = 0x{stream:016x}")
    for i in range(4):
        print(f"generator:   bits[{i}] = 0x{int(vector[i]):016x}  uniform01[{i}] = {float(uni[i])!r}")
    for i in range(2):
        print(f"generator:   normal[{i}] (same stream) = {float(nor[i])!r}")


# ---------------------------------------------------------------------------
# Shuffled minibatches (mirror of engine/include/anvil/dataset.hpp)
# ---------------------------------------------------------------------------

def epoch_order(count, seed, epoch, shuffle=True):
    """The epoch's sample order: Fisher-Yates from the back with j = bits(i) % (i + 1)."""
    order = list(range(count))
    if shuffle:
        stream = random_stream(seed, f"shuffle.{epoch}")
        for i in range(count - 1, 0, -1):
            j = bits_scalar(stream, i) % (i + 1)
            order[i], order[j] = order[j], order[i]
    return order


def check_epoch_order():
    """The twin must give the orders the C++ epoch_order gives (pinned in tests/test_dataset.cpp too)."""
    from_cpp = {0: [2, 1, 9, 7, 6, 8, 0, 4, 3, 5], 1: [0, 7, 5, 2, 1, 3, 8, 6, 9, 4]}  # 10 samples, seed 5
    for epoch, want in from_cpp.items():
        got = epoch_order(10, 5, epoch)
        assert got == want, f"epoch_order(10, 5, {epoch}) = {got}, the C++ side gives {want}"
    assert epoch_order(10, 5, 0, shuffle=False) == list(range(10))


def batch_slices(count, batch, keep_last):
    """(start, stop) positions in the epoch's order of each batch: the twin of BatchPlan."""
    return [(start, min(start + batch, count)) for start in range(0, count, batch)
            if keep_last or start + batch <= count]


# ---------------------------------------------------------------------------
# Network description -> functional torch model
# ---------------------------------------------------------------------------

CONV_KEYS = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias"}
POOL_KEYS = {"kernel_size", "stride", "padding"}
LAYER_KEYS = {
    "conv2d": CONV_KEYS, "conv3d": CONV_KEYS,
    "conv_transpose2d": CONV_KEYS | {"output_padding"},
    "conv_transpose3d": CONV_KEYS | {"output_padding"},
    "max_pool2d": POOL_KEYS, "max_pool3d": POOL_KEYS,
    "avg_pool2d": POOL_KEYS, "avg_pool3d": POOL_KEYS,
    "leaky_relu": {"negative_slope"}, "relu": set(), "sigmoid": set(), "tanh": set(),
    "channel_scale": set(), "add": set(),
}
COMMON_KEYS = {"type", "name", "inputs"}


def spatial_dims(layer_type):
    return 3 if layer_type.endswith("3d") else 2


def per_dim(value, dims, key):
    """An int or a per-dimension list -> a tuple of dims ints."""
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, list) and len(value) == dims and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"{key}: expected an int or a list of {dims} ints, got {value!r}")


class Layer:
    """One layer: its name, inputs, type-specific settings and parameter names."""

    def __init__(self, spec, index, previous):
        self.type = spec["type"]
        if self.type not in LAYER_KEYS:
            raise ValueError(f"layers[{index}]: unknown type {self.type!r}")
        unknown = set(spec) - COMMON_KEYS - LAYER_KEYS[self.type]
        if unknown:
            raise ValueError(f"layers[{index}] ({self.type}): unknown keys {sorted(unknown)}")
        self.name = spec.get("name", f"{self.type}_{index}")
        self.inputs = list(spec.get("inputs", [previous]))
        self.spec = spec
        self.params = {}  # param name -> (shape, init kind, bound)


def conv_forward(layer, x, params):
    s, d = layer.spec, spatial_dims(layer.type)
    weight = params[layer.name + ".weight"]
    bias = params.get(layer.name + ".bias")
    stride = per_dim(s.get("stride", 1), d, "stride")
    padding = per_dim(s.get("padding", 0), d, "padding")
    dilation = per_dim(s.get("dilation", 1), d, "dilation")
    if layer.type.startswith("conv_transpose"):
        op = F.conv_transpose3d if d == 3 else F.conv_transpose2d
        output_padding = per_dim(s.get("output_padding", 0), d, "output_padding")
        return op(x, weight, bias, stride, padding, output_padding, 1, dilation)
    op = F.conv3d if d == 3 else F.conv2d
    return op(x, weight, bias, stride, padding, dilation, 1)


def pool_forward(layer, x):
    s, d = layer.spec, spatial_dims(layer.type)
    kernel = per_dim(s["kernel_size"], d, "kernel_size")
    stride = per_dim(s.get("stride", s["kernel_size"]), d, "stride")
    padding = per_dim(s.get("padding", 0), d, "padding")
    if layer.type.startswith("max_pool"):
        op = F.max_pool3d if d == 3 else F.max_pool2d
        return op(x, kernel, stride, padding, 1, ceil_mode=False)
    op = F.avg_pool3d if d == 3 else F.avg_pool2d
    return op(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True)


def layer_forward(layer, xs, params):
    t = layer.type
    if t.startswith("conv"):
        return conv_forward(layer, xs[0], params)
    if "pool" in t:
        return pool_forward(layer, xs[0])
    if t == "leaky_relu":
        return F.leaky_relu(xs[0], layer.spec.get("negative_slope", 0.01))
    if t == "relu":
        return F.relu(xs[0])
    if t == "sigmoid":
        return torch.sigmoid(xs[0])
    if t == "tanh":
        return torch.tanh(xs[0])
    if t == "channel_scale":
        return xs[0] * params[layer.name]
    if t == "add":
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out
    raise AssertionError(t)


def declare_params(layer, in_shape):
    """Record the parameter shapes and init of one layer, given its first input's shape."""
    s, t = layer.spec, layer.type
    if t.startswith("conv"):
        d = spatial_dims(t)
        if in_shape[1] != s["in_channels"]:
            raise ValueError(f"{layer.name}: in_channels {s['in_channels']} but input has {in_shape[1]}")
        kernel = per_dim(s["kernel_size"], d, "kernel_size")
        if t.startswith("conv_transpose"):
            wshape = (s["in_channels"], s["out_channels"]) + kernel
        else:
            wshape = (s["out_channels"], s["in_channels"]) + kernel
        fan_in = wshape[1] * math.prod(kernel)  # PyTorch: weight.size(1) * receptive field
        bound = 1.0 / math.sqrt(fan_in)
        layer.params[layer.name + ".weight"] = (wshape, "uniform", bound)
        if s.get("bias", True):
            layer.params[layer.name + ".bias"] = ((s["out_channels"],), "uniform", bound)
    elif t == "channel_scale":
        layer.params[layer.name] = ((in_shape[1],) + (1,) * (len(in_shape) - 2), "normal", None)


class Network:
    """A network description: layers in order, parameter declarations, shapes."""

    def __init__(self, desc):
        self.name = desc["name"]
        self.input_shape = tuple(desc["input"])
        self.seed = int(desc.get("seed", 0))
        self.loss = loss_settings(desc.get("loss", "mse"))
        opt = desc.get("optimizer", {"type": "sgd", "lr": 0.01})
        self.optimizer_type = opt.get("type", "sgd")
        self.optimizer = optimizer_settings(opt)
        self.schedule = schedule_settings(opt.get("lr_schedule"))
        self.layers = []
        previous = "input"
        for index, spec in enumerate(desc["layers"]):
            layer = Layer(spec, index, previous)
            self.layers.append(layer)
            previous = layer.name
        self.output_shape = self._infer_shapes()

    def _infer_shapes(self):
        """Declare parameters and find the output shape on the meta device."""
        values = {"input": torch.empty(self.input_shape, dtype=torch.float64, device="meta")}
        for layer in self.layers:
            if layer.name in values:
                raise ValueError(f"duplicate tensor name {layer.name!r}")
            missing = [n for n in layer.inputs if n not in values]
            if missing:
                raise ValueError(f"{layer.name}: unknown inputs {missing}")
            xs = [values[n] for n in layer.inputs]
            declare_params(layer, tuple(xs[0].shape))
            meta = {n: torch.empty(shape, dtype=torch.float64, device="meta")
                    for n, (shape, _, _) in layer.params.items()}
            values[layer.name] = layer_forward(layer, xs, meta)
        return tuple(values[self.layers[-1].name].shape)

    def param_specs(self):
        """(name, shape, kind, bound) in layer order, weight before bias."""
        return [(n, shape, kind, bound) for layer in self.layers
                for n, (shape, kind, bound) in layer.params.items()]

    def initial_params(self):
        params = {}
        for name, shape, kind, bound in self.param_specs():
            if kind == "uniform":
                params[name] = uniform_tensor(self.seed, name, shape, -bound, bound)
            else:
                params[name] = normal_tensor(self.seed, name, shape)
        return params

    def forward(self, x, params):
        values = {"input": x}
        for layer in self.layers:
            values[layer.name] = layer_forward(layer, [values[n] for n in layer.inputs], params)
        return values[self.layers[-1].name]


LOSS_FUNCTIONS = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


def loss_settings(spec):
    """"mse" | "l1" | "smooth_l1", or {"type": ..., "beta": ...} (beta: smooth_l1 only, default 1)."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.pop("type", None)
    if kind not in LOSS_FUNCTIONS:
        raise ValueError(f"loss {kind!r}: expected one of {sorted(LOSS_FUNCTIONS)}")
    settings = {"type": kind}
    if kind == "smooth_l1":
        settings["beta"] = float(spec.pop("beta", 1.0))
    if spec:
        raise ValueError(f"loss {kind}: unknown keys {sorted(spec)}")
    return settings


def compute_loss(settings, out, target):
    extra = {"beta": settings["beta"]} if "beta" in settings else {}
    return LOSS_FUNCTIONS[settings["type"]](out, target, **extra)


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def optimizer_settings(opt):
    """The keyword arguments of the torch optimizer, with torch's defaults."""
    kind = opt.get("type", "sgd")
    if kind == "sgd":
        return {
            "lr": float(opt["lr"]),
            "momentum": float(opt.get("momentum", 0.0)),
            "dampening": float(opt.get("dampening", 0.0)),
            "weight_decay": float(opt.get("weight_decay", 0.0)),
            "nesterov": bool(opt.get("nesterov", False)),
        }
    if kind in ("adam", "adamw"):
        beta1, beta2 = opt.get("betas", [0.9, 0.999])
        return {
            "lr": float(opt.get("lr", 1e-3)),
            "betas": (float(beta1), float(beta2)),
            "eps": float(opt.get("eps", 1e-8)),
            "weight_decay": float(opt.get("weight_decay", 0.0 if kind == "adam" else 0.01)),
        }
    raise ValueError(f"optimizer {kind!r}: expected one of {sorted(OPTIMIZERS)}")


def schedule_settings(spec):
    """None (constant lr), {"type": "step", ...} or {"type": "cosine", ...}, with defaults filled in."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "step":
        settings = {"type": "step", "step_size": int(spec.get("step_size", 1)), "gamma": float(spec.get("gamma", 0.1))}
        if settings["step_size"] < 1:
            raise ValueError("lr_schedule step: step_size must be >= 1")
        return settings
    if kind == "cosine":
        settings = {"type": "cosine", "warmup_steps": int(spec.get("warmup_steps", 0)),
                    "total_steps": int(spec["total_steps"]), "min_lr": float(spec.get("min_lr", 0.0))}
        warmup = settings["warmup_steps"]
        # LinearLR cannot express a 1-step warmup (total_iters would be 0).
        if warmup == 1 or warmup < 0 or settings["total_steps"] - warmup < 1:
            raise ValueError("lr_schedule cosine: need warmup_steps 0 or >= 2, and total_steps > warmup_steps")
        return settings
    raise ValueError(f"lr_schedule {kind!r}: expected 'step' or 'cosine'")


def scheduled_lr(base_lr, schedule, t):
    """The lr of 0-based step t: the twin of scheduled_lr in kernels/optimizer_math.hpp."""
    if schedule is None:
        return base_lr
    if schedule["type"] == "step":
        return base_lr * schedule["gamma"] ** (t // schedule["step_size"])
    warmup, min_lr = schedule["warmup_steps"], schedule["min_lr"]
    if t < warmup:
        return base_lr * (t + 1) / warmup
    period = schedule["total_steps"] - warmup
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / period)) / 2


def make_scheduler(opt, schedule):
    """The torch scheduler that scheduled_lr describes (None for a constant lr)."""
    sched = torch.optim.lr_scheduler
    if schedule is None:
        return None
    if schedule["type"] == "step":
        return sched.StepLR(opt, step_size=schedule["step_size"], gamma=schedule["gamma"])
    warmup = schedule["warmup_steps"]
    cosine = sched.CosineAnnealingLR(opt, T_max=schedule["total_steps"] - warmup, eta_min=schedule["min_lr"])
    if warmup == 0:
        return cosine
    linear = sched.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return sched.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def uses_extensions(net):
    """Whether the case needs more than mse and constant-lr SGD (then it stores lrs and their metadata)."""
    return net.loss["type"] != "mse" or net.optimizer_type != "sgd" or net.schedule is not None


# ---------------------------------------------------------------------------
# Reference computation
# ---------------------------------------------------------------------------

def log(message):
    print(message, flush=True)


def run_reference(net, steps, progress=False):
    """Initial forward/backward, then `steps` optimizer steps. Returns a dict of float64 tensors."""
    t0 = time.time()
    x = uniform_tensor(net.seed, "input", net.input_shape, 0.0, 1.0)
    target = uniform_tensor(net.seed, "target", net.output_shape, 0.0, 1.0)
    init = net.initial_params()
    if progress:
        log(f"  generated input {list(x.shape)} and target {list(target.shape)} in {time.time() - t0:.1f}s")
    params = {n: p.clone().requires_grad_(True) for n, p in init.items()}
    opt = OPTIMIZERS[net.optimizer_type](list(params.values()), foreach=False, **net.optimizer)
    scheduler = make_scheduler(opt, net.schedule)
    result = {"input": x, "target": target}
    result.update(init)
    losses, lrs = [], []
    for step in range(steps):
        t = time.time()
        opt.zero_grad(set_to_none=True)
        first = step == 0
        xin = x.clone().requires_grad_(True) if first else x  # input grad only from step 1
        out = net.forward(xin, params)
        loss = compute_loss(net.loss, out, target)
        loss.backward()
        losses.append(loss.item())
        lrs.append(checked_lr(opt, net, step))
        if first:
            record_first_step(result, out.detach(), loss.detach(), xin.grad, params)
        del out, loss, xin
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if progress:
            log(f"  step {step + 1}/{steps}: loss {losses[-1]:.9g} ({time.time() - t:.1f}s)")
    for n, p in params.items():
        result[f"after{steps}." + n] = p.detach().clone()
    result["losses"] = torch.tensor(losses, dtype=torch.float64)
    result["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    return result


def checked_lr(opt, net, step):
    """The lr torch uses for this step; it must be scheduled_lr's (anvil's schedules are its closed forms)."""
    lr = opt.param_groups[0]["lr"]
    want = scheduled_lr(net.optimizer["lr"], net.schedule, step)
    if abs(lr - want) > 1e-12 * abs(want) + 1e-15 * net.optimizer["lr"]:  # the floor: for a zero lr
        raise AssertionError(f"step {step}: torch's lr {lr!r} but scheduled_lr gives {want!r} ({net.schedule})")
    return lr


def record_first_step(result, out, loss, grad_input, params):
    result["output"] = out
    result["loss"] = loss.reshape(1)
    result["grad.input"] = grad_input
    for n, p in params.items():
        result["grad." + n] = p.grad.detach().clone()


def metadata(net, case, source, steps):
    meta = {
        "case": case,
        "source": source,
        "seed": str(net.seed),
        "torch_version": torch.__version__,
        "dtype": "float64 computed, float32 stored",
        "script": SCRIPT_NAME,
        "loss": f"{net.loss['type']} (mean)",
        "steps": str(steps),
        "optimizer": f"{net.optimizer_type} (torch.optim.{OPTIMIZERS[net.optimizer_type].__name__})",
        "generator": "engine/include/anvil/random.hpp",
    }
    for key, value in net.optimizer.items():
        meta["optimizer." + key] = metadata_value(value)
    if "beta" in net.loss:
        meta["loss.beta"] = repr(net.loss["beta"])
    if net.schedule is not None:
        meta["lr_schedule"] = {"step": "step (torch StepLR)",
                               "cosine": "cosine (torch LinearLR warmup, then CosineAnnealingLR)"}[net.schedule["type"]]
        for key, value in net.schedule.items():
            if key != "type":
                meta["lr_schedule." + key] = metadata_value(value)
    return meta


def metadata_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


# ---------------------------------------------------------------------------
# safetensors writer (deterministic: sorted keys, fixed tensor order)
# ---------------------------------------------------------------------------

def to_numpy(tensor, dtype):
    return tensor.detach().cpu().contiguous().numpy().astype(dtype, copy=False)


def write_safetensors(path, tensors, meta):
    """tensors: name -> (numpy array, "F32" | "F64"). 8-byte types are placed first."""
    itemsize = {"F32": 4, "F64": 8}
    order = sorted(tensors, key=lambda n: (-itemsize[tensors[n][1]], n))
    header = {"__metadata__": dict(sorted(meta.items()))}
    offset, blobs = 0, []
    for name in order:
        array, dtype = tensors[name]
        raw = np.ascontiguousarray(array, dtype="<f4" if dtype == "F32" else "<f8").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)
    shown = os.path.relpath(path, REPO_ROOT) if os.path.abspath(path).startswith(REPO_ROOT + os.sep) else path
    log(f"wrote {shown}: {os.path.getsize(path)} bytes, {len(order)} tensors")


def f32(tensors, names, result):
    for n in names:
        tensors[n] = (to_numpy(result[n], np.float32), "F32")


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def load_network(path):
    with open(path, encoding="utf-8") as f:
        return Network(json.load(f))


def make_case(case, data_dir, out_dir):
    source = os.path.join(data_dir, case + ".json")
    net = load_network(source)
    steps = CASE_STEPS.get(case, STEPS)
    t = time.time()
    result = run_reference(net, steps)
    names = [n for n, *_ in net.param_specs()]
    keys = ["input", "target", "output", "loss", "losses", "grad.input"]
    keys += names + ["grad." + n for n in names] + [f"after{steps}." + n for n in names]
    if uses_extensions(net):
        keys.append("lrs")
    tensors = {}
    f32(tensors, keys, result)
    losses = ", ".join(f"{v:.9g}" for v in result["losses"].tolist())
    log(f"{case}: output {list(net.output_shape)}, losses [{losses}] ({time.time() - t:.2f}s)")
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors,
                      metadata(net, case, os.path.relpath(source, REPO_ROOT), steps))


# The dataset case: (samples, input stream, target stream) of each split, the
# batch and epoch count of the main run and of the keep-last run.
DATASET_SPLITS = {"train": (256, "dataset.input", "dataset.target"),
                  "val": (64, "dataset.val_input", "dataset.val_target")}
DATASET_EPOCHS = 3
KEEP_LAST_BATCH, KEEP_LAST_EPOCHS = 48, 2
SHUFFLE_RULE = ("epoch_order(S, seed, epoch): Fisher-Yates from the identity, i = S-1 down to 1, "
                "j = bits(stream(seed, 'shuffle.<epoch>'), i) % (i + 1), swap (engine/include/anvil/dataset.hpp)")


def dataset_split(net, split):
    """input [S, sample shape] and target [S, output sample shape], uniform [0, 1) from the split's streams."""
    count, input_stream, target_stream = DATASET_SPLITS[split]
    x = uniform_tensor(net.seed, input_stream, (count,) + net.input_shape[1:], 0.0, 1.0)
    target = uniform_tensor(net.seed, target_stream, (count,) + net.output_shape[1:], 0.0, 1.0)
    return x, target


def train_minibatches(net, init, train, batch, epochs, keep_last, val=None):
    """One optimizer step per minibatch of each epoch's shuffled order. Returns the
    loss of every step (before its update), the validation loss after each epoch
    (the mean over all validation elements) and the final parameters."""
    x, target = train
    params = {n: p.clone().requires_grad_(True) for n, p in init.items()}
    opt = OPTIMIZERS[net.optimizer_type](list(params.values()), foreach=False, **net.optimizer)
    scheduler = make_scheduler(opt, net.schedule)
    losses, val_losses = [], []
    for epoch in range(epochs):
        order = torch.tensor(epoch_order(x.shape[0], net.seed, epoch))
        for start, stop in batch_slices(x.shape[0], batch, keep_last):
            samples = order[start:stop]
            opt.zero_grad(set_to_none=True)
            loss = compute_loss(net.loss, net.forward(x[samples], params), target[samples])
            loss.backward()
            losses.append(loss.item())
            opt.step()
            if scheduler is not None:
                scheduler.step()
        if val is not None:
            with torch.no_grad():
                val_losses.append(compute_loss(net.loss, net.forward(val[0], params), val[1]).item())
    after = {n: p.detach().clone() for n, p in params.items()}
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(val_losses, dtype=torch.float64), after


def make_dataset_case(case, data_dir, out_dir):
    source = os.path.join(data_dir, case + ".json")
    net = load_network(source)
    batch = net.input_shape[0]
    splits = {split: dataset_split(net, split) for split in DATASET_SPLITS}
    for split, (x, target) in splits.items():
        count, input_stream, target_stream = DATASET_SPLITS[split]
        meta = {"case": case, "source": os.path.relpath(source, REPO_ROOT), "seed": str(net.seed),
                "samples": str(count), "script": SCRIPT_NAME, "generator": "engine/include/anvil/random.hpp",
                "input": f"uniform [0, 1) from stream(seed, '{input_stream}')",
                "target": f"uniform [0, 1) from stream(seed, '{target_stream}')"}
        write_safetensors(os.path.join(out_dir, f"{case}_{split}.safetensors"),
                          {"input": (to_numpy(x, np.float32), "F32"), "target": (to_numpy(target, np.float32), "F32")},
                          meta)

    t = time.time()
    train, val = splits["train"], splits["val"]
    count = train[0].shape[0]
    init = net.initial_params()
    losses, val_losses, after = train_minibatches(net, init, train, batch, DATASET_EPOCHS, False, val)
    keep_losses, _, keep_after = train_minibatches(net, init, train, KEEP_LAST_BATCH, KEEP_LAST_EPOCHS, True)
    result = {"losses": losses, "val_losses": val_losses, "keep_last.losses": keep_losses}
    result.update(init)
    result.update({"after." + n: p for n, p in after.items()})
    result.update({"keep_last.after." + n: p for n, p in keep_after.items()})
    tensors = {}
    f32(tensors, list(result), result)
    for epoch in range(2):  # indices below 2^24 stay exact through the reader's float32
        tensors[f"order.{epoch}"] = (np.array(epoch_order(count, net.seed, epoch), np.float64), "F64")

    meta = metadata(net, case, os.path.relpath(source, REPO_ROOT), len(losses))
    meta.update({
        "batch": str(batch), "epochs": str(DATASET_EPOCHS), "shuffle": SHUFFLE_RULE,
        "train_data": f"{case}_train.safetensors", "val_data": f"{case}_val.safetensors",
        "losses": "the loss of each minibatch step before its update, epoch by epoch, batches in order "
                  "(positions [b*batch, (b+1)*batch) of the epoch's order); the last partial batch is dropped",
        "val_losses": "after each epoch, the loss over the whole validation set: the mean over all its elements "
                      "(batch means weighted by element count when evaluated in batches)",
        "order": "order.<epoch>: epoch_order(train samples, seed, epoch) as F64",
        "keep_last": f"batch {KEEP_LAST_BATCH}, {KEEP_LAST_EPOCHS} epochs, the last partial batch kept "
                     f"(its loss the mean over its own samples); fresh optimizer from the same initial parameters",
        "keep_last.batch": str(KEEP_LAST_BATCH), "keep_last.epochs": str(KEEP_LAST_EPOCHS),
    })
    log(f"{case}: {len(losses)} steps, val_losses [{', '.join(f'{v:.9g}' for v in val_losses.tolist())}], "
        f"keep_last {len(keep_losses)} steps ({time.time() - t:.2f}s)")
    write_safetensors(os.path.join(out_dir, case + ".safetensors"), tensors, meta)


def sample_indices(seed, numel):
    """The first SAMPLE_COUNT values of bits(stream(seed, "sample"), i) % numel."""
    bits = bits_np(random_stream(seed, "sample"), 0, SAMPLE_COUNT)
    return (bits % np.uint64(numel)).astype(np.int64)


def make_full(out_dir):
    source = os.path.join(REPO_ROOT, FULL_SOURCE)
    net = load_network(source)
    log(f"{FULL_CASE}: {FULL_SOURCE}, input {list(net.input_shape)}, output {list(net.output_shape)}, "
        f"float64 on {torch.get_num_threads()} threads")
    t = time.time()
    result = run_reference(net, STEPS, progress=True)
    out = result["output"].reshape(-1)
    index = sample_indices(net.seed, out.numel())
    names = [n for n, *_ in net.param_specs()]
    tensors = {}
    f32(tensors, ["loss", "losses"] + names + ["grad." + n for n in names] + [f"after{STEPS}." + n for n in names],
        result)
    tensors["output.norm"] = (np.array([torch.linalg.vector_norm(out).item()], np.float32), "F32")
    tensors["output.sum"] = (np.array([out.sum().item()], np.float32), "F32")
    tensors["output.index"] = (index.astype(np.float64), "F64")
    tensors["output.sample"] = (to_numpy(out[torch.from_numpy(index)], np.float32), "F32")
    grad_norm = torch.linalg.vector_norm(result["grad.input"]).item()
    tensors["grad.input.norm"] = (np.array([grad_norm], np.float32), "F32")
    meta = metadata(net, FULL_CASE, FULL_SOURCE, STEPS)
    meta["note"] = ("input, target and output are not stored: regenerate input and target with the "
                    "generator (streams 'input' and 'target', uniform [0,1)); output.index holds flat "
                    "indices as F64, the first 4096 of bits(stream(seed,'sample'), i) % numel")
    losses = ", ".join(f"{v:.9g}" for v in result["losses"].tolist())
    log(f"{FULL_CASE}: losses [{losses}], output.norm {float(tensors['output.norm'][0][0])!r}, "
        f"output.sum {float(tensors['output.sum'][0][0])!r}")
    write_safetensors(os.path.join(out_dir, FULL_CASE + ".safetensors"), tensors, meta)
    log(f"{FULL_CASE}: total {time.time() - t:.1f}s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES,
                        help="case names in tests/data (default: all of DEFAULT_CASES); give none to skip them")
    parser.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "tests", "data"),
                        help="where to write the .safetensors files (default: tests/data)")
    parser.add_argument("--data-dir", default=os.path.join(REPO_ROOT, "tests", "data"),
                        help="where the case .json files are (default: tests/data)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size kb74_full case")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    check_generator()
    check_epoch_order()
    for case in args.cases:
        (make_dataset_case if case == DATASET_CASE else make_case)(case, args.data_dir, args.out_dir)
    if not args.no_full:
        make_full(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
