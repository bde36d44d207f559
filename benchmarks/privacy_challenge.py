"""The InstaHide Challenge's setting, attacked from encodings and soft labels only (Tier 2),
scored with the challenge's own metrics: one row per (setting, T, key).

    python benchmarks/privacy_challenge.py --settings "cross 2+4" -T 50 --keys 2
    python benchmarks/privacy_challenge.py --settings "inside k=4,inside k=6" -T 5,10,20,50 --keys 5

Each row draws a fresh secret key from the OS (the attack never sees it; `key_id` is the first
8 hex digits of its SHA-256, to tell rows apart) and a fresh random subset of 100 CIFAR-10 test
images (`subset_seed`, recorded), encodes every image T times (inside k = 4 or 6, or cross 2+4
with SIFT-filtered Tiny-ImageNet patches: instahide.attacks.challenge_pool), publishes
|encodings| and soft labels in a random order, and runs the hand-made-similarity attack
(instahide.attacks.run_encodings_only). Rows are appended to
benchmarks/results/privacy-challenge-<date>.json (or --out) after each run, so an interrupted
run keeps what it measured; `python benchmarks/privacy_table.py --challenge FILE` prints the
tables (median and worst per setting and T).
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import secrets
import time
from pathlib import Path

import numpy as np
import torch

from instahide import attacks
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, load_cifar10

RESULTS = Path(__file__).resolve().parent / "results"


def device() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def run_row(setting: str, t: int, images, labels, pool, count: int, rounds: int, grid: str | None) -> dict:
    key = secrets.token_bytes(32)
    subset_seed = secrets.randbits(32)
    keep = np.random.default_rng(subset_seed).permutation(len(images))[:count]
    encoder = attacks.challenge_encoder(setting, CIFAR10_MEAN, CIFAR10_STD, pool=pool, key=key)
    load = os.getloadavg()[0]
    scores = attacks.run_encodings_only(images[keep], labels[keep], encoder, t, rounds=rounds,
                                        seed=int(subset_seed))
    summary = scores.summary()
    if grid:
        attacks.save_grid(grid, scores)
    return {"setting": setting, "T": t, "key_id": hashlib.sha256(key).hexdigest()[:8],
            "challenge_max_ssim": summary["challenge_max_ssim"], "challenge_mean_ssim": summary["challenge_mean_ssim"],
            "challenge_max_l2": summary["challenge_max_l2"], "challenge_mean_l2": summary["challenge_mean_l2"],
            "images_above_0_5": int(round(summary["fraction_above_0.5"] * count)), "images": count,
            "mean_ssim": summary["mean_ssim"], "chance_ssim": summary["chance_ssim"],
            "cluster_purity": summary["cluster_purity"], "chance_purity": summary["chance_purity"],
            "seconds": summary["seconds"], "device": device(), "date": datetime.date.today().isoformat(),
            "load": round(load, 2), "subset_seed": int(subset_seed), "rounds": rounds, "similarity": "handmade"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="inside k=4,inside k=6,cross 2+4",
                        help=f"comma-separated, of {sorted(attacks.SETTINGS)}")
    parser.add_argument("-T", "--encodings-per-image", default="50", help="comma-separated T values")
    parser.add_argument("--keys", type=int, default=5, help="fresh keys (and image subsets) per setting and T")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of reassignment and reconstruction")
    parser.add_argument("--min-keypoints", type=int, default=attacks.challenge.MIN_KEYPOINTS,
                        help="cross mode: the public pool's SIFT filter (0: none)")
    parser.add_argument("--out", help="the JSON file (default: results/privacy-challenge-<date>.json); rows are "
                                      "appended to what it holds")
    parser.add_argument("--grid", help="a PNG of the first cross-mode row's recoveries (originals, one "
                                       "encoding each, recoveries)")
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",")]
    for setting in settings:
        if setting not in attacks.SETTINGS:
            parser.error(f"unknown setting {setting!r}: choose from {sorted(attacks.SETTINGS)}")
    ts = [int(t) for t in args.encodings_per_image.split(",")]
    torch.set_num_threads(1)  # see privacy_table.py
    out = Path(args.out or RESULTS / f"privacy-challenge-{datetime.date.today().isoformat()}.json")
    rows = json.loads(out.read_text()) if out.exists() else []
    images, labels = load_cifar10("test")
    pool = None
    if any("cross" in s for s in settings):
        pool = attacks.challenge_pool(min_keypoints=args.min_keypoints or None)
        print(f"public pool: {pool.build_report['kept']} of {pool.build_report['images']} Tiny-ImageNet images "
              f"with more than {args.min_keypoints} SIFT keypoints", flush=True)
    grid = args.grid
    for setting in settings:
        for t in ts:
            for _ in range(args.keys):
                start = time.perf_counter()
                row = run_row(setting, t, images, labels, pool, args.images, args.rounds,
                              grid if "cross" in setting else None)
                if "cross" in setting:
                    grid = None
                rows.append(row)
                out.write_text(json.dumps(rows, indent=1))
                print(f"{setting} T={t} key {row['key_id']}: challenge Max_SSIM {row['challenge_max_ssim']:.3f}, "
                      f"{row['images_above_0_5']}/{row['images']} above 0.5, purity {row['cluster_purity']:.2f}, "
                      f"{row['seconds']:.0f} s attack, {time.perf_counter() - start:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
