"""Test accuracy per epoch of `instahide train` logs, one line per run, as a PNG.

    python benchmarks/plot_training.py OUT.png LABEL=runs/vanilla/log.csv LABEL=runs/instahide/log.csv ...

Needs matplotlib.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/log.csv")
    parser.add_argument("--title", default="CIFAR-10 test accuracy per epoch")
    args = parser.parse_args(argv)
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"out {args.out}: its folder does not exist")
    for run in args.runs:
        label, _, path = run.rpartition("=")  # labels may hold "=" (k=4)
        if not label or not Path(path).is_file():
            parser.error(f"runs: {run!r}: expected LABEL=path/to/log.csv of an existing file")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for run in args.runs:
        label, _, path = run.rpartition("=")
        with open(path) as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) + 1 for r in rows]
        accuracy = [100 * float(r["test_accuracy"]) for r in rows]
        ax.plot(epochs, accuracy, marker="o", label=label)
    ax.axhline(10, color="gray", linestyle=":", linewidth=1, label="chance (10 classes)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
