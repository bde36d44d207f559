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
    args = parser.parse_args(argv)
    if args.command == "info":
        import instahide

        print(json.dumps(instahide.build_info(), indent=2))
        return 0
    if training is None:
        parser.error(f"`instahide train` needs torch ({args.missing}): pip install torch")
    training.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
