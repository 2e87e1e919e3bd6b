#!/usr/bin/env python3
"""Benchmark anvil against PyTorch eager and torch.compile on the headline network (or a suite).

One process, one GPU. The network is examples/kernelbench74.json (KernelBench
level 2 problem 74): ConvTranspose3d -> leaky_relu -> x * multiplier ->
leaky_relu -> max_pool3d. PyTorch runs an nn.Module equivalent whose parameters
are copied from the seeded generator that anvil uses (tools/make_reference.py),
so both sides start from the same input, target and parameters.

Steps, in order:

  1. Parity, before any timing. For each precision (fp32: no TF32 anywhere;
     tf32: TF32 convolutions, PyTorch's default) run `anvil run` and
     `anvil train --steps 1 --dump-grads` on the full-size network and compare
     the output and every parameter gradient with PyTorch float32 on the GPU
     (relative L2 error). Bounds: 1e-4 (fp32), 2e-2 (tf32); beyond them the
     script prints FAILED and exits 1 without timing anything. These are sanity
     bounds; the float64 parity tests are the GoogleTest suites. It also prints
     PyTorch's own error on the network-input gradient of tests/data/kb74_small
     against its float64 reference, with cudnn.benchmark off and on (the algorithm
     cuDNN picks decides whether that conv uses TF32), and anvil's when its CLI
     can dump that gradient.
  2. Timing, for precision in (fp32, tf32) and measure in
       forward     inference forward (torch.no_grad), anvil --mode forward
       fwd+bwd     zero_grad(set_to_none) + forward + mse_loss + backward, anvil --mode fwdbwd
       train step  fwd+bwd + torch.optim.SGD step (the network's settings), anvil --mode train
     of PyTorch eager, torch.compile (mode "default"; the forward, resp.
     forward + loss, is compiled; the optimizer step stays eager) and anvil
     (`anvil bench --json`, CUDA graph and fusion on). PyTorch is timed with a
     CUDA event pair around each of --iters back-to-back iterations after
     --warmup iterations, cudnn.benchmark on. Peak device memory is
     torch.cuda.max_memory_allocated over the timed loop, counting the
     parameters, input, target, gradients and optimizer state of that
     configuration only; anvil's is its arena (arena_bytes).
  3. The device-to-device copy bandwidth (1 GiB, bytes read + written) and the
     floors: conv FLOPs from the shapes and the time to move the bytes each
     measure must move at that bandwidth.
  4. A table on stdout, bench/RESULTS.md (everything above a hand-kept
     "## Optimisation log" section is rewritten; that section is kept verbatim)
     and the raw numbers in bench/results.json.

Exit status: 0 when parity passed and every anvil run succeeded (missed
performance targets are reported, not failures), 1 otherwise.

With --suite [DIR] (default bench/suite) the same machinery runs on every
network JSON of DIR instead: the PyTorch model is built from the JSON itself
(JsonModel: make_reference.py's layers over nn.Parameters named as anvil names
them; the loss and optimizer are the network's), parity (step 1 above, without
the kb74_small figures) comes first for each network, a network out of bounds
is not timed, and the timing is forward and train step in fp32 and tf32 of
eager, torch.compile and anvil. It writes bench/SUITE.md (one row per network,
precision and measure; rows where anvil is slower than torch.compile are marked
BELOW 1.0x) and bench/suite_results.json. Exit status 1 when a network fails
parity or an anvil run fails.

Usage (from the repository root, on the GPU machine):
  python3 tools/bench_vs_torch.py [--anvil build/anvil] [--network examples/kernelbench74.json]
                                  [--iters 50] [--warmup 10] [--skip-compile] [--out bench/RESULTS.md]
  python3 tools/bench_vs_torch.py --suite [bench/suite] [--iters 50] [--warmup 10] [--skip-compile]
                                  [--out bench/SUITE.md] [--only NAME,... --out FILE]
"""

import argparse
import datetime
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from needs import needs  # noqa: E402

# Without PyTorch or safetensors (or numpy: make_reference's check): one line naming the script that was
# run and exit 1, not a traceback (torch_kernels.py and kernel_bandwidth.py import this module, and so
# get the same line).
with needs("PyTorch", "torch"):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
with needs("safetensors", "safetensors.torch"):
    from safetensors.torch import load_file
from make_reference import OPTIMIZERS, compute_loss, load_network, uniform_tensor  # noqa: E402

PRECISIONS = ("fp32", "tf32")
MEASURES = ("forward", "fwdbwd", "train")
MEASURE_LABEL = {"forward": "forward", "fwdbwd": "fwd+bwd", "train": "train step"}
IMPLS = ("eager", "compile", "anvil")
PARITY_BOUND = {"fp32": 1e-4, "tf32": 2e-2}
HEADLINE_TYPES = ["conv_transpose3d", "leaky_relu", "channel_scale", "leaky_relu", "max_pool3d"]
HEADLINE_PARAMS = {"conv_transpose.weight", "conv_transpose.bias", "multiplier"}
SMALL_CASE = os.path.join(REPO_ROOT, "tests", "data", "kb74_small")
SUITE_DIR = os.path.join(REPO_ROOT, "bench", "suite")
SUITE_MEASURES = ("forward", "train")
LOG_HEADING = "## Optimisation log"
ANVIL_TIMEOUT_S = 300
COPY_BYTES = 1 << 30
FLOAT_BYTES = 4
MIB = float(1 << 20)


def log(message=""):
    print(message, flush=True)


