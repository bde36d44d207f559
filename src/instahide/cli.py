"""The `instahide` command line: `instahide info`, `instahide train ...`."""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="instahide", description="Fast InstaHide encoding, training and checks")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="how the package was built and which devices it can use")
    train = commands.add_parser("train", help="train a model on InstaHide encodings (torch needed)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:
        from . import train as training
    except ImportError as error:  # torch missing
        training = None
        train.set_defaults(missing=str(error))
    else:
        training.add_arguments(train)
    attack = commands.add_parser("attack", help="run published attacks on our own encodings (docs/privacy.md)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    attack.add_argument("--tier", type=int, choices=[0, 1], default=1,
                        help="0: audit of the configuration; 1: recovery with the mixing known (an upper bound)")
    attack.add_argument("--images", type=int, default=50, help="private images: a random subset of CIFAR-10 test")
    attack.add_argument("--k", type=int, default=4)
    attack.add_argument("--encodings-per-image", "-T", type=int, default=10)
    attack.add_argument("--seed", type=int, default=0, help="picks the images (the keys stay secret)")
    attack.add_argument("--json", help="write the scores here")
    args = parser.parse_args(argv)
    if args.command == "attack":
        return _attack(args)
    if args.command == "info":
        import instahide

        print(json.dumps(instahide.build_info(), indent=2))
        return 0
    if training is None:
        parser.error(f"`instahide train` needs torch ({args.missing}): pip install torch")
    training.run(args)
    return 0


def _attack(args) -> int:
    import numpy as np

    from . import attacks
    from .datasets import load_cifar10
    from .encoder import Encoder

    encoder = Encoder(k=args.k, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    if args.tier == 0:
        for finding in attacks.audit(encoder, args.encodings_per_image):
            print("-", finding)
        return 0
    images, labels = load_cifar10("test")
    keep = np.random.default_rng(args.seed).permutation(len(images))[:args.images]
    summary = attacks.run_known_mixing(images[keep], labels[keep], encoder, args.encodings_per_image).summary()
    summary.update(tier=1, images=len(keep), k=args.k, encodings_per_image=args.encodings_per_image)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
