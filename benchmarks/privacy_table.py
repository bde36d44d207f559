"""The Tier 1 rows of docs/privacy.md (mixing known).

    python benchmarks/privacy_table.py benchmarks/results/privacy/tier1.json [--tier1-images 50]

Runs Tier 1 on CIFAR-10 test images, for inside k=4, inside k=6 and cross 2+4 (the challenge
pool's public patches), T in (1, 3, 5, 10, 20, 50), and Tier 2's reconstruction given the true
private mixing (cross 2+4, 100 images, T = 50); each row's encoder key derives from the row's
name, so a rerun attacks the same encodings. It prints one JSON line per row and writes all rows,
each with its commit, to OUT.json (about 3 minutes on 2 cores); `python benchmarks/doc_tables.py`
puts the table in the docs.
"""
import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

import instahide
from instahide import attacks
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, default_data_dir, load_cifar10

from provenance import provenance

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
TS = (1, 3, 5, 10, 20, 50)


def encoder(setting, pool, name, augmentation="none"):
    key = hashlib.sha256(name.encode()).digest()  # reproducible rows; real users' keys are random
    return attacks.challenge_encoder(setting, MEAN, STD, pool=pool, key=key, augmentation=augmentation)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", help="the JSON file of the rows")
    parser.add_argument("--tier1-images", type=int, default=50, help="private images per row (2 to 10000)")
    args = parser.parse_args()
    if not 2 <= args.tier1_images <= 10_000:
        parser.error(f"--tier1-images {args.tier1_images}: must be 2 to 10000")
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"out {args.out}: its folder does not exist")
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
    # Tier 1 with the training recipes' crop and flip fused in, the windows known too (inside k = 4)
    for augmentation in ("translate 2 + flip", "pad 4 + flip"):
        for t in (3, 5, 10, 20):
            name = f"tier 1 inside k=4 {augmentation} T={t}"
            windowed = encoder("inside k=4", pool, name, augmentation)
            scores = attacks.run_known_windows(images[keep], labels[keep], windowed, t)
            record(dict(tier=1, setting="inside k=4", T=t, images=len(keep), method=f"{augmentation}, windows known",
                        attack="known_windows", **scores.summary(), **code))
    # the noise-model reconstruction of Tier 2 given the true private mixing (public patches
    # unknown, treated as noise): reconstruct_em's own upper bound, cross 2+4, 100 images, T = 50
    keep = order[:100]
    name = "em cross 2+4 T=50"
    record(dict(tier=1, setting="cross 2+4", T=50, images=len(keep), method="reconstruct_em, private mixing known",
                **em_known_private_mixing(images[keep], labels[keep], encoder("cross 2+4", pool, name), 50).summary(),
                **code))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
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


if __name__ == "__main__":
    main()
