"""The tables of docs/privacy.md.

    python benchmarks/privacy_table.py OUT.json [--tier1-images 50]
    python benchmarks/privacy_table.py --challenge results/privacy-challenge-DATE.json [...]

The first form runs Tier 1 (mixing known) on CIFAR-10 test images, for inside k=4, inside k=6
and cross 2+4 (Tiny-ImageNet public patches), T in (1, 3, 5, 10, 20, 50); each row's encoder key
derives from the row's name, so a rerun attacks the same encodings. It prints one JSON line per
row, writes all rows to OUT.json, and prints the markdown table (about 80 s on 2 cores).

The second runs nothing: it prints the Tier 2 tables (encodings and labels only, scored as the
InstaHide Challenge scores) from the rows of benchmarks/privacy_challenge.py: per setting and T,
the number of keys, median and worst challenge Max_SSIM and images above SSIM 0.5, chance,
seconds.
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

from provenance import provenance

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
TS = (1, 3, 5, 10, 20, 50)


def encoder(setting, pool, name):
    key = hashlib.sha256(name.encode()).digest()  # reproducible rows; real users' keys are random
    return attacks.challenge_encoder(setting, MEAN, STD, pool=pool, key=key)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?")
    parser.add_argument("--challenge", nargs="+", metavar="JSON",
                        help="print the challenge tables from benchmarks/privacy_challenge.py rows and exit")
    parser.add_argument("--tier1-images", type=int, default=50)
    args = parser.parse_args()
    if args.challenge:
        rows = [row for path in args.challenge for row in json.loads(open(path).read())]
        print(challenge_markdown(rows))
        return
    if args.out is None:
        parser.error("OUT.json is required unless --challenge is given")
    torch.set_num_threads(1)  # on the shared 2-core VM, 2 torch threads ran 10x slower than 1
    images, labels = load_cifar10("test")
    order = np.random.default_rng(0).permutation(len(images))
    pool = instahide.PublicPool.from_tar(default_data_dir() / "tiny-imagenet-val.tar", progress=False)
    rows = []
    start = time.perf_counter()

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    keep = order[:args.tier1_images]
    code = provenance()
    for setting in attacks.SETTINGS:
        for t in TS:
            name = f"tier 1 {setting} T={t}"
            scores = attacks.run_known_mixing(images[keep], labels[keep], encoder(setting, pool, name), t)
            record(dict(tier=1, setting=setting, T=t, images=len(keep), **scores.summary(), **code))
    # the noise-model reconstruction of Tier 2 given the true private mixing (public patches
    # unknown, treated as noise): reconstruct_em's own upper bound, cross 2+4, 100 images, T = 50
    keep = order[:100]
    name = "em cross 2+4 T=50"
    record(dict(tier=1, setting="cross 2+4", T=50, images=len(keep), method="reconstruct_em, private mixing known",
                **em_known_private_mixing(images[keep], labels[keep], encoder("cross 2+4", pool, name), 50).summary(),
                **code))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(markdown(rows))
    print(f"total {time.perf_counter() - start:.0f} s")


def em_known_private_mixing(images, labels, encoder, t):
    """`reconstruct_em` with each encoding's private images and coefficients known and the rest
    (cross mode's public patches) left to its noise model; the global sign from the public
    sign prior, as Tier 2 chooses it."""
    from instahide.attacks.encodings_only import _apply_sign_prior, fit_sign_prior, public_crops, reconstruct_em
    from instahide.attacks.known_mixing import _to_pixels

    challenge = attacks.make_challenge(images, labels, encoder, t)
    start = time.perf_counter()
    ids = np.concatenate([k.index[:, :k.private_terms] for k in challenge.keys])
    weights = np.concatenate([k.lam[:, :k.private_terms] for k in challenge.keys]).astype(np.float32)
    solved, _ = reconstruct_em(np.abs(challenge.encodings), ids, weights, len(images), 1.0 - weights.sum(axis=1))
    prior = fit_sign_prior(public_crops(2000, pool=encoder.public), challenge.mean, challenge.std)
    recovered = _to_pixels(_apply_sign_prior(solved, challenge.std, prior), challenge.mean, challenge.std)
    return attacks.score(recovered, challenge.images, time.perf_counter() - start)


def markdown(rows):
    lines = ["", "| setting | T | mean SSIM | max SSIM | SSIM > 0.5 | SSIM > 0.9 | mean PSNR (dB) | chance SSIM | "
                 "seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["setting"], str(r["T"]), f"{r['mean_ssim']:.2f}", f"{r['max_ssim']:.2f}",
                 f"{r['fraction_above_0.5']:.2f}", f"{r['fraction_above_0.9']:.2f}", f"{r['mean_psnr']:.1f}",
                 f"{r['chance_ssim']:.2f}", f"{r['seconds']:.0f}"]
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
