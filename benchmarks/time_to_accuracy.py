"""Time to accuracy on CIFAR-10: the fast recipe (instahide.recipe) trained plainly and on
InstaHide encodings, test accuracy on the plain test images after every epoch.

Writes benchmarks/results/accuracy/<device>-<date>.json (one entry per method: method, model,
device, epochs, seconds, best_accuracy, curve, reached, privacy, settings, load) after every
epoch, so an interrupted run keeps what it measured, and a plot of test accuracy against
wall-clock training seconds (log scale) beside it. Rows already in the file for other methods
are kept, so methods may be run in separate invocations (and sessions).

    python benchmarks/time_to_accuracy.py --methods plain,inside4-abs --epochs 16,40
    python benchmarks/time_to_accuracy.py --methods plain --epochs 2 --limit 2000 --out /tmp/smoke.json

Methods: plain; inside4-abs and inside4-signed (InstaHide inside k = 4, the net reads |x| or
the signed encoding); cross-abs (2 private + 4 Tiny-ImageNet patches); mixup4 (sign="none").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import instahide
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, default_data_dir, load_cifar10
from instahide.recipe import FastRecipe, train_fast

TARGETS = (50, 70, 80, 85, 90, 93, 94)
RESULTS = Path(__file__).resolve().parent / "results" / "accuracy"

PRIVACY = {
    "plain": "none",
    "inside4-abs": "InstaHide inside k=4: obfuscation, no formal guarantee; broken by published attacks "
                   "(docs/privacy.md)",
    "inside4-signed": "InstaHide inside k=4: obfuscation, no formal guarantee; broken by published attacks "
                      "(docs/privacy.md)",
    "cross-abs": "InstaHide cross 2+4: obfuscation, no formal guarantee; broken by published attacks "
                 "(docs/privacy.md)",
    "mixup4": "none (k-way mixup, no mask: the mixture is published)",
}


def make_encoder(method: str, recipe: FastRecipe, data_dir: Path) -> instahide.Encoder:
    options = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=recipe.translate, hflip=True, layout="NHWC")
    if method == "plain":
        return instahide.Encoder(k=1, sign="none", **options)
    if method in ("inside4-abs", "inside4-signed"):
        return instahide.Encoder(k=4, **options)
    if method == "mixup4":
        return instahide.Encoder(k=4, sign="none", **options)
    if method == "cross-abs":
        pool = instahide.PublicPool.from_tar(data_dir / "tiny-imagenet-val.tar", progress=False)
        return instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3, **options)
    raise ValueError(f"unknown method {method!r}")


def reached(curve: list[dict]) -> dict:
    """For each target (percent): the first epoch and training second at which it was reached."""
    out = {}
    for target in TARGETS:
        hit = next((row for row in curve if row["test_accuracy"] * 100 >= target), None)
        out[str(target)] = None if hit is None else {"epoch": hit["epoch"], "seconds": round(hit["seconds"], 1)}
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def save(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"methods": list(entries.values())}, indent=1) + "\n")
    os.replace(temporary, path)


def plot(path: Path, entries: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for entry in entries.values():
        curve = entry["curve"]
        axes.plot([row["seconds"] for row in curve], [100 * row["test_accuracy"] for row in curve], marker=".",
                  label=f"{entry['method']} (best {100 * entry['best_accuracy']:.1f}%)")
    for target in (85, 90, 94):
        axes.axhline(target, color="gray", linewidth=0.5, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("training wall-clock seconds (evaluation excluded)")
    axes.set_ylabel("CIFAR-10 test accuracy, plain test images (%)")
    device = next(iter(entries.values()))["device"] if entries else ""
    axes.set_title(f"Time to accuracy, fast recipe, {device}")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="plain,inside4-abs")
    parser.add_argument("--epochs", default="16,40", help="epochs per method (one number, or one per method)")
    parser.add_argument("--size", choices=["cpu", "full"], default=None,
                        help="network width: cpu (half widths) or full (default: full on a GPU, cpu on a CPU)")
    parser.add_argument("--limit", type=int, help="train on this many images (a smoke run)")
    parser.add_argument("--test-limit", type=int, help="test on this many images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--seed", type=int, default=0, help="model initialization only (keys come from the OS)")
    parser.add_argument("--out", help="the JSON file (default: results/accuracy/<device>-<date>.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    methods = args.methods.split(",")
    epochs = [int(e) for e in args.epochs.split(",")]
    epochs = epochs * len(methods) if len(epochs) == 1 else epochs
    if len(epochs) != len(methods):
        parser.error("--epochs: one number, or one per method")
    size = args.size or ("full" if device.type == "cuda" else "cpu")
    data_dir = Path(args.data)
    train_x, train_y = load_cifar10("train", data_dir=data_dir)
    test_x, test_y = load_cifar10("test", data_dir=data_dir)
    pick = np.random.default_rng(args.seed)
    if args.limit:
        keep = np.sort(pick.permutation(len(train_x))[:args.limit])
        train_x, train_y = train_x[keep], train_y[keep]
    if args.test_limit:
        keep = np.sort(pick.permutation(len(test_x))[:args.test_limit])
        test_x, test_y = test_x[keep], test_y[keep]
    if device.type == "cuda":  # the whole set resident on the GPU, encoded there
        train_x, train_y = torch.from_numpy(train_x).to(device), torch.from_numpy(train_y).to(device)

    name = device_name(device)
    date = datetime.date.today().isoformat()
    slug = "".join(c if c.isalnum() else "-" for c in (name.split(",")[0] if device.type == "cuda" else "cpu"))
    out = Path(args.out) if args.out else RESULTS / f"{slug.lower()}-{date}.json"
    entries = {}
    if out.exists():
        entries = {e["method"]: e for e in json.loads(out.read_text())["methods"]}
    for method, method_epochs in zip(methods, epochs, strict=True):
        base = FastRecipe() if size == "full" else FastRecipe.cpu()
        # mixtures (all but plain) are divided by their RMS (FastNet.transform); the net reads
        # |x| where a mask flips signs, except for the signed-input row
        recipe = base.replace(epochs=method_epochs, abs_input=method in ("inside4-abs", "cross-abs"),
                              rms_input=method != "plain")
        encoder = make_encoder(method, recipe, data_dir)
        entry = {"method": method, "model": f"FastNet widths {list(recipe.widths)}", "device": name,
                 "date": date, "epochs": 0, "seconds": 0.0, "best_accuracy": 0.0, "curve": [],
                 "reached": reached([]), "privacy": PRIVACY[method],
                 "settings": {**{k: v for k, v in vars(recipe).items()}, "encoder": repr(encoder),
                              "train_images": len(train_x), "test_images": len(test_x),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "data": "CIFAR-10 (JPEG q75 copy)"},
                 "load": []}
        entries[method] = entry

        def on_epoch(row, entry=entry):
            row = {**row, "seconds": round(row["seconds"], 2), "train_loss": round(row["train_loss"], 4)}
            entry["curve"].append(row)
            entry["load"].append(round(os.getloadavg()[0], 2))  # the machine's 1-minute load at each epoch
            entry["epochs"], entry["seconds"] = row["epoch"], row["seconds"]
            entry["best_accuracy"] = max(entry["best_accuracy"], row["test_accuracy"])
            entry["reached"] = reached(entry["curve"])
            save(out, entries)
            if not args.quiet:
                print(f"{method} epoch {row['epoch']}: {100 * row['test_accuracy']:.2f}% after {row['seconds']:.0f} s"
                      f" (train loss {row['train_loss']:.3f}, load {entry['load'][-1]})", flush=True)

        started = time.perf_counter()
        train_fast(train_x, train_y, encoder, test_x, test_y, recipe, device=device, num_classes=10, seed=args.seed,
                   on_epoch=on_epoch, progress=not args.quiet and sys.stderr.isatty())
        entry["wall_seconds"] = round(time.perf_counter() - started, 1)  # with evaluation and setup
        save(out, entries)
        plot(out.with_suffix(".png"), entries)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
