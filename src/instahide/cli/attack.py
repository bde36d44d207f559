"""`instahide attack`: the attacks of instahide.attacks (Tier 0, 1 or 2) on our own encodings
of CIFAR-10 test images, with the scores printed and optionally saved (JSON, a PNG)."""

from __future__ import annotations

import argparse
import json

from ._checks import available_memory, need, writable_file

# the crop and flip each `instahide train` recipe fuses into the encoder (attacks.AUGMENTATIONS)
RECIPE_AUGMENTATIONS = {"none": "none", "paper": "pad 4 + flip", "fast": "translate 2 + flip"}
# Tier 2's memory grows with the square of the encodings (similarity and Gram matrices, the
# label gate): about this many bytes per pair, measured to within a factor of two
TIER2_BYTES_PER_PAIR = 24
# Tier 2's time at 5,000 encodings on the 2-core development machine, hand-made similarity
TIER2_SECONDS_AT_5000 = 110.0


def add_arguments(attack) -> None:
    attack.add_argument("--tier", type=int, choices=[0, 1, 2], default=1,
                        help="0: audit of the configuration; 1: recovery with the mixing known (an upper bound); "
                             "2: recovery from |encodings| and labels alone")
    attack.add_argument("--images", type=int, default=50,
                        help="private images: a random subset of CIFAR-10 test (2 to 10000)")
    attack.add_argument("--k", type=int, default=4, help="images mixed per encoding (private and public; 2 to 16)")
    attack.add_argument("--cross", type=int, metavar="PRIVATE", default=None,
                        help="cross mode: PRIVATE of the k terms are private, the rest Tiny-ImageNet patches "
                             "(e.g. --k 6 --cross 2, dom 0.3: the InstaHide Challenge's setting)")
    attack.add_argument("--min-keypoints", type=int, default=40,
                        help="cross mode: public images need more than this many SIFT keypoints (the challenge's "
                             "filter; 0: none)")
    attack.add_argument("--augment", choices=sorted(RECIPE_AUGMENTATIONS), default="none",
                        help="the crop and flip fused into the encoder as `instahide train` does: paper (its "
                             "default recipe: pad 4 + flip), fast (--recipe fast: translate 2 + flip), none (the "
                             "challenge's encodings)")
    attack.add_argument("--pad", type=int, default=None,
                        help="window offsets in [-PAD, PAD] per term (overrides --augment's; 0 to 16)")
    attack.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                        help="a random horizontal flip per term (overrides --augment's)")
    attack.add_argument("--encodings-per-image", "-T", type=int, default=10, help="encodings of each image (1 to 1000)")
    attack.add_argument("--similarity", choices=["handmade", "network"], default="handmade",
                        help="Tier 2: hand-made edge correlation, or a small network trained on public encodings")
    attack.add_argument("--train-seconds", type=float, default=90.0, help="Tier 2 network: training time")
    attack.add_argument("--rounds", type=int, default=2,
                        help="Tier 2: rounds of reassignment by likelihood and reconstruction (0 to 20)")
    attack.add_argument("--seed", type=int, default=0, help="picks the images (the keys stay secret)")
    attack.add_argument("--key-file",
                        help="the encoder's 32-byte secret key: read if the file exists, else a fresh key from the OS "
                             "is written there (mode 0600), so that a run can be replayed (default: a fresh key, "
                             "never written)")
    attack.add_argument("--json", help="write the scores here")
    attack.add_argument("--grid", help="write a PNG: originals, one encoding each, recoveries")


def _augmentation(args) -> tuple[int, bool]:
    from ..attacks import AUGMENTATIONS

    options = AUGMENTATIONS[RECIPE_AUGMENTATIONS[args.augment]]
    pad = options["pad"] if args.pad is None else args.pad
    hflip = options["hflip"] if args.hflip is None else args.hflip
    return pad, hflip


