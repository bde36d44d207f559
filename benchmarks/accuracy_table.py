"""The time-to-accuracy table (markdown) from a results/accuracy JSON of time_to_accuracy.py:
per method the best test accuracy, and for each target the training time to reach it (and the
epoch), with InstaHide's and the others' ratios to plain.

    python benchmarks/accuracy_table.py benchmarks/results/accuracy/cpu-2026-12-06.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGETS = ("80", "85", "90")


def duration(seconds: float) -> str:
    if seconds >= 3600 * 24:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def first_reached(entry: dict, target: str) -> dict | None:
    """The first row of the method's curve at or above `target` percent."""
    return next((row for row in entry["curve"] if 100 * row["test_accuracy"] >= float(target)), None)


def table(entries: list[dict], targets=TARGETS) -> str:
    # the reference: the row named "plain" (unlabelled), else the first plain run
    plain = next((e for e in entries if e["method"] == "plain" and "label" not in e),
                 next((e for e in entries if e["method"] == "plain"), None))
    head = "| method | best accuracy (epochs) | " + " | ".join(f"time to {t}% (epoch, vs plain)" for t in targets)
    lines = [head + " | privacy |", "|---|---:|" + "---:|" * len(targets) + "---|"]
    for entry in entries:
        cells = []
        for target in targets:
            hit = first_reached(entry, target)
            if hit is None:
                cells.append("not reached")
                continue
            text = f"{duration(hit['seconds'])} ({hit['epoch']}"
            base = first_reached(plain, target) if plain else None
            if base and entry is not plain:
                text += f", {hit['seconds'] / base['seconds']:.1f}x"
            cells.append(text + ")")
        name = entry.get("label", entry["method"]) + (" (extrapolated)" if entry.get("extrapolated") else "")
        best = f"{100 * entry['best_accuracy']:.1f}% ({entry['epochs']})"
        lines.append(f"| {name} | {best} | " + " | ".join(cells) + f" | {entry['privacy']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--targets", default=",".join(TARGETS), help="accuracy targets in percent")
    args = parser.parse_args(argv)
    entries = json.loads(args.results.read_text())["methods"]
    print(table(entries, args.targets.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
