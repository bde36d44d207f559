"""The fast recipe against airbench94's ingredients: each ingredient our recipe lacks, switched
on alone (and all together) on the plain and InstaHide inside k = 4 rows, short runs on the
same data and machine, to rank them (`FastRecipe`'s options; benchmarks/airbench94.py is the
published recipe itself).

    python benchmarks/recipe_ablation.py                        # results/accuracy/ablation.json
    python benchmarks/recipe_ablation.py --methods inside4-abs --variants baseline,lookahead --epochs 10

Every run uses one secret key per method (a key file in $XDG_CACHE_HOME/instahide/ablation,
never committed), so the variants of a method train on the same encodings, and the same model
seed: what differs between two rows of a method is the ingredient. One more baseline run with
another key and seed measures the run-to-run spread that an ingredient's gain must exceed. Runs are appended to the JSON
after each one; `python benchmarks/doc_tables.py` prints the ablation table from it. Alternating
flips across epochs are not ablated: the fused encoder derives each term's flip from the key.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from instahide.cli.train import random_subsets
from instahide.datasets import default_data_dir, load_cifar10
from instahide.shards import key_from_file
from instahide.torch.recipe import FastRecipe, train_fast

from provenance import provenance
from time_to_accuracy import RESULTS, device_name, make_encoder, method_recipe

KEYS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instahide" / "ablation"
NOISE = "baseline (another seed and key)"  # measures run-to-run spread: the yardstick for the others
VARIANTS: dict[str, dict] = {
    "baseline": {},
    NOISE: {},
    "identity (dirac) init": {"dirac_init": True},
    "BatchNorm: frozen scale and 64x bias lr": {"bn_frozen_scale": True, "bn_bias_lr": 64.0},
    "BatchNorm momentum 0.4": {"bn_momentum": 0.4},
    "lookahead": {"lookahead": True},
    "multi-crop TTA": {"multi_crop_tta": True},
    "uncentred whitening with its bias trained 3 epochs": {"whiten_uncentred": True, "whiten_bias_epochs": 3},
}
VARIANTS["all of the above"] = {k: v for changes in VARIANTS.values() for k, v in changes.items()}
METHODS = ("plain", "inside4-abs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every run (1 to 200)")
    parser.add_argument("--limit", type=int, help="train on this many images (a smoke run)")
    parser.add_argument("--test-limit", type=int, help="test on this many images")
    parser.add_argument("--seed", type=int, default=0, help="model initialization (the same for every run)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--out", default=str(RESULTS / "ablation.json"), help="the JSON file (runs are appended)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not 1 <= args.epochs <= 200:
        parser.error(f"--epochs {args.epochs}: must be 1 to 200")
    for option, value in (("--limit", args.limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 256:
            parser.error(f"{option} {value}: at least 256 (one batch)")
    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        parser.error(f"--out {out}: its folder does not exist")
    data = Path(args.data)
    train_x, train_y, test_x, test_y = random_subsets(load_cifar10("train", data_dir=data),
                                                      load_cifar10("test", data_dir=data), args.limit,
                                                      args.test_limit, args.seed)
    runs = json.loads(out.read_text()) if out.exists() else []
    KEYS.mkdir(parents=True, exist_ok=True)
    for method in methods:
        for variant in variants:
            other = variant == NOISE
            key, _ = key_from_file(KEYS / f"{method}{'-other' if other else ''}.key")
            seed = args.seed + 1 if other else args.seed
            recipe = method_recipe(FastRecipe.cpu(**VARIANTS[variant]), method, args.epochs)
            encoder = make_encoder(method, recipe, data, key)
            code = provenance()
            started = time.perf_counter()
            _, curve = train_fast(train_x, train_y, encoder, test_x, test_y, recipe, num_classes=10, seed=seed)
            run = {"method": method, "variant": variant, "changes": VARIANTS[variant], "epochs": args.epochs,
                   "final_accuracy": curve[-1]["test_accuracy"],
                   "best_accuracy": max(r["test_accuracy"] for r in curve),
                   "seconds": round(curve[-1]["seconds"], 1), "wall_seconds": round(time.perf_counter() - started, 1),
                   "curve": [{**r, "seconds": round(r["seconds"], 2)} for r in curve], "train_images": len(train_x),
                   "test_images": len(test_x), "seed": seed, "device": device_name(torch.device("cpu")),
                   "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
                   "load": round(os.getloadavg()[0], 2), **code}
            runs.append(run)
            out.write_text(json.dumps(runs, indent=1))
            print(f"{method}, {variant}: {100 * run['final_accuracy']:.2f}% after {args.epochs} epochs, "
                  f"{run['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
