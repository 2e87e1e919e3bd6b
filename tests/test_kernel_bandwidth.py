#!/usr/bin/env python3
"""Tests of tools/kernel_bandwidth.py against a stand-in for ncu (no GPU, no
PyTorch: --bandwidth gives the copy bandwidth): the table's numbers, layers
and totals from ncu's CSV, and a one-line error for each way ncu's output or
the arguments can be wrong. Run by CTest (kernel_bandwidth)."""
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "kernel_bandwidth.py")

# Prints ncu's raw CSV for two kernels; FAKE_NCU picks a fault. With --print-nvtx-rename,
# kernel names carry their innermost NVTX range, as ncu writes them.
FAKE_NCU = textwrap.dedent('''\
    import os, sys
    fault = os.environ.get("FAKE_NCU", "")
    if fault == "exit":
        sys.stderr.write("==ERROR== something went wrong\\n")
        sys.exit(3)
    rename = "--print-nvtx-rename" in sys.argv
    units = "furlong" if fault == "units" else "ns"
    time0 = "ten" if fault == "number" else "10000"
    print("==PROF== Connected to process 1")
    print('"ID","Process ID","Kernel Name","gpu__time_duration.sum","dram__bytes_read.sum","dram__bytes_write.sum"')
    print(f'"","","","{units}","byte","byte"')
    if fault != "empty":
        print(f'"0","1","{"forward conv/" if rename else ""}void k1(float*, int)","{time0}","20000000","10000000"')
        print(f'"1","1","{"forward pool/" if rename else ""}k2","2,000","1000000","0"')
    ''')


class KernelBandwidth(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.ncu = os.path.join(self.dir.name, "ncu")
        with open(self.ncu, "w") as f:
            f.write(f"#!{sys.executable}\n" + FAKE_NCU)
        os.chmod(self.ncu, os.stat(self.ncu).st_mode | stat.S_IEXEC)

    def run_tool(self, *args, fault="", ncu=None):
        env = dict(os.environ, FAKE_NCU=fault)
        return subprocess.run([sys.executable, SCRIPT, "net.json", "--ncu", ncu or self.ncu, *args],
                              capture_output=True, text=True, env=env, timeout=60)

    def test_the_table_from_ncu_rows(self):
        out = os.path.join(self.dir.name, "table.md")
        run = self.run_tool("--bandwidth", "3", "--mode", "forward", "--out", out)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("copy bandwidth 3.00 TB/s (given)", run.stdout)
        # 10 us for 30 MB is 3 TB/s, all of the copy; 2 us for 1 MB is 0.5 TB/s, 17%.
        self.assertIn("| forward conv | `void k1` | 10.0 | 30.0 | 3.00 | 100% |", run.stdout)
        self.assertIn("| forward pool | `k2` | 2.0 | 1.0 | 0.50 | 17% |", run.stdout)
        self.assertIn("| all | 2 kernels | 12.0 | 31.0 | | |", run.stdout)
        with open(out) as f:
            self.assertEqual(f.read().strip(), run.stdout.strip())
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_each_fault_is_one_line_and_a_failure(self):
        cases = [("units", [], "in unknown units 'furlong'"),
                 ("number", [], "gpu__time_duration.sum = 'ten' for kernel 0, not a number"),
                 ("empty", [], "ncu profiled no kernel in the step's NVTX range"),
                 ("exit", [], "ncu exited 3: ==ERROR== something went wrong")]
        for fault, args, message in cases:
            run = self.run_tool("--bandwidth", "3", *args, fault=fault)
            self.assertNotEqual(run.returncode, 0, fault)
            self.assertIn(message, run.stderr, fault)
            self.assertNotIn("Traceback", run.stderr, fault)

    def test_bad_arguments(self):
        missing = os.path.join(self.dir.name, "no-such-ncu")
        run = self.run_tool("--bandwidth", "3", ncu=missing)
        self.assertEqual(run.returncode, 1)
        self.assertIn(f"cannot run {missing} (Nsight Compute)", run.stderr)
        for value in ("0", "-1", "nan", "inf"):
            run = self.run_tool("--bandwidth", value)
            self.assertEqual(run.returncode, 2, value)
            self.assertIn("--bandwidth must be a positive number of TB/s", run.stderr)
        out = os.path.join(self.dir.name, "no-such-dir", "table.md")
        run = self.run_tool("--bandwidth", "3", "--out", out)
        self.assertEqual(run.returncode, 1)
        self.assertIn(f"cannot write {out}: No such file or directory", run.stderr)
        self.assertNotIn("Traceback", run.stderr)


if __name__ == "__main__":
    unittest.main()
