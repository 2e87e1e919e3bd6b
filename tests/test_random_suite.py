#!/usr/bin/env python3
"""Tests of tools/random_suite.py: every network it writes loads in anvil
(`anvil info`, which checks the whole file and plans it), the same seed writes
the same files, and a bad count is refused. Run by CTest (random_suite) with
the anvil binary as its argument."""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "random_suite.py")
ANVIL = None


def write_suite(out, *args):
    return subprocess.run([sys.executable, SCRIPT, "--out", out, *args], capture_output=True, text=True, timeout=120)


class RandomSuite(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def test_every_network_loads_in_anvil(self):
        out = os.path.join(self.dir.name, "a")
        run = write_suite(out, "--count", "24", "--seed", "1")
        self.assertEqual(run.returncode, 0, run.stderr)
        files = sorted(os.listdir(out))
        self.assertEqual(len(files), 24)
        for name in files:
            info = subprocess.run([ANVIL, "info", os.path.join(out, name), "--device", "cpu"], capture_output=True,
                                  text=True, timeout=120)
            self.assertEqual(info.returncode, 0, f"{name}: {info.stderr}")

    def test_the_same_seed_writes_the_same_files(self):
        a, b = os.path.join(self.dir.name, "a"), os.path.join(self.dir.name, "b")
        for out in (a, b):
            self.assertEqual(write_suite(out, "--count", "4", "--seed", "7").returncode, 0)
        for name in os.listdir(a):
            with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
                self.assertEqual(fa.read(), fb.read(), name)

    def test_bad_arguments_and_an_unwritable_directory_are_one_line(self):
        for args, message in ((["--count", "0"], "--count must be from 1 to 10000, got 0"),
                              (["--seed", "-1"], "--seed must be from 0 to 2^63 - 1 - count, got -1"),
                              (["--seed", str(2**64)], "--seed must be from 0 to 2^63 - 1 - count")):
            run = write_suite(os.path.join(self.dir.name, "c"), *args)
            self.assertEqual(run.returncode, 2, args)
            self.assertIn(message, run.stderr)
        a_file = os.path.join(self.dir.name, "file")
        open(a_file, "w").close()
        run = write_suite(a_file, "--count", "1")
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.stderr.count("\n"), 1, run.stderr)
        self.assertIn("random_suite: cannot write " + a_file, run.stderr)
        run = write_suite(os.path.join(self.dir.name, "d"), "--count", "x")
        self.assertEqual(run.returncode, 2)
        self.assertEqual(run.stderr.count("\n"), 1, run.stderr)

    def test_a_symlink_or_directory_in_the_way_stops_the_run_before_any_write(self):
        out = os.path.join(self.dir.name, "out")
        os.makedirs(os.path.join(out, "random_2.json"))
        kept = os.path.join(self.dir.name, "kept.txt")
        with open(kept, "w") as f:
            f.write("keep\n")
        os.symlink("../kept.txt", os.path.join(out, "random_1.json"))
        for args, blocker in ((["--count", "3"], "random_1.json"), (["--count", "2", "--seed", "2"], "random_2.json")):
            run = write_suite(out, *args)
            self.assertEqual(run.returncode, 1, run.stderr)
            self.assertEqual(run.stderr.count("\n"), 1, run.stderr)
            self.assertIn(os.path.join(out, blocker) + ": not a regular file", run.stderr)
        with open(kept) as f:
            self.assertEqual(f.read(), "keep\n")
        self.assertEqual(sorted(os.listdir(out)), ["random_1.json", "random_2.json"])


if __name__ == "__main__":
    ANVIL = sys.argv.pop(1)
    unittest.main()