def check_arguments(args) -> None:
    """Every option in range, and the outputs writable, before any work: a ValueError names the
    option, its value and what it may be."""
    need(2 <= args.images <= 10_000, "--images", args.images, "2 to 10000 (CIFAR-10 has 10,000 test images)")
    need(2 <= args.k <= 16, "--k", args.k, "2 to 16")
    need(1 <= args.encodings_per_image <= 1000, "-T/--encodings-per-image", args.encodings_per_image, "1 to 1000")
    if args.cross is not None:
        need(1 <= args.cross < args.k, "--cross", args.cross, f"1 to k - 1 = {args.k - 1}")
    need(args.min_keypoints >= 0, "--min-keypoints", args.min_keypoints, "0 or more")
    need(args.pad is None or 0 <= args.pad <= 16, "--pad", args.pad, "0 to 16")
    need(0 <= args.rounds <= 20, "--rounds", args.rounds, "0 to 20")
    need(0 < args.train_seconds <= 24 * 3600, "--train-seconds", args.train_seconds, "above 0, at most a day")
    pad, hflip = _augmentation(args)
    if args.tier == 1 and (pad or hflip) and args.cross is not None:
        raise ValueError(f"--tier 1 --cross with --augment {args.augment} (pad {pad}, flip {hflip}): the known-mixing "
                         "attack with windows handles inside mode only; use --augment none, or leave out --cross")
    for option, path in (("--json", args.json), ("--grid", args.grid), ("--key-file", args.key_file)):
        writable_file(option, path)
    if args.tier == 2:
        encodings = args.images * args.encodings_per_image
        need_bytes = TIER2_BYTES_PER_PAIR * encodings ** 2
        available = available_memory()
        if available is not None and need_bytes > 0.8 * available:
            raise ValueError(f"--images {args.images} x -T {args.encodings_per_image} = {encodings:,} encodings: "
                             f"Tier 2 needs about {need_bytes / 2**30:.1f} GiB (its similarity matrices grow with "
                             f"the square of the encodings), {available / 2**30:.1f} GiB are available; use fewer "
                             "images or a smaller T")
        minutes = TIER2_SECONDS_AT_5000 * (encodings / 5000) ** 2 / 60
        if minutes > 5:
            print(f"instahide attack: {encodings:,} encodings; expect roughly {minutes:.0f} minutes on 2 cores (the "
                  "time grows with the square of the encodings)", flush=True)


def run(args) -> int:
    check_arguments(args)
    import numpy as np

    from .. import attacks
    from ..datasets import load_cifar10

    encoder = _attack_encoder(args)
    if args.tier == 0:
        for finding in attacks.audit(encoder, args.encodings_per_image):
            print("-", finding)
        return 0
    images, labels = load_cifar10("test")
    keep = np.random.default_rng(args.seed).permutation(len(images))[:args.images]
    if args.tier == 1 and (encoder.pad or encoder.hflip):
        scores = attacks.run_known_windows(images[keep], labels[keep], encoder, args.encodings_per_image)
    elif args.tier == 1:
        scores = attacks.run_known_mixing(images[keep], labels[keep], encoder, args.encodings_per_image)
    else:
        scores = attacks.run_encodings_only(images[keep], labels[keep], encoder, args.encodings_per_image,
                                            similarity=args.similarity, train_seconds=args.train_seconds,
                                            rounds=args.rounds, seed=args.seed)
    summary = scores.summary()
    summary.update(tier=args.tier, images=len(keep), k=args.k, private_terms=encoder.private_terms,
                   encodings_per_image=args.encodings_per_image, pad=encoder.pad, hflip=encoder.hflip)
    if args.tier == 2:
        summary.update(similarity=args.similarity)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.grid:
        attacks.save_grid(args.grid, scores)
    return 0


def _attack_encoder(args):
    from ..attacks import challenge_pool
    from ..datasets import CIFAR10_MEAN, CIFAR10_STD
    from ..encoder import Encoder
    from ..shards import key_from_file

    key = None
    if args.key_file:
        key, created = key_from_file(args.key_file)
        if created:
            print(f"instahide attack: wrote a fresh secret key to {args.key_file} (mode 0600): rerun with it to replay "
                  "this run", flush=True)
    pad, hflip = _augmentation(args)
    options = dict(k=args.k, mean=CIFAR10_MEAN, std=CIFAR10_STD, key=key, pad=pad, hflip=hflip)
    if args.cross is None:
        return Encoder(**options)
    pool = challenge_pool(min_keypoints=args.min_keypoints or None)
    return Encoder(**options, private_terms=args.cross, public=pool, patch_size=32, dom=0.3)