def shown(path):
    """A path relative to the repository root when it lies inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


# ---------------------------------------------------------------------------
# PyTorch side: precision flags, the model, the generated data
# ---------------------------------------------------------------------------

def set_precision(precision):
    """fp32: no TF32 at all; tf32: PyTorch's default (TF32 convs, IEEE matmuls)."""
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False


class KB74(nn.Module):
    """The headline network as KernelBench writes it, sized by the network JSON."""

    def __init__(self, net):
        super().__init__()
        types = [layer.type for layer in net.layers]
        if types != HEADLINE_TYPES:
            raise SystemExit(f"{net.name}: layer types {types}, expected the headline's {HEADLINE_TYPES}")
        conv, act1, _, act2, pool = (layer.spec for layer in net.layers)
        conv_args = {k: v for k, v in conv.items() if k not in ("type", "name", "inputs")}
        self.conv_transpose = nn.ConvTranspose3d(**conv_args)
        self.multiplier = nn.Parameter(torch.empty(conv["out_channels"], 1, 1, 1))
        self.slope1 = act1.get("negative_slope", 0.01)
        self.slope2 = act2.get("negative_slope", 0.01)
        self.max_pool = nn.MaxPool3d(pool["kernel_size"], pool.get("stride"), pool.get("padding", 0))

    def forward(self, x):
        x = self.conv_transpose(x)
        x = F.leaky_relu(x, self.slope1)
        x = x * self.multiplier
        x = F.leaky_relu(x, self.slope2)
        return self.max_pool(x)


class JsonModel(nn.Module):
    """Any anvil network as an nn.Module: make_reference.py's Network.forward over nn.Parameters.

    Each parameter sits where its anvil name puts it ("block.conv.weight" is the attribute
    weight of the submodule conv of the submodule block; a channel_scale "gain" is an attribute
    of the model), so state_dict names are anvil's parameter names.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        for name, shape, *_ in net.param_specs():
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(torch.empty(shape)))

    def forward(self, x):
        return self.net.forward(x, dict(self.named_parameters()))


class Data:
    """Input, target and initial parameters from anvil's seeded generator (CPU, float32)."""

    def __init__(self, net):
        self.x = uniform_tensor(net.seed, "input", net.input_shape, 0.0, 1.0).float()
        self.target = uniform_tensor(net.seed, "target", net.output_shape, 0.0, 1.0).float()
        self.params = {name: p.float() for name, p in net.initial_params().items()}


class Case:
    """One network to compare: its JSON file, the parsed network, its data and the PyTorch module to build."""

    def __init__(self, path, module_class):
        self.path = path
        self.net = load_network(path)
        self.module_class = module_class
        self.data = Data(self.net)

    def model(self):
        """A fresh module on the GPU holding the initial parameters."""
        model = self.module_class(self.net)
        model.load_state_dict(self.data.params, strict=True)
        return model.cuda()

    def loss(self, out, target):
        return compute_loss(self.net.loss, out, target)

    def optimizer(self, model):
        """The network's optimizer at its base lr (an lr_schedule is not applied to the timed steps)."""
        return OPTIMIZERS[self.net.optimizer_type](model.parameters(), **self.net.optimizer)


def headline_case(path):
    """The headline network, as the KB74 module; refuses a file that is not the headline's shape."""
    net = load_network(path)
    names = {name for name, *_ in net.param_specs()}
    if names != HEADLINE_PARAMS:
        raise SystemExit(f"{net.name}: parameters {sorted(names)}, expected {sorted(HEADLINE_PARAMS)}")
    KB74(net)  # checks the layer types before the data is generated
    return Case(path, KB74)


def release_memory():
    gc.collect()
    torch.cuda.empty_cache()


def rel_err(value, reference):
    """||value - reference|| / ||reference||, in float64."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    if value.shape != reference.shape:
        raise ValueError(f"shape {list(value.shape)} != reference {list(reference.shape)}")
    return (torch.linalg.vector_norm(value - reference) / torch.linalg.vector_norm(reference)).item()


def cudnn_version_string(version):
    """cuDNN's integer version (e.g. 91900) as 9.19.0."""
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


# ---------------------------------------------------------------------------
# anvil side: the CLI in a subprocess
# ---------------------------------------------------------------------------

class AnvilError(RuntimeError):
    pass


def run_anvil(cmd):
    """Runs the anvil CLI; raises AnvilError with the tail of its output on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ANVIL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AnvilError(f"{' '.join(cmd)}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        raise AnvilError(f"{' '.join(cmd)}: exit {proc.returncode}\n    " + "\n    ".join(tail))
    return proc.stdout


def network_copy(net_path, precision, workdir):
    """The network JSON with "precision" set, written into workdir."""
    with open(net_path, encoding="utf-8") as f:
        desc = json.load(f)
    desc["precision"] = precision
    path = os.path.join(workdir, f"{os.path.splitext(os.path.basename(net_path))[0]}_{precision}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(desc, f, indent=1)
    return path


def anvil_outputs(args, net_path, precision, workdir):
    """anvil's forward output and its step-1 gradients (by parameter name) at one precision."""
    cfg = network_copy(net_path, precision, workdir)
    y_path = os.path.join(workdir, f"output_{precision}.safetensors")
    g_path = os.path.join(workdir, f"grads_{precision}.safetensors")
    run_anvil([args.anvil, "run", cfg, "--device", "cuda", "--output", y_path] + args.anvil_flags)
    run_anvil([args.anvil, "train", cfg, "--device", "cuda", "--steps", "1", "--dump-grads", g_path] +
              args.anvil_flags)
    return load_file(y_path)["output"], load_file(g_path)


