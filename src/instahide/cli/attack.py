"""`instahide attack`: the attacks of instahide.attacks (Tier 0, 1 or 2) on our own encodings
of CIFAR-10 test images, with the scores printed and optionally saved (JSON, a PNG)."""

from __future__ import annotations

import json


def add_arguments(attack) -> None:
    attack.add_argument("--tier", type=int, choices=[0, 1, 2], default=1,
                        help="0: audit of the configuration; 1: recovery with the mixing known (an upper bound); "
                             "2: recovery from |encodings| and labels alone")
    attack.add_argument("--images", type=int, default=50, help="private images: a random subset of CIFAR-10 test")
    attack.add_argument("--k", type=int, default=4, help="images mixed per encoding (private and public)")
    attack.add_argument("--cross", type=int, metavar="PRIVATE", default=None,
                        help="cross mode: PRIVATE of the k terms are private, the rest Tiny-ImageNet patches "
                             "(e.g. --k 6 --cross 2, dom 0.3: the InstaHide Challenge's setting)")
    attack.add_argument("--min-keypoints", type=int, default=40,
                        help="cross mode: public images need more than this many SIFT keypoints (the challenge's "
                             "filter; 0: none)")
    attack.add_argument("--encodings-per-image", "-T", type=int, default=10)
    attack.add_argument("--similarity", choices=["handmade", "network"], default="handmade",
                        help="Tier 2: hand-made edge correlation, or a small network trained on public encodings")
    attack.add_argument("--train-seconds", type=float, default=90.0, help="Tier 2 network: training time")
    attack.add_argument("--rounds", type=int, default=2,
                        help="Tier 2: rounds of reassignment by likelihood and reconstruction")
    attack.add_argument("--seed", type=int, default=0, help="picks the images (the keys stay secret)")
    attack.add_argument("--json", help="write the scores here")
    attack.add_argument("--grid", help="write a PNG: originals, one encoding each, recoveries")


def run(args) -> int:
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
    if args.tier == 1:
        scores = attacks.run_known_mixing(images[keep], labels[keep], encoder, args.encodings_per_image)
    else:
        scores = attacks.run_encodings_only(images[keep], labels[keep], encoder, args.encodings_per_image,
                                            similarity=args.similarity, train_seconds=args.train_seconds,
                                            rounds=args.rounds, seed=args.seed)
    summary = scores.summary()
    summary.update(tier=args.tier, images=len(keep), k=args.k, private_terms=encoder.private_terms,
                   encodings_per_image=args.encodings_per_image)
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

    if args.cross is None:
        return Encoder(k=args.k, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    pool = challenge_pool(min_keypoints=args.min_keypoints or None)
    return Encoder(k=args.k, mean=CIFAR10_MEAN, std=CIFAR10_STD, private_terms=args.cross, public=pool, patch_size=32,
                   dom=0.3)
