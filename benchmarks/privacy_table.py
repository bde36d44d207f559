"""The tables of docs/privacy.md: what each attack tier recovers from our own encodings of
CIFAR-10 test images, for inside k=4, inside k=6 and cross 2+4 (Tiny-ImageNet public patches).

    python benchmarks/privacy_table.py OUT.json [--tier1-images 50] [--tier2-images 100] [--grid docs/x.png]
    python benchmarks/privacy_table.py --challenge results/privacy-challenge-DATE.json [...]

The second form runs nothing: it prints the challenge-metric tables of docs/privacy.md from the
rows of benchmarks/privacy_challenge.py (per setting and T: the number of keys, median and worst
challenge Max_SSIM and images above SSIM 0.5, chance, seconds).

Tier 1 (mixing known): 50 images, T in (1, 3, 5, 10, 20, 50), every setting. Tier 2 (encodings
and labels only): 100 images, the rows of TIER2 below. Each row's encoder key derives from the
row's name, so a rerun attacks the same encodings. Prints one JSON line per row, writes all rows
to OUT.json, and prints the markdown tables. About 17 minutes on a shared 2-core VM
(Tier 1 80 s, Tier 2 15 min; `--tier2-rows 0,2` picks rows).
"""
import argparse
import hashlib
import json
import time

import numpy as np
import torch

import instahide
from instahide import attacks
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, default_data_dir, load_cifar10

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
TS = (1, 3, 5, 10, 20, 50)
SETTINGS = {"inside k=4": dict(k=4), "inside k=6": dict(k=6), "cross 2+4": dict(k=6, private_terms=2, dom=0.3)}
TIER2 = [("inside k=4", 50, "handmade"), ("inside k=4", 50, "network"), ("inside k=4", 20, "handmade"),
         ("inside k=6", 50, "handmade"), ("cross 2+4", 50, "handmade"), ("inside k=4", 10, "handmade"),
         ("inside k=4", 5, "handmade")]


def encoder(setting, pool, name):
    key = hashlib.sha256(name.encode()).digest()  # reproducible rows; real users' keys are random
    options = dict(SETTINGS[setting])
    if "private_terms" in options:
        options.update(public=pool, patch_size=32)
    return instahide.Encoder(mean=MEAN, std=STD, key=key, **options)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?")
    parser.add_argument("--challenge", nargs="+", metavar="JSON",
                        help="print the challenge tables from benchmarks/privacy_challenge.py rows and exit")
    parser.add_argument("--tier1-images", type=int, default=50)
    parser.add_argument("--tier2-images", type=int, default=100)
    parser.add_argument("--tiers", default="1,2")
    parser.add_argument("--train-seconds", type=float, default=100.0)
    parser.add_argument("--tier2-rows", help="comma-separated indices into TIER2 (default: all)")
    parser.add_argument("--grid", help="PNG grid of the first Tier 2 row (8 images)")
    args = parser.parse_args()
    if args.challenge:
        rows = [row for path in args.challenge for row in json.loads(open(path).read())]
        print(challenge_markdown(rows))
        return
    if args.out is None:
        parser.error("OUT.json is required unless --challenge is given")
    torch.set_num_threads(1)  # on the shared 2-core VM, 2 torch threads ran 10x slower than 1
    tiers = {int(t) for t in args.tiers.split(",")}
    images, labels = load_cifar10("test")
    order = np.random.default_rng(0).permutation(len(images))
    pool = instahide.PublicPool.from_tar(default_data_dir() / "tiny-imagenet-val.tar", progress=False)
    rows = []
    start = time.perf_counter()

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    if 1 in tiers:
        keep = order[:args.tier1_images]
        for setting in SETTINGS:
            for t in TS:
                name = f"tier 1 {setting} T={t}"
                scores = attacks.run_known_mixing(images[keep], labels[keep], encoder(setting, pool, name), t)
                record(dict(tier=1, setting=setting, T=t, images=len(keep), **scores.summary()))
    if 2 in tiers:
        keep = order[:args.tier2_images]
        chosen = range(len(TIER2)) if args.tier2_rows is None else [int(i) for i in args.tier2_rows.split(",")]
        for i in chosen:
            setting, t, similarity = TIER2[i]
            name = f"tier 2 {setting} T={t}"  # both similarities attack the same encodings
            scores = attacks.run_encodings_only(images[keep], labels[keep], encoder(setting, pool, name), t,
                                                similarity=similarity, train_seconds=args.train_seconds)
            record(dict(tier=2, setting=setting, T=t, images=len(keep), similarity=similarity, **scores.summary()))
            if i == 0 and args.grid:
                attacks.save_grid(args.grid, scores)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(markdown(rows))
    print(f"total {time.perf_counter() - start:.0f} s")


def markdown(rows):
    lines = []
    for tier in (1, 2):
        chosen = [r for r in rows if r["tier"] == tier]
        if not chosen:
            continue
        extra = " similarity | cluster purity (chance) |" if tier == 2 else ""
        lines += ["", f"| setting | T |{extra} mean SSIM | max SSIM | SSIM > 0.5 | SSIM > 0.9 | mean PSNR (dB) | "
                      "chance SSIM | seconds |",
                  "|---|---:|" + ("---|---:|" if tier == 2 else "") + "---:|---:|---:|---:|---:|---:|---:|"]
        for r in chosen:
            cells = [r["setting"], str(r["T"])]
            if tier == 2:
                cells += [r["similarity"], f"{r['cluster_purity']:.2f} ({r['chance_purity']:.2f})"]
            cells += [f"{r['mean_ssim']:.2f}", f"{r['max_ssim']:.2f}", f"{r['fraction_above_0.5']:.2f}",
                      f"{r['fraction_above_0.9']:.2f}", f"{r['mean_psnr']:.1f}", f"{r['chance_ssim']:.2f}",
                      f"{r['seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def challenge_markdown(rows):
    """Per (setting, T), in the order first seen: median and worst over keys."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["setting"], r["T"]), []).append(r)
    lines = ["| setting | T | keys | challenge Max_SSIM, median (worst) | Mean_SSIM, median | images above SSIM 0.5 "
             "of 100, median (worst) | chance SSIM | cluster purity (chance) | seconds, median | device |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (setting, t), group in groups.items():
        def median(key, group=group):
            return float(np.median([r[key] for r in group]))

        worst_ssim = min(r["challenge_max_ssim"] for r in group)
        worst_images = min(r["images_above_0_5"] for r in group)
        lines.append(f"| {setting} | {t} | {len(group)} | {median('challenge_max_ssim'):.2f} ({worst_ssim:.2f}) | "
                     f"{median('challenge_mean_ssim'):.2f} | {median('images_above_0_5'):.0f} ({worst_images}) | "
                     f"{median('chance_ssim'):.2f} | {median('cluster_purity'):.2f} ({median('chance_purity'):.2f}) | "
                     f"{median('seconds'):.0f} | {group[0]['device']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