def anvil_small_input_grad(anvil, precision, workdir):
    """anvil's kb74_small input gradient, or None with the reason when its CLI cannot dump one.

    Assumes the CLI interface `anvil train ... --input-grad`, which adds "grad.input"
    to the --dump-grads file; without that flag there is no figure.
    """
    try:
        usage = run_anvil([anvil, "train", "--help"])
    except AnvilError as e:
        return None, str(e).splitlines()[0]
    if "--input-grad" not in usage:
        return None, "anvil train has no --input-grad flag"
    cfg = network_copy(SMALL_CASE + ".json", precision, workdir)
    ref = SMALL_CASE + ".safetensors"
    g_path = os.path.join(workdir, f"small_grads_{precision}.safetensors")
    try:
        run_anvil([anvil, "train", cfg, "--device", "cuda", "--steps", "1", "--data", ref, "--weights", ref,
                   "--input-grad", "--dump-grads", g_path])
    except AnvilError as e:
        return None, str(e).splitlines()[0]
    grads = load_file(g_path)
    if "grad.input" not in grads:
        return None, f"{shown(g_path)} holds no 'grad.input'"
    return grads["grad.input"], None


# ---------------------------------------------------------------------------
# 1. Parity
# ---------------------------------------------------------------------------

def torch_outputs(case, precision):
    """PyTorch float32 on the GPU: the forward output and the gradients of the network's loss."""
    set_precision(precision)
    model = case.model()
    out = model(case.data.x.cuda())
    case.loss(out, case.data.target.cuda()).backward()
    grads = {name: p.grad.cpu() for name, p in model.named_parameters()}
    result = out.detach().cpu(), grads
    del model, out
    release_memory()
    return result


def parity_full(args, case, workdir):
    """Relative errors of anvil vs PyTorch float32 per precision; also returns whether all are in bounds."""
    errors, ok = {}, True
    for precision in PRECISIONS:
        ref_out, ref_grads = torch_outputs(case, precision)
        out, grads = anvil_outputs(args, case.path, precision, workdir)
        errs = {"output": rel_err(out, ref_out)}
        for name, ref in ref_grads.items():
            if name not in grads:
                raise AnvilError(f"anvil's gradient dump has no '{name}' (it has {sorted(grads)})")
            errs["grad." + name] = rel_err(grads[name], ref)
        bound = PARITY_BOUND[precision]
        for name, err in errs.items():
            verdict = "ok" if err <= bound else "OUT OF BOUND"
            ok = ok and err <= bound
            log(f"  {precision}  {name:<28} rel L2 {err:.3e}  (bound {bound:.0e})  {verdict}")
        errors[precision] = errs
    return errors, ok


def torch_small_input_grad(net, ref, precision, benchmark):
    """PyTorch float32 GPU input gradient of kb74_small; its error vs the float64 reference."""
    set_precision(precision)
    torch.backends.cudnn.benchmark = benchmark
    try:
        x = ref["input"].cuda().requires_grad_(True)
        params = {name: ref[name].cuda().requires_grad_(True) for name, *_ in net.param_specs()}
        F.mse_loss(net.forward(x, params), ref["target"].cuda()).backward()
        return rel_err(x.grad, ref["grad.input"])
    finally:
        torch.backends.cudnn.benchmark = True


def parity_small_input_grad(args, workdir):
    """kb74_small input-gradient errors vs the float64 reference: PyTorch (cuDNN's heuristic algorithm
    choice and cudnn.benchmark's, which can differ in whether TF32 is used) and anvil if available."""
    net = load_network(SMALL_CASE + ".json")
    ref = load_file(SMALL_CASE + ".safetensors")
    result = {}
    for precision in PRECISIONS:
        heuristic = torch_small_input_grad(net, ref, precision, benchmark=False)
        benchmarked = torch_small_input_grad(net, ref, precision, benchmark=True)
        anvil_grad, why = anvil_small_input_grad(args.anvil, precision, workdir)
        anvil_err = None if anvil_grad is None else rel_err(anvil_grad, ref["grad.input"])
        result[precision] = {"torch_heuristic": heuristic, "torch_benchmark": benchmarked,
                             "anvil": anvil_err, "anvil_note": why}
        anvil_text = f"{anvil_err:.3e}" if anvil_err is not None else f"n/a ({why})"
        log(f"  kb74_small grad.input vs float64, {precision}: PyTorch {heuristic:.3e} (cudnn.benchmark off), "
            f"{benchmarked:.3e} (on); anvil {anvil_text}")
    return result


# ---------------------------------------------------------------------------
# 2. Timing
# ---------------------------------------------------------------------------

def summarize(ms):
    ordered = sorted(ms)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"min": ordered[0], "median": statistics.median(ordered), "mean": statistics.fmean(ordered),
            "p99": p99, "max": ordered[-1]}


