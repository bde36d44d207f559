"""The InstaHide Challenge's setting, attacked from encodings and soft labels only (Tier 2),
scored with the challenge's own metrics: one row per (setting, T, key).

    python benchmarks/privacy_challenge.py --settings "cross 2+4" -T 50 --keys 2
    python benchmarks/privacy_challenge.py --settings "inside k=4,inside k=6" -T 5,10,20,50 --keys 5
    python benchmarks/privacy_challenge.py --settings "inside k=4" --augmentations "translate 2 + flip" -T 50

Each row draws a fresh secret key from the OS (the attack never sees it; `key_id` is the first
8 hex digits of its SHA-256, to tell rows apart) and a fresh random subset of 100 CIFAR-10 test
images (`subset_seed`, recorded), encodes every image T times (inside k = 4 or 6, or cross 2+4
with SIFT-filtered Tiny-ImageNet patches: instahide.attacks.challenge_pool), publishes
|encodings| and soft labels in a random order, and runs the hand-made-similarity attack
(instahide.attacks.run_encodings_only). Rows are appended to
benchmarks/results/privacy-challenge-<date>.json (or --out) after each run, so an interrupted
run keeps what it measured; `python benchmarks/doc_tables.py` prints the docs' tables from them
(median and worst per setting and T).

Each row records the commit it was measured at (`provenance`), so that a table can mark rows
whose attack code changed since. The key of a row that scores below --keep-keys-below is kept
in a local folder (never committed; $XDG_CACHE_HOME/instahide/privacy-keys), and the row's
`replay` is the `instahide attack` command that reruns it on the same key and images.
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
from instahide.shards import write_key_file

from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instahide" / "privacy-keys"


def device() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def replay_command(setting: str, augmentation: str, t: int, count: int, seed: int, key_path: Path) -> str:
    """The `instahide attack` command that reruns a row on its key and images."""
    options = dict(attacks.SETTINGS[setting], **attacks.AUGMENTATIONS[augmentation])
    command = f"instahide attack --tier 2 --k {options['k']}"
    if "private_terms" in options:
        command += f" --cross {options['private_terms']}"
    if options["pad"]:
        command += f" --pad {options['pad']}"
    if options["hflip"]:
        command += " --hflip"
    return command + f" -T {t} --images {count} --seed {seed} --key-file {key_path}"


def run_row(setting: str, augmentation: str, t: int, images, labels, pool, count: int, rounds: int,
            grid: str | None, keep_key_below: float) -> dict:
    key = secrets.token_bytes(32)
    subset_seed = secrets.randbits(32)
    keep = np.random.default_rng(subset_seed).permutation(len(images))[:count]
    encoder = attacks.challenge_encoder(setting, CIFAR10_MEAN, CIFAR10_STD, pool=pool, key=key,
                                        augmentation=augmentation)
    load = os.getloadavg()[0]
    code = provenance()
    scores = attacks.run_encodings_only(images[keep], labels[keep], encoder, t, rounds=rounds,
                                        seed=int(subset_seed))
    summary = scores.summary()
    if grid:
        attacks.save_grid(grid, scores)
    key_id = hashlib.sha256(key).hexdigest()[:8]
    replay = None
    if summary["challenge_max_ssim"] < keep_key_below:
        KEYS.mkdir(parents=True, exist_ok=True)
        path = KEYS / f"{key_id}.key"
        write_key_file(path, key)
        replay = replay_command(setting, augmentation, t, count, int(subset_seed), path)
    return {"setting": setting, "augmentation": augmentation, "T": t, "key_id": key_id,
            "challenge_max_ssim": summary["challenge_max_ssim"], "challenge_mean_ssim": summary["challenge_mean_ssim"],
            "challenge_min_l2": summary["challenge_min_l2"], "challenge_mean_l2": summary["challenge_mean_l2"],
            "images_above_0_5": int(round(summary["fraction_above_0.5"] * count)), "images": count,
            "mean_ssim": summary["mean_ssim"], "chance_ssim": summary["chance_ssim"],
            "cluster_purity": summary["cluster_purity"], "chance_purity": summary["chance_purity"],
            "seconds": summary["seconds"], "device": device(), "date": datetime.date.today().isoformat(),
            "load": round(load, 2), "subset_seed": int(subset_seed), "rounds": rounds, "similarity": "handmade",
            "attack": "encodings_only",
            "commit": code["commit"], "dirty": code["dirty"], "replay": replay}


def public_pool(kind: str, min_keypoints: int | None, windows_per_image: int):
    """Cross mode's public pool: whole images filtered (the default recreation) or patches
    filtered one by one (`PublicPool.from_patches`: 51x51 windows of the 64x64 images, the area a
    32x32 patch of the 40x40-scaled image covers, counted at 64x64 and scaled to 32x32)."""
    if kind == "images":
        pool = attacks.challenge_pool(min_keypoints=min_keypoints)
        print(f"public pool: {pool.build_report['kept']} of {pool.build_report['images']} Tiny-ImageNet images "
              f"with more than {min_keypoints} SIFT keypoints", flush=True)
        return pool
    from instahide.datasets import default_data_dir
    from instahide.pool import PublicPool, tar_images

    images = tar_images(default_data_dir() / "tiny-imagenet-val.tar", progress=False)
    seed = secrets.randbits(32)  # public data: recorded, so that the pool can be rebuilt
    pool = PublicPool.from_patches(images, window=51, size=attacks.challenge.PATCH_SIZE, per_image=windows_per_image,
                                   min_keypoints=min_keypoints, rng=np.random.default_rng(seed), progress=False)
    pool.build_report["seed"] = seed
    print(f"public pool: kept {pool.build_report['kept']} of {pool.build_report['windows']} 51x51 windows of "
          f"{len(images)} Tiny-ImageNet images with more than {min_keypoints} SIFT keypoints", flush=True)
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="inside k=4,inside k=6,cross 2+4",
                        help=f"comma-separated, of {sorted(attacks.SETTINGS)}")
    parser.add_argument("--augmentations", default="none",
                        help=f"comma-separated, of {sorted(attacks.AUGMENTATIONS)}: the crop and flip fused into the "
                             "encoder")
    parser.add_argument("-T", "--encodings-per-image", default="50", help="comma-separated T values")
    parser.add_argument("--keys", type=int, default=5, help="fresh keys (and image subsets) per setting and T")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of reassignment and reconstruction")
    parser.add_argument("--min-keypoints", type=int, default=attacks.challenge.MIN_KEYPOINTS,
                        help="cross mode: the public pool's SIFT filter (0: none)")
    parser.add_argument("--pool", choices=("images", "patches"), default="images",
                        help="cross mode's public pool: 'images', Tiny-ImageNet images filtered whole at 64x64 "
                             "(instahide.attacks.challenge_pool), or 'patches', 51x51 windows filtered one by one "
                             "at 64x64 and scaled to 32x32 (the paper's per-patch filter: PublicPool.from_patches)")
    parser.add_argument("--windows-per-image", type=int, default=4,
                        help="--pool patches: random windows tried per Tiny-ImageNet image (1 to 64)")
    parser.add_argument("--out", help="the JSON file (default: results/privacy-challenge-<date>.json); rows are "
                                      "appended to what it holds")
    parser.add_argument("--grid", help="a PNG of the first cross-mode row's recoveries (originals, one "
                                       "encoding each, recoveries)")
    parser.add_argument("--keep-keys-below", type=float, default=0.8, metavar="MAX_SSIM",
                        help=f"keep the key of a row whose challenge Max_SSIM is below this in {KEYS} (never "
                             "committed), with the row's replay command")
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",")]
    for setting in settings:
        if setting not in attacks.SETTINGS:
            parser.error(f"--settings: unknown setting {setting!r}: choose from {sorted(attacks.SETTINGS)}")
    augmentations = [a.strip() for a in args.augmentations.split(",")]
    for augmentation in augmentations:
        if augmentation not in attacks.AUGMENTATIONS:
            parser.error(f"--augmentations: unknown {augmentation!r}: choose from {sorted(attacks.AUGMENTATIONS)}")
    try:
        ts = [int(t) for t in args.encodings_per_image.split(",")]
    except ValueError:
        parser.error(f"-T: comma-separated whole numbers, got {args.encodings_per_image!r}")
    if min(ts) < 1:
        parser.error(f"-T: each value must be at least 1, got {args.encodings_per_image!r}")
    if args.keys < 1:
        parser.error(f"--keys must be at least 1, got {args.keys}")
    if args.images < 2:
        parser.error(f"--images must be at least 2, got {args.images}")
    if args.rounds < 0:
        parser.error(f"--rounds must be at least 0, got {args.rounds}")
    if not 1 <= args.windows_per_image <= 64:
        parser.error(f"--windows-per-image must be 1 to 64, got {args.windows_per_image}")
    if args.min_keypoints < 0:
        parser.error(f"--min-keypoints must be at least 0, got {args.min_keypoints}")
    torch.set_num_threads(1)  # on the shared 2-core VM, 2 torch threads ran 10x slower than 1
    out = Path(args.out or RESULTS / f"privacy-challenge-{datetime.date.today().isoformat()}.json")
    for option, path in (("--out", out), ("--grid", args.grid)):
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"{option}: the folder of {path} does not exist")
    rows = json.loads(out.read_text()) if out.exists() else []
    images, labels = load_cifar10("test")
    pool = None
    if any("cross" in s for s in settings):
        pool = public_pool(args.pool, args.min_keypoints or None, args.windows_per_image)
    grid = args.grid
    for setting in settings:
        for augmentation in augmentations:
            for t in ts:
                for _ in range(args.keys):
                    start = time.perf_counter()
                    cross_grid = grid if "cross" in setting and augmentation == "none" else None
                    row = run_row(setting, augmentation, t, images, labels, pool, args.images, args.rounds,
                                  cross_grid, args.keep_keys_below)
                    if "cross" in setting:
                        row["pool"] = args.pool
                        row["pool_build"] = pool.build_report
                        if args.pool == "patches" and row["replay"]:  # `instahide attack` builds the image pool
                            row["replay"] += " (replays on the image pool, not this patch pool)"
                    if cross_grid:
                        grid = None
                    rows.append(row)
                    out.write_text(json.dumps(rows, indent=1))
                    print(f"{setting}, {augmentation}, T={t}, key {row['key_id']}: challenge Max_SSIM "
                          f"{row['challenge_max_ssim']:.3f}, {row['images_above_0_5']}/{row['images']} above 0.5, "
                          f"purity {row['cluster_purity']:.2f}, {row['seconds']:.0f} s attack, "
                          f"{time.perf_counter() - start:.0f} s in all"
                          + (f"; replay: {row['replay']}" if row["replay"] else ""), flush=True)


if __name__ == "__main__":
    main()
