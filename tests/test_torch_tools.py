#!/usr/bin/env python3
"""Tests that the tools needing PyTorch say so in one line and exit 1 where it does not import,
instead of ending in a traceback. A torch.py that raises stands in for a missing or broken
PyTorch, so the test runs the same whether PyTorch is installed or not. Run by CTest (torch_tools)."""
import os
import subprocess
import sys
import tempfile
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
# bench_vs_torch.py does the check; the other two import it.
SCRIPTS = {"bench_vs_torch.py": [], "torch_kernels.py": ["net.json"], "kernel_bandwidth.py": ["net.json"]}


class WithoutTorch(unittest.TestCase):
    def run_without_torch(self, script, args, raising):
        with tempfile.TemporaryDirectory() as stub:
            with open(os.path.join(stub, "torch.py"), "w") as f:
                f.write(f"raise {raising}\n")
            path = os.pathsep.join(p for p in (stub, os.environ.get("PYTHONPATH")) if p)
            env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
            return subprocess.run([sys.executable, os.path.join(TOOLS, script), *args],
                                  capture_output=True, text=True, env=env, timeout=60)

    def test_one_line_and_exit_1(self):
        for script, args in SCRIPTS.items():
            with self.subTest(script=script):
                r = self.run_without_torch(script, args, 'ImportError("torch blocked by the test")')
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(r.stderr, f"{script}: needs PyTorch (import torch failed: torch blocked by the test)\n")

    def test_a_library_that_does_not_load_is_one_line_too(self):
        # torch's own shared libraries failing to load raise OSError, with a message of any lines.
        r = self.run_without_torch("torch_kernels.py", ["net.json"],
                                   'OSError("libcudnn.so.9: cannot open shared object file:\\n  No such file")')
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr, "torch_kernels.py: needs PyTorch (import torch failed: "
                                   "libcudnn.so.9: cannot open shared object file: No such file)\n")


if __name__ == "__main__":
    unittest.main()