def cuda_time(step, iters, warmup):
    """First-call seconds, then warmup, then per-iteration CUDA-event times and the peak memory."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    ms = [start.elapsed_time(end) for start, end in events]
    return {"ms": summarize(ms), "peak_bytes": torch.cuda.max_memory_allocated(), "first_call_s": first_s}


GPU_TIME_ITERS = 20


def gpu_busy_ms(step, iters=GPU_TIME_ITERS):
    """The GPU's own time per iteration: the sum of the step's kernel, copy and memset times under
    torch.profiler, without the gaps where the GPU waits for the host to launch the next one. torch.compile's
    default mode launches its kernels from Python on every call, so its wall time moves with the host's
    speed between runs while this does not (bench/SUITE.md). None where the profiler gives nothing."""
    try:
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                step()
            torch.cuda.synchronize()
        total_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
                       for e in prof.key_averages())
    except Exception as e:  # noqa: BLE001 -- a missing profiler is a missing column, not a failed run
        log(f"  torch.profiler failed ({type(e).__name__}: {e}); no GPU time")
        return None
    return total_us / 1000.0 / iters if total_us > 0 else None


def make_step(measure, model, x, target, opt, compiled, loss_of):
    """One iteration of a measure as a closure (loss_of(output, target) is the loss); compiled wraps the
    forward (and loss) in torch.compile."""
    if measure == "forward":
        forward = torch.compile(model) if compiled else model

        def step():
            with torch.no_grad():
                forward(x)
        return step

    def loss_fn():
        return loss_of(model(x), target)

    loss = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        if measure == "train":
            opt.step()
    return step


def time_torch(args, case, precision, measure, compiled):
    """Times one PyTorch configuration from a clean device; compile errors are recorded, not raised."""
    set_precision(precision)
    release_memory()
    baseline = torch.cuda.memory_allocated()
    model = case.model()
    x, target = case.data.x.cuda(), case.data.target.cuda()
    opt = case.optimizer(model)
    try:
        step = make_step(measure, model, x, target, opt, compiled, case.loss)
        result = cuda_time(step, args.iters, args.warmup)
        result["peak_bytes"] -= baseline
        if compiled:
            result["gpu_ms"] = gpu_busy_ms(step)
    except Exception as e:  # noqa: BLE001 -- torch.compile can fail in many ways; eager re-raises
        if not compiled:
            raise
        result = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    del model, x, target, opt
    if compiled:
        torch._dynamo.reset()
    release_memory()
    return result


def time_anvil(args, net_path, precision, measure, workdir, flags=None):
    """anvil bench's JSON for one configuration, or {"error": ...}; flags default to args.anvil_flags."""
    release_memory()
    cfg = network_copy(net_path, precision, workdir)
    out = os.path.join(workdir, f"bench_{precision}_{measure}.json")
    cmd = [args.anvil, "bench", cfg, "--device", "cuda", "--mode", measure, "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--json", out] + (args.anvil_flags if flags is None else flags)
    try:
        run_anvil(cmd)
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
    except (AnvilError, OSError, ValueError) as e:
        return {"error": str(e)}
    if result.get("result") != "PASSED":
        result["error"] = f"anvil bench reported {result.get('result')!r}"
    return result


def describe_run(impl, precision, measure, result):
    head = f"  {precision} {MEASURE_LABEL[measure]:<10} {impl:<7}"
    if "error" in result:
        log(f"{head} ERROR {result['error']}")
        return
    ms = result["ms"]
    line = f"{head} median {ms['median']:8.3f} ms  min {ms['min']:8.3f}  mean {ms['mean']:8.3f}"
    if impl == "anvil":
        line += (f"  arena {result['arena_bytes'] / MIB:7.1f} MiB  device used "
                 f"{result['device_bytes_used'] / MIB:7.1f} MiB")
    else:
        line += f"  peak {result['peak_bytes'] / MIB:7.1f} MiB  first call {result['first_call_s']:.1f} s"
    log(line)


def time_all(args, case, workdir, measures=MEASURES):
    """timings[precision][measure][impl] -> result dict."""
    timings = {}
    for precision in PRECISIONS:
        timings[precision] = {m: {} for m in measures}
        for measure in measures:
            runs = timings[precision][measure]
            runs["eager"] = time_torch(args, case, precision, measure, compiled=False)
            describe_run("eager", precision, measure, runs["eager"])
            if args.skip_compile:
                runs["compile"] = {"error": "skipped (--skip-compile)"}
            else:
                runs["compile"] = time_torch(args, case, precision, measure, compiled=True)
                describe_run("compile", precision, measure, runs["compile"])
            runs["anvil"] = time_anvil(args, case.path, precision, measure, workdir)
            describe_run("anvil", precision, measure, runs["anvil"])
            if args.anvil_flags and measures == SUITE_MEASURES:  # the suite also times the rule's choices
                runs["anvil_rule"] = time_anvil(args, case.path, precision, measure, workdir, flags=[])
                describe_run("anvil", precision, measure, runs["anvil_rule"])
    return timings


# ---------------------------------------------------------------------------
# 3. Bandwidth and floors
# ---------------------------------------------------------------------------

