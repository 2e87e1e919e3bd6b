#!/usr/bin/env python3
"""Plots the metrics `anvil train --metrics RUN.jsonl` writes.

    tools/plot_metrics.py RUN.jsonl -o loss.png [--width 1200 --height 600]

Top panel: the training loss (raw, faint; and smoothed, with the same
bias-corrected moving average as the progress display) and the validation loss
against the step. Bottom panel: the learning rate against the step. An axis is
logarithmic when its values are positive and span more than 10x. The PNG is
exactly WIDTH x HEIGHT pixels. A non-finite loss (null in the file) leaves a gap.
A file with several runs appended is drawn as it is, one run after the other.

Exit codes: 0 success, 2 bad input (one line naming the file and the line,
or the option), 1 matplotlib missing or the PNG cannot be written (one line;
an existing PNG stays as it was).
"""
import argparse
import json
import math
import os
import sys

DPI = 100
SMOOTHING = 0.1  # TrainReporter::kSmoothing in tools/train_report.hpp
MAX_PIXELS = 20000  # a side; matplotlib refuses images of 2^16 pixels or more


class BadInput(Exception):
    pass


class CannotWrite(Exception):
    pass


def check_output(path, metrics):
    """The PNG's path: not a directory, and not the metrics file itself."""
    if os.path.isdir(path):
        raise BadInput(f"{path}: cannot write: it is a directory")
    if os.path.exists(path) and os.path.exists(metrics) and os.path.samefile(path, metrics):
        raise BadInput(f"{path}: the PNG would overwrite the metrics file {metrics}")


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number_or_null(value):
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_metrics(path):
    """The records of a .jsonl file, checked: an integer step and a loss on every line, and
    each value the plot reads a number or null."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text (byte {e.start})")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{number}: not JSON: {e.msg}")
        except (RecursionError, ValueError) as e:  # nested too deep; an integer of thousands of digits
            raise BadInput(f"{path}:{number}: not JSON that can be read: {type(e).__name__}")
        if not isinstance(record, dict) or not is_integer(record.get("step")) or "loss" not in record:
            raise BadInput(f"{path}:{number}: not a metrics record (needs an integer 'step' and a 'loss')")
        for key in ("loss", "lr", "val_loss"):
            if not is_number_or_null(record.get(key)):
                raise BadInput(f"{path}:{number}: '{key}' must be a number or null")
        if not (record.get("val_step") is None or is_integer(record["val_step"])):
            raise BadInput(f"{path}:{number}: 'val_step' must be an integer or null")
        records.append(record)
    if not records:
        raise BadInput(f"{path}: no metrics records (the file is empty)")
    return records


def number(value):
    """A float, with null (a non-finite value) as NaN."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def smoothed(values):
    """The bias-corrected exponential moving average; NaN values are skipped."""
    out, average, count = [], 0.0, 0
    for v in values:
        if not math.isnan(v):
            average = (1 - SMOOTHING) * average + SMOOTHING * v
            count += 1
        out.append(average / (1 - (1 - SMOOTHING) ** count) if count else math.nan)
    return out


def set_scale(axis, values):
    finite = [v for v in values if not math.isnan(v)]
    if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
        axis.set_yscale("log")


def plot(records, title, out, width, height):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    loss = [number(r["loss"]) for r in records]
    lr = [number(r.get("lr")) for r in records]
    # Each validation once, at the step it was measured.
    validations = {}
    for r in records:
        if r.get("val_loss") is not None:
            validations[r.get("val_step", r["step"])] = float(r["val_loss"])

    # Agg truncates inches * dpi to whole pixels, and 203 / 100 * 100 is 202.99999999999997:
    # a millionth of a pixel more keeps the exact size.
    size = ((width + 1e-6) / DPI, (height + 1e-6) / DPI)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=size, dpi=DPI,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="training loss")
    top.plot(steps, smoothed(loss), color="tab:blue", linewidth=2, label="training loss, smoothed")
    if validations:
        val_steps = sorted(validations)
        top.plot(val_steps, [validations[s] for s in val_steps], color="tab:orange", marker="o", markersize=3,
                 linewidth=1.5, label="validation loss")
    set_scale(top, loss + list(validations.values()))
    top.set_ylabel("loss")
    top.set_title(title)
    top.grid(True, alpha=0.3)
    top.legend(loc="upper right")

    bottom.plot(steps, lr, color="tab:green", linewidth=1.5)
    set_scale(bottom, lr)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)

    fig.tight_layout()
    # Written next to its destination, then renamed: a reader never sees half a PNG, and a
    # failed write leaves the old one.
    partial = out + ".partial"
    try:
        fig.savefig(partial, dpi=DPI, format="png")
        os.replace(partial, out)
    except OSError as e:
        if os.path.isfile(partial):
            os.remove(partial)
        raise CannotWrite(f"{out}: cannot write: {e.strerror}")
    finally:
        plt.close(fig)


def have_matplotlib():
    """Whether matplotlib imports. Debian's python3-matplotlib serves /usr/bin/python3: when the python3
    on PATH (pyenv, a virtual environment) lacks it, the script runs again under /usr/bin/python3."""
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        system = "/usr/bin/python3"
        if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system):
            os.execv(system, [system] + sys.argv)
        return False


def main():
    parser = argparse.ArgumentParser(description="Plot the loss, validation loss and learning rate of an anvil run.")
    parser.add_argument("metrics", help="the .jsonl file of `anvil train --metrics`")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="pixels (default 1200)")
    parser.add_argument("--height", type=int, default=600, help="pixels (default 600)")
    args = parser.parse_args()
    try:
        if not (200 <= args.width <= MAX_PIXELS and 200 <= args.height <= MAX_PIXELS):
            raise BadInput(f"--width and --height: from 200 to {MAX_PIXELS} pixels, got {args.width}x{args.height}")
        check_output(args.output, args.metrics)
        records = read_metrics(args.metrics)
    except BadInput as e:
        print(f"plot_metrics: {e}", file=sys.stderr)
        return 2
    if not have_matplotlib():
        print("plot_metrics: matplotlib is missing: run tools/setup.sh (Debian: apt-get install python3-matplotlib)",
              file=sys.stderr)
        return 1
    try:
        plot(records, os.path.basename(args.metrics), args.output, args.width, args.height)
    except CannotWrite as e:
        print(f"plot_metrics: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
