#!/usr/bin/env python3
"""Tests of tools/plot_metrics.py: the PNG it writes is a PNG of the size asked
for, and a missing, empty or malformed metrics file is bad input (exit 2)
named in one line. Run by CTest (plot_metrics); needs matplotlib, which
tools/setup.sh installs."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "plot_metrics.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plot(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


class PlotMetrics(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def path(self, name):
        return os.path.join(self.dir.name, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def sample_run(self):
        """What `anvil train --metrics` writes: 40 logged steps, a validation every 50
        steps, a step-decayed learning rate spanning 20x, and one non-finite loss."""
        lines = []
        for step in range(1, 201, 5):
            record = {"step": step, "epoch": step // 50 + 1, "loss": 2.0 / step, "val_loss": None, "val_step": None,
                      "lr": 0.1 * 0.5 ** (step // 40), "elapsed_s": step * 0.01}
            if step > 50:
                record["val_loss"], record["val_step"] = 1.0 / (step // 50 * 50), step // 50 * 50
            if step == 101:
                record["loss"], record["loss_nonfinite"] = None, True
            lines.append(json.dumps(record))
        return self.write("run.jsonl", "\n".join(lines) + "\n")

    def png_size(self, png):
        with open(png, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], PNG_SIGNATURE, f"{png} is not a PNG")
        self.assertEqual(head[12:16], b"IHDR")
        return struct.unpack(">II", head[16:24])

    def test_writes_a_png_of_the_size_asked_for(self):
        run = self.sample_run()
        for width, height in [(1200, 600), (333, 217), (203, 201)]:
            out = self.path(f"loss_{width}x{height}.png")
            r = plot(run, "-o", out, "--width", str(width), "--height", str(height))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(self.png_size(out), (width, height))
            self.assertFalse(os.path.exists(out + ".partial"))

    def test_the_default_size_is_1200_by_600(self):
        out = self.path("loss.png")
        r = plot(self.sample_run(), "-o", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(out, r.stdout)
        self.assertEqual(self.png_size(out), (1200, 600))

    def check_bad_input(self, args, *parts):
        r = plot(*args)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        message = r.stderr.strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        for part in parts:
            self.assertIn(part, message)

    def test_bad_input_exits_2_naming_the_file_and_line(self):
        out = self.path("loss.png")
        missing = self.path("missing.jsonl")
        self.check_bad_input([missing, "-o", out], missing)
        empty = self.write("empty.jsonl", "")
        self.check_bad_input([empty, "-o", out], empty, "empty")
        blank = self.write("blank.jsonl", "\n\n")
        self.check_bad_input([blank, "-o", out], blank, "empty")
        good = json.dumps({"step": 1, "loss": 1.0, "lr": 0.1})
        broken = self.write("broken.jsonl", good + "\n" + good + "\n{\"step\": 3, \"loss\": \n")
        self.check_bad_input([broken, "-o", out], broken + ":3:", "not JSON")
        no_step = self.write("no_step.jsonl", good + "\n" + json.dumps({"loss": 1.0}) + "\n")
        self.check_bad_input([no_step, "-o", out], no_step + ":2:", "step")
        self.check_bad_input([self.sample_run(), "-o", out, "--width", "0"], "--width")
        self.check_bad_input([self.sample_run(), "-o", out, "--height", "100000"], "--height")
        self.assertFalse(os.path.exists(out))

    def test_hostile_files_are_bad_input_in_one_line(self):
        out = self.path("loss.png")
        good = json.dumps({"step": 1, "loss": 1.0, "lr": 0.1}) + "\n"
        with open(self.path("latin1.jsonl"), "wb") as f:
            f.write(b'\xff\xfe{"step": 1}\n')
        self.check_bad_input([self.path("latin1.jsonl"), "-o", out], "latin1.jsonl", "not UTF-8")
        deep = self.write("deep.jsonl", "[" * 200000 + "]" * 200000 + "\n")
        self.check_bad_input([deep, "-o", out], deep + ":1:", "not JSON")
        digits = self.write("digits.jsonl", '{"step": 1' + "0" * 5000 + ', "loss": 1}\n')
        self.check_bad_input([digits, "-o", out], digits + ":1:", "not JSON")
        cases = [({"step": 2, "loss": 1, "val_loss": "abc"}, "'val_loss'"), ({"step": 2, "loss": 1, "val_loss": {}}, "'val_loss'"),
                 ({"step": True, "loss": 1}, "integer 'step'"), ({"step": 2, "loss": "x"}, "'loss'"),
                 ({"step": 2, "loss": 1, "lr": [1]}, "'lr'"), ({"step": 2, "loss": 1, "val_step": 1.5}, "'val_step'")]
        for record, part in cases:
            bad = self.write("bad.jsonl", good + json.dumps(record) + "\n")
            self.check_bad_input([bad, "-o", out], bad + ":2:", part)
        self.assertFalse(os.path.exists(out))

    def test_outputs_that_cannot_be_written_leave_what_was_there(self):
        run = self.sample_run()
        with open(run) as f:
            metrics = f.read()
        self.check_bad_input([run, "-o", run], "would overwrite the metrics file")
        os.mkdir(self.path("dir.png"))
        self.check_bad_input([run, "-o", self.path("dir.png")], "it is a directory")
        with open(run) as f:
            self.assertEqual(f.read(), metrics)
        r = plot(run, "-o", self.path("missing/loss.png"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("cannot write", r.stderr)
        self.assertEqual(sorted(os.listdir(self.dir.name)), ["dir.png", "run.jsonl"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