def copy_bandwidth(iters=20):
    """Device-to-device copy of COPY_BYTES: (bytes read + written) / median time, in bytes/s."""
    src = torch.ones(COPY_BYTES // FLOAT_BYTES, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    ms = statistics.median(start.elapsed_time(end) for start, end in events)
    del src, dst
    release_memory()
    return 2 * COPY_BYTES / (ms * 1e-3)


def floors(net, bandwidth):
    """Conv FLOPs and the bytes each measure must move (float32), with their time at bandwidth."""
    with torch.device("meta"):
        model = KB74(net)
        y_shape = tuple(model.conv_transpose(torch.empty(net.input_shape)).shape)
    n, cin = net.input_shape[:2]
    conv = model.conv_transpose
    cout, kernel = conv.out_channels, math.prod(conv.kernel_size)
    flop = 2 * n * cin * cout * kernel * math.prod(net.input_shape[2:])
    x, y, p = (FLOAT_BYTES * math.prod(s) for s in (net.input_shape, y_shape, net.output_shape))
    traffic = {
        "forward, Y never materialised (read x, write P)": x + p,
        "forward, Y materialised (+ write Y, read Y)": x + 2 * y + p,
        "fwd+bwd / train step (read x twice, write+read Y, write+read dY, read target)": 2 * x + 4 * y + p,
    }
    return {
        "conv_flop": flop,
        "flop": {"forward": flop, "fwdbwd": 2 * flop, "train": 2 * flop},  # dx is skipped: the input needs no grad
        "y_shape": list(y_shape),
        "bandwidth_bytes_per_s": bandwidth,
        "bytes": traffic,
        "ms": {name: b / bandwidth * 1e3 for name, b in traffic.items()},
        "floor_ms": {"forward": (x + 2 * y + p) / bandwidth * 1e3, "fwdbwd": (2 * x + 4 * y + p) / bandwidth * 1e3,
                     "train": (2 * x + 4 * y + p) / bandwidth * 1e3},
    }


# ---------------------------------------------------------------------------
# 4. Report
# ---------------------------------------------------------------------------

def median_ms(result):
    return None if result is None or "error" in result else result["ms"]["median"]


def ratio(num, den):
    return None if num is None or den is None else num / den


def fmt(value, spec, suffix=""):
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def peak_mib(result, impl):
    if "error" in result:
        return None
    return (result["arena_bytes"] if impl == "anvil" else result["peak_bytes"]) / MIB


def timing_table(timings):
    rows = ["| precision | measure | eager ms | compile ms | anvil ms | anvil vs eager | anvil vs compile "
            "| peak MiB eager | peak MiB compile | anvil arena MiB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for precision in PRECISIONS:
        for measure in MEASURES:
            runs = timings[precision][measure]
            eager, comp, anvil = (median_ms(runs[i]) for i in IMPLS)
            cells = [precision, MEASURE_LABEL[measure], fmt(eager, ".3f"), fmt(comp, ".3f"), fmt(anvil, ".3f"),
                     fmt(ratio(eager, anvil), ".2f", "x"), fmt(ratio(comp, anvil), ".2f", "x")]
            cells += [fmt(peak_mib(runs[i], i), ".0f") for i in IMPLS]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def detail_table(timings):
    rows = ["| precision | measure | impl | min ms | median ms | mean ms | p99 ms | note |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for precision in PRECISIONS:
        for measure in MEASURES:
            for impl in IMPLS:
                r = timings[precision][measure][impl]
                if "error" in r:
                    note = r["error"].splitlines()[0].replace("|", "/")
                    rows.append(f"| {precision} | {MEASURE_LABEL[measure]} | {impl} | | | | | {note} |")
                    continue
                ms = r["ms"]
                note = (f"device used {r['device_bytes_used'] / MIB:.0f} MiB" if impl == "anvil"
                        else f"first call {r['first_call_s']:.1f} s")
                rows.append(f"| {precision} | {MEASURE_LABEL[measure]} | {impl} | {ms['min']:.3f} | "
                            f"{ms['median']:.3f} | {ms['mean']:.3f} | {ms['p99']:.3f} | {note} |")
    return "\n".join(rows)


def layer_table(timings):
    rows = ["| precision | layer | forward ms | backward ms |", "| --- | --- | ---: | ---: |"]
    for precision in PRECISIONS:
        for layer in timings[precision]["train"]["anvil"].get("layers", []):
            rows.append(f"| {precision} | {layer['name']} | {layer['forward_ms']:.3f} | {layer['backward_ms']:.3f} |")
    return "\n".join(rows)


def speed_target(timings, label, precision, measure, base, needed):
    runs = timings[precision][measure]
    got = ratio(median_ms(runs[base]), median_ms(runs["anvil"]))
    return {"target": label, "needed": needed, "measured": got,
            "text": fmt(got, ".2f", "x"), "pass": got is not None and got >= needed}


def memory_target(timings):
    """anvil's train-step arena vs eager's train-step peak, the worse of the two precisions."""
    fractions, parts = [], []
    for precision in PRECISIONS:
        runs = timings[precision]["train"]
        anvil, eager = peak_mib(runs["anvil"], "anvil"), peak_mib(runs["eager"], "eager")
        fractions.append(ratio(anvil, eager))
        parts.append(f"{precision}: {fmt(anvil, '.0f')} / {fmt(eager, '.0f')} MiB = {fmt(ratio(anvil, eager), '.3f')}")
    worst = None if None in fractions else max(fractions)
    return {"target": "anvil train-step peak memory <= 1/3 of eager's", "needed": 1 / 3, "measured": worst,
            "text": "; ".join(parts), "pass": worst is not None and worst <= 1 / 3}


def targets(timings):
    return [
        speed_target(timings, "train step, tf32: >= 3x faster than torch.compile", "tf32", "train", "compile", 3.0),
        speed_target(timings, "forward, tf32: >= 2.5x faster than torch.compile", "tf32", "forward", "compile", 2.5),
        speed_target(timings, "train step, fp32: >= 5x faster than eager", "fp32", "train", "eager", 5.0),
        memory_target(timings),
    ]


def target_table(rows):
    lines = ["| target | measured | result |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['text']} | {'PASS' if t['pass'] else 'MISS'} |" for t in rows]
    return "\n".join(lines)


def parity_table(parity, small):
    lines = ["| precision | tensor | rel L2 error vs PyTorch float32 (GPU) | bound |", "| --- | --- | ---: | ---: |"]
    for precision, errs in parity.items():
        lines += [f"| {precision} | {name} | {err:.3e} | {PARITY_BOUND[precision]:.0e} |" for name, err in errs.items()]
    lines += ["", "kb74_small network-input gradient, relative L2 error against its float64 reference:", "",
              "| precision | PyTorch, cudnn.benchmark off | PyTorch, cudnn.benchmark on | anvil |",
              "| --- | ---: | ---: | ---: |"]
    for precision, r in small.items():
        anvil = f"{r['anvil']:.3e}" if r["anvil"] is not None else f"n/a ({r['anvil_note']})"
        lines.append(f"| {precision} | {r['torch_heuristic']:.3e} | {r['torch_benchmark']:.3e} | {anvil} |")
    return "\n".join(lines)


def floor_section(floor, timings):
    bw = floor["bandwidth_bytes_per_s"]
    lines = [f"Device-to-device copy bandwidth: {bw / 1e12:.2f} TB/s (1 GiB copy, bytes read + written).",
             "",
             f"Conv FLOPs, each of forward, dW and dx: {floor['conv_flop'] / 1e9:.2f} GFLOP "
             f"(2 N Cin Cout k^3 D H W of the input; Y is {floor['y_shape']}). "
             "fwd+bwd and the train step run forward + dW (dx is skipped: the input needs no gradient).",
             "",
             "| bytes moved (float32) | MB | ms at the measured bandwidth |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {b / 1e6:.1f} | {floor['ms'][name]:.3f} |" for name, b in floor["bytes"].items()]
    lines += ["", "anvil against the memory floor (Y and dY materialised) and its conv throughput:", "",
              "| precision | measure | anvil ms | floor ms | anvil / floor | conv TFLOP/s |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for precision in PRECISIONS:
        for measure in MEASURES:
            ms = median_ms(timings[precision][measure]["anvil"])
            tflops = None if ms is None else floor["flop"][measure] / (ms * 1e-3) / 1e12
            lines.append(f"| {precision} | {MEASURE_LABEL[measure]} | {fmt(ms, '.3f')} | "
                         f"{floor['floor_ms'][measure]:.3f} | {fmt(ratio(ms, floor['floor_ms'][measure]), '.1f', 'x')} | "
                         f"{fmt(tflops, '.1f')} |")
    return "\n".join(lines)


def first_anvil_run(timings):
    for precision in PRECISIONS:
        for measure in MEASURES:
            r = timings[precision][measure]["anvil"]
            if "error" not in r:
                return r
    return {}


def report(env, args, parity, small, timings, floor, goals):
    anvil_env = first_anvil_run(timings)
    return "\n".join([
        "# anvil vs PyTorch: benchmark results",
        "",
        f"Written by `tools/bench_vs_torch.py` on {env['date']}. Network `{shown(args.network)}`; "
        f"{args.iters} timed iterations after {args.warmup} warm-up iterations; medians unless noted.",
        "",
        f"- GPU: {env['gpu']}",
        f"- PyTorch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']})",
        f"- anvil: GPU {anvil_env.get('gpu', 'n/a')}, cuDNN {anvil_env.get('cudnn_version', 'n/a')}, "
        f"CUDA graph {anvil_env.get('cuda_graph', 'n/a')}, fusion {anvil_env.get('fuse', 'n/a')}",
        "",
        "## Parity",
        "",
        parity_table(parity, small),
        "",
        "## Timing",
        "",
        "forward = inference (PyTorch under torch.no_grad); fwd+bwd = forward + mse loss + backward; "
        "train step = fwd+bwd + SGD step. Speedups are PyTorch median / anvil median. PyTorch's peak is "
        "torch.cuda.max_memory_allocated over the timed loop; anvil's is its arena.",
        "",
        timing_table(timings),
        "",
        "### Details",
        "",
        detail_table(timings),
        "",
        "### anvil per-layer times (train mode)",
        "",
        layer_table(timings),
        "",
        "## Targets",
        "",
        target_table(goals),
        "",
        "## Floors",
        "",
        floor_section(floor, timings),
        "",
    ])


def write_results_md(path, text):
    """Writes text, keeping an existing '## Optimisation log' section (and all after it) verbatim."""
    kept = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        match = re.search(r"^" + re.escape(LOG_HEADING) + r"[ \t]*$", old, re.M)
        if match:
            kept = old[match.start():]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n" + ("\n" + kept if kept else ""))


def environment():
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn_version_string(torch.backends.cudnn.version()),
        "command": " ".join(sys.argv),
    }


# ---------------------------------------------------------------------------
# The suite: every network of a directory, parity then forward and train step
# ---------------------------------------------------------------------------

def suite_paths(directory, only=None):
    """The network files of directory, sorted; only: the file names (without .json) to keep."""
    paths = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".json"))
    if not paths:
        raise SystemExit(f"{shown(directory)}: no network JSON files")
    if only:
        stems = {os.path.basename(p)[:-len(".json")]: p for p in paths}
        missing = [name for name in only if name not in stems]
        if missing:
            raise SystemExit(f"--only: {', '.join(missing)} not in {shown(directory)} "
                             f"(it has {', '.join(sorted(stems))})")
        paths = [stems[name] for name in only]
    return paths


def run_suite_case(args, path, workdir):
    """Parity, then (only when it passed) the timings of one network: its entry of the suite report."""
    log(f"\n==== {shown(path)} ====")
    case = load_case(path, JsonModel)
    entry = {"network": shown(path), "name": case.net.name, "input": list(case.net.input_shape),
             "output": list(case.net.output_shape)}
    try:
        entry["parity"], entry["parity_ok"] = parity_full(args, case, workdir)
    except AnvilError as e:
        log(f"  parity FAILED: {e}")
        entry.update(parity={}, parity_ok=False, error=str(e).splitlines()[0])
    if entry["parity_ok"]:
        entry["timings"] = time_all(args, case, workdir, SUITE_MEASURES)
    else:
        log("  parity out of bounds or not run; this network is not timed")
    del case
    release_memory()
    return entry


def worst_parity(entry):
    """'max rel L2 fp32 / tf32' of one network, or why there is none."""
    if not entry["parity"]:
        return f"not run: {entry.get('error', 'n/a')}".replace("|", "/")
    worst = [max(entry["parity"][p].values()) for p in PRECISIONS]
    verdict = "ok" if entry["parity_ok"] else "OUT OF BOUND"
    return " / ".join(f"{w:.1e}" for w in worst) + f" ({verdict})"


def suite_table(entries):
    rule = any("anvil_rule" in runs for e in entries for by_m in e.get("timings", {}).values()
               for runs in by_m.values())
    rule_head = " anvil (rule) ms | rule vs compile |" if rule else ""
    rows = ["| network | precision | measure | eager ms | compile ms | anvil ms | anvil vs eager "
            "| anvil vs compile | below compile | compile GPU ms | anvil vs compile GPU |" + rule_head,
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
            + (" ---: | ---: |" if rule else "")]
    for entry in entries:
        if "timings" not in entry:
            rows.append(f"| {entry['name']} | | | | | | | | not timed: parity failed | | |" + (" | |" if rule else ""))
            continue
        for precision in PRECISIONS:
            for measure in SUITE_MEASURES:
                runs = entry["timings"][precision][measure]
                eager, comp, anvil = (median_ms(runs[i]) for i in IMPLS)
                vs_compile = ratio(comp, anvil)
                below = ("**BELOW 1.0x**" if vs_compile is not None and vs_compile < 1.0
                         else "" if vs_compile is not None else "n/a")
                comp_gpu = runs["compile"].get("gpu_ms")
                cells = [entry["name"], precision, MEASURE_LABEL[measure], fmt(eager, ".3f"), fmt(comp, ".3f"),
                         fmt(anvil, ".3f"), fmt(ratio(eager, anvil), ".2f", "x"), fmt(vs_compile, ".2f", "x"), below,
                         fmt(comp_gpu, ".3f"), fmt(ratio(comp_gpu, anvil), ".2f", "x")]
                if rule:
                    rule_ms = median_ms(runs["anvil_rule"]) if "anvil_rule" in runs else None
                    cells += [fmt(rule_ms, ".3f"), fmt(ratio(comp, rule_ms), ".2f", "x")]
                rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def suite_errors(entries):
    """One line per run that failed (anvil or torch.compile), for the report."""
    lines = []
    for entry in entries:
        for precision, by_measure in entry.get("timings", {}).items():
            for measure, runs in by_measure.items():
                for impl, r in runs.items():
                    if "error" in r:
                        lines.append(f"- {entry['name']} {precision} {MEASURE_LABEL[measure]} {impl}: "
                                     f"{r['error'].splitlines()[0]}")
    return lines


def suite_report(env, args, entries):
    lines = [
        "# anvil vs PyTorch: the network suite",
        "",
        f"Written by `tools/bench_vs_torch.py --suite` on {env['date']} from `{shown(args.suite)}`"
        + (" (described in its README.md)" if os.path.exists(os.path.join(args.suite, "README.md")) else "")
        + f"; {args.iters} timed iterations after {args.warmup} warm-up iterations; medians.",
        "",
        f"- GPU: {env['gpu']}",
        f"- PyTorch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']})",
        "",
        "## Parity",
        "",
        "Largest relative L2 error of the output and every parameter gradient (step 1) against PyTorch "
        f"float32 on the GPU, fp32 / tf32; bounds {PARITY_BOUND['fp32']:.0e} / {PARITY_BOUND['tf32']:.0e}. "
        "A network out of bounds is not timed.",
        "",
        "| network | file | input | output | max rel L2 fp32 / tf32 |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {e['name']} | `{e['network']}` | {e['input']} | {e['output']} | {worst_parity(e)} |"
              for e in entries]
    lines += [
        "",
        "## Timing",
        "",
        "forward = inference (PyTorch under torch.no_grad); train step = zero_grad + forward + loss + backward "
        "+ optimizer step. torch.compile is mode \"default\". Ratios are PyTorch median / anvil median; "
        "**BELOW 1.0x** marks a row where anvil is slower than torch.compile. compile GPU ms is the GPU's busy "
        f"time per torch.compile step (the sum of its kernels under torch.profiler, {GPU_TIME_ITERS} steps): "
        "its wall time also holds gaps where the GPU waits for Python to launch the next kernel, which move "
        "between runs; anvil replays a CUDA graph, so its wall time is the GPU's."
        + (" anvil ran with `" + " ".join(args.anvil_flags) + "` (PyTorch runs with cudnn.benchmark); the last "
           "two columns time anvil's default rule in the same run." if args.anvil_flags else ""),
        "",
        suite_table(entries),
        "",
    ]
    errors = suite_errors(entries)
    if errors:
        lines += ["### Runs that failed", ""] + errors + [""]
    return "\n".join(lines)


def main_suite(args, env):
    entries = []
    with tempfile.TemporaryDirectory(prefix="anvil_suite_") as workdir:
        for index, path in enumerate(suite_paths(args.suite, args.only)):
            case_dir = os.path.join(workdir, str(index))
            os.makedirs(case_dir)
            entries.append(run_suite_case(args, path, case_dir))

    text = suite_report(env, args, entries)
    log("\n" + suite_table(entries))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_results_md(args.out, text)  # keeps the hand-written analysis under the log heading
    raw_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "suite_results.json")
    with open(raw_path, "w", encoding="utf-8") as f:
        json.dump({"environment": env, "suite": shown(args.suite), "iters": args.iters, "warmup": args.warmup,
                   "networks": entries}, f, indent=1)
    log(f"\nwrote {shown(args.out)} and {shown(raw_path)}")

    failed = [e["name"] for e in entries if not e["parity_ok"]]
    failed += [f"{e['name']} {p} {m}" for e in entries for p, by_m in e.get("timings", {}).items()
               for m, runs in by_m.items() if "error" in runs["anvil"]]
    if failed:
        log(f"FAILED: parity or anvil bench failed for {', '.join(failed)}")
        return 1
    log("PASSED")
    return 0


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anvil", default=os.path.join(REPO_ROOT, "build", "anvil"), help="the anvil binary")
    parser.add_argument("--network", default=os.path.join(REPO_ROOT, "examples", "kernelbench74.json"),
                        help="the headline network JSON")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per configuration (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations (default 10)")
    parser.add_argument("--skip-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--suite", nargs="?", const=SUITE_DIR, default=None, metavar="DIR",
                        help=f"run every network JSON in DIR (default {shown(SUITE_DIR)}) instead of the "
                             "headline network, and write bench/SUITE.md")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                        help="with --suite: only these networks (file names without .json); needs --out, so "
                             "that a partial run does not replace the whole report")
    parser.add_argument("--out", default=None,
                        help="the Markdown report (default bench/RESULTS.md, with results.json next to it; "
                             "with --suite bench/SUITE.md, with suite_results.json next to it)")
    parser.add_argument("--autotune", action="store_true",
                        help="run anvil with --autotune (as PyTorch runs with cudnn.benchmark)")
    args = parser.parse_args(argv)
    args.anvil_flags = ["--autotune"] if args.autotune else []
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.only is not None:
        if not args.suite:
            parser.error("--only selects networks of --suite")
        if args.out is None:
            parser.error("--only writes a partial report: give --out (bench/SUITE.md holds the whole suite)")
        args.only = [name for name in args.only.split(",") if name]
        if not args.only:
            parser.error("--only needs at least one network name")
    if args.out is None:
        args.out = os.path.join(REPO_ROOT, "bench", "SUITE.md" if args.suite else "RESULTS.md")
    return args


