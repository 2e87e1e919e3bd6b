#!/usr/bin/env python3
"""Tests that the tools needing PyTorch (or numpy, or safetensors) say so in one line and exit 1
where it does not import, instead of ending in a traceback. A module that raises, first on
PYTHONPATH, stands in for a missing or broken package, and an empty one for a present package, so
the test runs the same whether they are installed or not. Also that precision_report.py names a
failing anvil command on one line. Run by CTest (torch_tools)."""
import os
import re
import subprocess
import sys
import tempfile
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
# bench_vs_torch.py does the check; torch_kernels.py and kernel_bandwidth.py import it.
SCRIPTS = {"bench_vs_torch.py": [], "torch_kernels.py": ["net.json"], "kernel_bandwidth.py": ["net.json"],
           "make_reference.py": ["--no-full"]}
BLOCKED = 'raise ImportError("{} blocked by the test")\n'
# Imports, as the scripts' `import torch.nn.functional as F` needs; nothing else is used before the checks.
TORCH = {"torch/__init__.py": "", "torch/nn/__init__.py": "", "torch/nn/functional.py": ""}
SAFETENSORS = {"safetensors/__init__.py": "", "safetensors/torch.py": "load_file = None\n"}


def run_with(script, args, stubs):
    """Runs tools/script with stubs ({path: source}) first on PYTHONPATH."""
    with tempfile.TemporaryDirectory() as stub:
        for name, source in stubs.items():
            os.makedirs(os.path.dirname(os.path.join(stub, name)), exist_ok=True)
            with open(os.path.join(stub, name), "w") as f:
                f.write(source)
        path = os.pathsep.join(p for p in (stub, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
        return subprocess.run([sys.executable, os.path.join(TOOLS, script), *args],
                              capture_output=True, text=True, env=env, timeout=60)


class WithoutTorch(unittest.TestCase):
    def test_one_line_and_exit_1(self):
        for script, args in SCRIPTS.items():
            with self.subTest(script=script):
                r = run_with(script, args, {"torch.py": BLOCKED.format("torch")})
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(r.stderr, f"{script}: needs PyTorch (import torch failed: torch blocked by the test)\n")

    def test_a_library_that_does_not_load_is_one_line_too(self):
        # torch's own shared libraries failing to load raise OSError, with a message of any lines.
        r = run_with("torch_kernels.py", ["net.json"],
                     {"torch.py": 'raise OSError("libcudnn.so.9: cannot open shared object file:\\n  No such file")'})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr, "torch_kernels.py: needs PyTorch (import torch failed: "
                                   "libcudnn.so.9: cannot open shared object file: No such file)\n")


class WithoutOtherPackages(unittest.TestCase):
    def assert_needs(self, script, args, stubs, package, module, blocked):
        r = run_with(script, args, stubs)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr,
                         f"{script}: needs {package} (import {module} failed: {blocked} blocked by the test)\n")

    def test_numpy(self):
        # bench_vs_torch.py and torch_kernels.py get numpy through make_reference.py's check.
        for script, args in {"make_reference.py": ["--no-full"], "bench_vs_torch.py": [],
                             "torch_kernels.py": ["net.json"], "precision_report.py": [],
                             "multiplier_grad_tf32.py": []}.items():
            with self.subTest(script=script):
                self.assert_needs(script, args, {**TORCH, **SAFETENSORS, "numpy.py": BLOCKED.format("numpy")},
                                  "numpy", "numpy", "numpy")

    def test_safetensors(self):
        for script, args, module, stubs in (("bench_vs_torch.py", [], "safetensors.torch", TORCH),
                                            ("torch_kernels.py", ["net.json"], "safetensors.torch", TORCH),
                                            ("precision_report.py", [], "safetensors.numpy", {"numpy.py": ""})):
            with self.subTest(script=script):
                self.assert_needs(script, args, {**stubs, "safetensors.py": BLOCKED.format("safetensors")},
                                  "safetensors", module, "safetensors")


class PrecisionReportFailures(unittest.TestCase):
    # Present numpy and safetensors; nothing is loaded before the first anvil command.
    STUBS = {"numpy.py": "", "safetensors/__init__.py": "", "safetensors/numpy.py": "load_file = lambda path: {}\n"}

    def test_a_failing_command_is_one_line_with_its_exit_status(self):
        with tempfile.TemporaryDirectory() as d:
            anvil = os.path.join(d, "fake anvil")  # the space shows the command is shell-quoted
            with open(anvil, "w") as f:
                f.write("#!/bin/sh\necho 'some warning' >&2\necho 'anvil: bad weights' >&2\nexit 3\n")
            os.chmod(anvil, 0o755)
            r = run_with("precision_report.py", ["--anvil", anvil, "--cases", "kb74_small", "--device", "cpu"],
                         self.STUBS)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, "^precision_report.py: " + re.escape(f"'{anvil}' run ") + r"\S+kb74_small_fp32\.json "
                         r"--device cpu .* failed with exit status 3: anvil: bad weights\n$")

    def test_a_command_that_does_not_start_is_one_line(self):
        anvil = os.path.join(tempfile.gettempdir(), "no such anvil")
        r = run_with("precision_report.py", ["--anvil", anvil, "--cases", "kb74_small"], self.STUBS)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, "^precision_report.py: cannot run " + re.escape(f"'{anvil}' run ")
                         + r".*: No such file or directory\n$")


if __name__ == "__main__":
    unittest.main()
