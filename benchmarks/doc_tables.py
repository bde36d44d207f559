"""The measured tables of README.md, docs/privacy.md and benchmarks/RESULTS.md, printed from the
committed results files, each row with the commit that measured it and marked stale where the
code behind it changed since (benchmarks/provenance.py).

    python benchmarks/doc_tables.py            # rewrite the tables in the docs
    python benchmarks/doc_tables.py --check    # exit 1, with a diff, where a doc differs
    python benchmarks/doc_tables.py --print privacy-challenge

A table sits in a doc between `<!-- table: NAME -->` and `<!-- end table -->`; the text
between is this script's and is replaced whole. tests/test_doc_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from provenance import REPO, staleness

RESULTS = REPO / "benchmarks" / "results"
DOCS = ("README.md", "docs/privacy.md", "benchmarks/RESULTS.md")
BLOCK = re.compile(r"(<!-- table: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)

PRIVACY_CHALLENGE = RESULTS / "privacy" / "challenge.json"
PRIVACY_AUGMENTED = RESULTS / "privacy" / "augmented.json"
PRIVACY_TIER1 = RESULTS / "privacy" / "tier1.json"
ACCURACY = RESULTS / "accuracy" / "cpu-2026-12-06.json"
THROUGHPUT_CPU = RESULTS / "throughput" / "cpu.json"
THROUGHPUT_GPU = RESULTS / "gpu-2026-11-27c-h100" / "gpu_check" / "gpu_throughput.json"
COMPARE = RESULTS / "compare" / "results.json"
ABLATION = RESULTS / "accuracy" / "ablation.json"
NOISE = "baseline (another seed and key)"  # recipe_ablation.py's run-to-run yardstick


def _load(path: Path):
    return json.loads(path.read_text())


class Commits:
    """The commit column: each row's short hash, with a footnote number where the row is stale;
    `notes()` lists why, one line per distinct reason."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def cell(self, rows: list[dict], kind: str) -> str:
        commits = sorted({(r.get("commit") or "none")[:7] for r in rows})
        reasons = sorted({reason for r in rows if (reason := staleness(r, kind))})
        marks = []
        for reason in reasons:
            if reason not in self.reasons:
                self.reasons.append(reason)
            marks.append(str(self.reasons.index(reason) + 1))
        return ", ".join(commits) + (f" (stale {', '.join(marks)})" if marks else "")

    def notes(self) -> str:
        if not self.reasons:
            return "No row is stale: the code behind each row is unchanged since the commit that measured it."
        return "\n".join(f"Stale {i + 1}: {reason}; rerun the row's command to refresh it." for i, reason in
                         enumerate(self.reasons))


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _groups(rows: list[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _privacy_rows(groups: dict[tuple, list[dict]], names: list[str], kind: str) -> str:
    commits = Commits()
    body = []
    for key, group in groups.items():
        def median(field, group=group):
            return float(np.median([r[field] for r in group]))

        images = group[0]["images"]
        body.append([*map(str, key), str(len(group)),
                     f"{median('challenge_max_ssim'):.2f} ({min(r['challenge_max_ssim'] for r in group):.2f})",
                     f"{median('challenge_mean_ssim'):.2f}",
                     f"{median('images_above_0_5'):.0f} ({min(r['images_above_0_5'] for r in group)}) of {images}",
                     f"{median('chance_ssim'):.2f}",
                     f"{median('cluster_purity'):.2f} ({median('chance_purity'):.2f})",
                     f"{median('seconds'):.0f}", commits.cell(group, kind)])
    header = [*names, "keys", "challenge Max_SSIM, median (worst)", "Mean_SSIM, median",
              "images above SSIM 0.5, median (worst)", "chance SSIM", "cluster purity (chance)", "seconds, median",
              "commit"]
    align = ["l"] * (len(names) - 1) + ["r"] * 8 + ["l"]  # T and the figures right-aligned
    return _table(header, align, body) + "\n\n" + commits.notes()


# Cross mode's public pools (privacy_challenge.py --pool): the default filters whole images.
POOLS = {"images": "", "patches": ", patches filtered one by one"}


def privacy_challenge() -> str:
    """Tier 2 without crop or flip, per setting and T: median and worst over fresh keys."""
    rows = [r for r in _load(PRIVACY_CHALLENGE) if r.get("augmentation", "none") == "none"]
    return _privacy_rows(_groups(rows, lambda r: (r["setting"] + POOLS[r.get("pool", "images")], r["T"])),
                         ["setting", "T"], "privacy")


def privacy_augmented() -> str:
    """Tier 2 on encodings with a training recipe's crop and flip fused in."""
    rows = _load(PRIVACY_AUGMENTED)
    groups = _groups(rows, lambda r: (r["setting"], r["augmentation"], r["T"]))
    kind = "privacy-augmented" if any(r.get("attack") == "augmented" for r in rows) else "privacy"
    return _privacy_rows(groups, ["setting", "augmentation", "T"], kind)


def privacy_tier1() -> str:
    """Tier 1 (mixing known), one key per row."""
    commits = Commits()
    body = [[r["setting"] + (f", {r['method']}" if "method" in r else ""), str(r["T"]), f"{r['mean_ssim']:.2f}",
             f"{r['max_ssim']:.2f}",
             f"{r['fraction_above_0.5']:.2f}", f"{r['fraction_above_0.9']:.2f}", f"{r['mean_psnr']:.1f}",
             f"{r['chance_ssim']:.2f}", f"{r['seconds']:.0f}",
             commits.cell([r], "privacy-augmented" if r.get("attack") == "known_windows" else "privacy")]
            for r in _load(PRIVACY_TIER1)]
    header = ["setting", "T", "mean SSIM", "max SSIM", "SSIM > 0.5", "SSIM > 0.9", "mean PSNR (dB)", "chance SSIM",
              "seconds", "commit"]
    return _table(header, ["l"] + ["r"] * 8 + ["l"], body) + "\n\n" + commits.notes()


# Readable names and protection of the time-to-accuracy methods.
METHODS = {
    "plain": ("plain", "none"),
    "inside4-abs": ("InstaHide inside k = 4, net reads \\|x\\|", "obfuscation, broken by published attacks"),
    "inside4-signed": ("InstaHide inside k = 4, signed input", "obfuscation, broken by published attacks"),
    "cross-abs": ("InstaHide cross 2 + 4, \\|x\\|", "obfuscation, broken by published attacks"),
    "mixup4": ("k-way mixup, k = 4 (no mask)", "none (the mixture is published)"),
    "dpsgd": ("DP-SGD (Opacus), same net with GroupNorm", "ε = 8 at δ = 1e-5 (differential privacy)"),
    "mpc": ("MPC, CrypTen 2 parties (extrapolated)", "cryptographic (MPC)"),
    "airbench94": ("airbench94, the published recipe (Jordan 2024), ported to the CPU", "none"),
}
TARGETS = ("70", "75", "80", "85", "90")


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _reached(entry: dict, target: str) -> dict | None:
    return next((row for row in entry["curve"] if 100 * row["test_accuracy"] >= float(target)), None)


def accuracy() -> str:
    """Time to accuracy: per run the best accuracy and the training time to each target, with
    the epoch and the ratio to the plain reference run (the unlabelled plain row)."""
    entries = _load(ACCURACY)["methods"]
    plain = next(e for e in entries if e["method"] == "plain" and "label" not in e)
    commits = Commits()
    body = []
    for entry in entries:
        name, protection = METHODS[entry["method"]]
        anchor = entry["method"] == "airbench94"
        if entry.get("settings", {}).get("widths", [32])[0] == 64 and not anchor:
            name += ", full-width net"
        name += ", its 9.9 epochs, multi-crop TTA at the end" if anchor else f", {entry['epochs']}-epoch schedule"
        cells = []
        for target in TARGETS:
            hit = _reached(entry, target)
            if hit is None:
                cells.append("not reached")
                continue
            base = _reached(plain, target)
            ratio = f", {hit['seconds'] / base['seconds']:.1f}x" if base and entry is not plain else ""
            cells.append(f"{_duration(hit['seconds'])} ({hit['epoch']}{ratio})")
        best = f"{100 * entry['best_accuracy']:.1f}% ({entry['epochs']})"
        body.append([name, best, *cells, protection, commits.cell([entry], "anchor" if anchor else "accuracy")])
    header = ["method", "best test accuracy (epochs)", *(f"time to {t}% (epoch, vs plain)" for t in TARGETS),
              "protection", "commit"]
    return (_table(header, ["l"] + ["r"] * (1 + len(TARGETS)) + ["l", "l"], body)
            + "\n\nRatios are to the plain row with the 40-epoch schedule. " + commits.notes())


def ablation() -> str:
    """The recipe against airbench94's ingredients: the latest run of each (method, variant), its
    final accuracy and the change against the method's baseline run."""
    if not ABLATION.exists():
        return "No ablation run yet: `python benchmarks/recipe_ablation.py`."
    latest: dict[tuple[str, str], dict] = {}
    for run in _load(ABLATION):
        latest[run["method"], run["variant"]] = run
    methods = list(dict.fromkeys(method for method, _ in latest))
    variants = list(dict.fromkeys(variant for _, variant in latest))
    commits = Commits()
    body = []
    for variant in variants:
        cells, runs = [], []
        for method in methods:
            run, base = latest.get((method, variant)), latest.get((method, "baseline"))
            if run is None:
                cells.append("–")
                continue
            runs.append(run)
            change = (f" ({100 * (run['final_accuracy'] - base['final_accuracy']):+.1f})"
                      if base is not None and variant != "baseline" else "")
            cells.append(f"{100 * run['final_accuracy']:.1f}%{change}")
        inside, base = latest.get(("inside4-abs", variant)), latest.get(("inside4-abs", "baseline"))
        other = latest.get(("inside4-abs", NOISE))
        verdict = "–"
        if inside is not None and base is not None and other is not None and "baseline" not in variant:
            gain, spread = (100 * (r["final_accuracy"] - base["final_accuracy"]) for r in (inside, other))
            verdict = ("above the spread" if gain > abs(spread) else
                       "below the spread" if gain < -abs(spread) else "within the spread")
        epochs = sorted({str(r["epochs"]) for r in runs})
        body.append([variant, "/".join(epochs), *cells, verdict, commits.cell(runs, "accuracy")])
    header = ["ingredient (alone)", "epochs", *(f"{METHODS[m][0]}, final test accuracy (vs baseline)" for m in methods),
              "on the InstaHide row", "commit"]
    return (_table(header, ["l"] + ["r"] * (1 + len(methods)) + ["l", "l"], body)
            + f"\n\nOne run each, the same key, seed and data per method; the last column compares the change on the "
              f"InstaHide row with the spread between its two baseline runs (\"{NOISE}\"), itself one measurement. "
            + commits.notes())


def throughput() -> str:
    """Encoder throughput, CPU and GPU, each row from one run against the baselines beside it."""
    commits = Commits()
    body = []
    cpu = _load(THROUGHPUT_CPU)
    by_impl = {r["impl"]: r for r in cpu["results"]}
    fused = by_impl["fused_cpu"]

    def versus(impl: str) -> str:
        other = by_impl.get(impl)
        return f"{fused['images_per_s'] / other['images_per_s']:.1f}x" if other else "–"

    body.append([f"CPU: {cpu['machine'].get('processor', 'CPU')}, {cpu['workload']['threads']} threads",
                 f"{cpu['workload']['batch']:,}", f"{fused['images_per_s']:,.0f}",
                 f"{fused['fraction_of_copy_paired']:.2f}", versus("torch_ops"), versus("numpy_vectorized"),
                 versus("numpy_reference"), commits.cell([cpu], "throughput")])
    gpu = _load(THROUGHPUT_GPU)
    case = {(r["impl"], r["batch"]): r for r in gpu["results"] if r["case"] == "cifar"}
    best = max((r for (impl, _), r in case.items() if impl == "fused_cuda"), key=lambda r: r["batch"])
    torch_ops = case.get(("torch_ops_cuda", best["batch"]))
    body.append([f"GPU: {gpu['device']}", f"{best['batch']:,}", f"{best['images_per_s']:,.0f}",
                 f"{best['fraction_of_copy']:.2f} (kernel {best['kernel_fraction_of_copy']:.2f})",
                 f"{best['images_per_s'] / torch_ops['images_per_s']:.1f}x" if torch_ops else "–", "–", "–",
                 commits.cell([gpu], "throughput")])
    header = ["device", "batch", "images/s", "of copy", "vs authors' torch ops", "vs fast numpy", "vs numpy reference",
              "commit"]
    return _table(header, ["l"] + ["r"] * 6 + ["l"], body) + "\n\n" + commits.notes()


def compare() -> str:
    """Training step slowdowns against plain training, one run of benchmarks/compare/run.py."""
    report = _load(COMPARE)
    commits = Commits()
    body = [[r["method"], r["kind"], f"{r['slowdown_vs_plain']:,.2f}x" if r["slowdown_vs_plain"] < 100
             else f"{r['slowdown_vs_plain']:,.0f}x", r["privacy"]]
            for r in report["results"] if r.get("status") == "ok"]
    commit = commits.cell([report], "throughput")
    return (_table(["method", "kind", "slowdown vs plain", "protection"], ["l", "l", "r", "l"], body)
            + f"\n\nOne run, commit {commit}. " + commits.notes())


TABLES: dict[str, Callable[[], str]] = {
    "privacy-challenge": privacy_challenge, "privacy-augmented": privacy_augmented, "privacy-tier1": privacy_tier1,
    "accuracy": accuracy, "ablation": ablation, "throughput": throughput, "compare": compare,
}


def results_commits() -> set[str]:
    """Every commit the results files name (a checkout must hold them all to judge staleness)."""
    rows: list[dict] = []
    for path in (PRIVACY_CHALLENGE, PRIVACY_AUGMENTED, PRIVACY_TIER1):
        rows += _load(path)
    rows += _load(ACCURACY)["methods"] + [_load(THROUGHPUT_CPU), _load(THROUGHPUT_GPU), _load(COMPARE)]
    rows += _load(ABLATION) if ABLATION.exists() else []
    return {row["commit"] for row in rows if row.get("commit")}


def render(text: str) -> str:
    """`text` with every table block's body replaced by the table's current rendering."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}: one of {sorted(TABLES)}")
        return f"{match[1]}{TABLES[name]()}\n{match[4]}"

    return BLOCK.sub(replace, text)


def differences() -> dict[str, str]:
    """{doc: unified diff} for every doc whose tables differ from their rendering."""
    found = {}
    for doc in DOCS:
        text = (REPO / doc).read_text()
        rendered = render(text)
        if rendered != text:
            found[doc] = "".join(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True), doc,
                                                      f"{doc} (rendered)"))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a doc differs")
    parser.add_argument("--print", choices=sorted(TABLES), metavar="TABLE", help=f"print one of {sorted(TABLES)}")
    args = parser.parse_args(argv)
    if args.print:
        print(TABLES[args.print]())
        return 0
    if args.check:
        found = differences()
        for diff in found.values():
            print(diff)
        return 1 if found else 0
    for doc in DOCS:
        path = REPO / doc
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            path.write_text(rendered)
            print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