def load_case(path, module_class):
    t0 = time.time()
    case = headline_case(path) if module_class is KB74 else Case(path, module_class)
    net = case.net
    log(f"network {net.name}: input {list(net.input_shape)}, output {list(net.output_shape)}, "
        f"seed {net.seed} (data generated in {time.time() - t0:.1f} s)")
    return case


def main_headline(args, env):
    case = load_case(args.network, KB74)
    net = case.net

    with tempfile.TemporaryDirectory(prefix="anvil_bench_") as workdir:
        log("\n== parity: anvil vs PyTorch float32 on the GPU ==")
        try:
            parity, parity_ok = parity_full(args, case, workdir)
        except AnvilError as e:
            log(f"FAILED: {e}")
            return 1
        small = parity_small_input_grad(args, workdir)
        if not parity_ok:
            log("FAILED: parity out of bounds; no timing")
            return 1

        log(f"\n== timing: {args.iters} iterations after {args.warmup} warm-up ==")
        timings = time_all(args, case, workdir)

    log("\n== copy bandwidth and floors ==")
    floor = floors(net, copy_bandwidth())
    log(f"  copy bandwidth {floor['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s; conv {floor['conv_flop'] / 1e9:.2f} GFLOP")
    goals = targets(timings)
    text = report(env, args, parity, small, timings, floor, goals)
    log("\n" + timing_table(timings) + "\n\n" + target_table(goals))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_results_md(args.out, text)
    raw_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "results.json")
    with open(raw_path, "w", encoding="utf-8") as f:
        json.dump({"environment": env, "network": shown(args.network), "iters": args.iters, "warmup": args.warmup,
                   "parity": parity, "kb74_small_input_grad": small, "timings": timings, "floors": floor,
                   "targets": goals}, f, indent=1)
    log(f"\nwrote {shown(args.out)} and {shown(raw_path)}")

    failed = [f"{p} {m}" for p in PRECISIONS for m in MEASURES if "error" in timings[p][m]["anvil"]]
    if failed:
        log(f"FAILED: anvil bench did not run for {', '.join(failed)}")
        return 1
    log("PASSED")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        log("FAILED: no CUDA device visible to PyTorch")
        return 1
    torch.backends.cudnn.benchmark = True
    env = environment()
    log(f"command: {env['command']}")
    log(f"GPU {env['gpu']}, PyTorch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}")
    return main_suite(args, env) if args.suite else main_headline(args, env)


if __name__ == "__main__":
    sys.exit(main())
