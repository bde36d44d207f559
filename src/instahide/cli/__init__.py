"""The `instahide` command line: demo, encode, train, bench, attack, info.

This package holds the parser, `main` (the `instahide` entry point) and the `info` command;
every other command is a module of its own (`demo`, `encode`, `train`, `bench`, `attack`), with
its options (`add_arguments`) and its code. `demo` and `train` need torch: they are imported
when the parser is built, and without torch those commands say so.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from . import attack as attack_command
from . import bench as bench_command
from . import encode as encode_command


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs keep their line breaks (the examples); options show their defaults, if any."""

    def _get_help_string(self, action):
        # a switch's default says nothing a reader can use ("--no-augment ... (default: True)")
        if action.default is None or action.default is False or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


EXAMPLES = {
    "demo": """examples:
  instahide demo                         # digits + bundled photos, about a minute on a CPU
  instahide demo --seconds 180 --out runs/demo
  instahide demo --data cifar10          # CIFAR-10 from $INSTAHIDE_DATA or ../shared/data
  instahide demo --data ~/pictures --size 64   # a folder of class subfolders
  instahide demo --modes vanilla,instahide --k 2""",
    "encode": """examples:
  instahide encode cifar10 --split train --out enc/train --key-file secret.key
  instahide encode digits --mode cross --k 6 --private-terms 2 --out enc/digits --key-file secret.key
  instahide encode images.npz --epochs 10 --shard-size 5000 --out enc/mine --key-file secret.key
  instahide encode ~/pictures --size 64 --out enc/pictures --key-file secret.key

The key file is read when it exists, else a fresh key from the OS is written there (mode 0600).
Rerun the same command to resume an interrupted run: the output ends identical to an
uninterrupted one. Without --key-file the key is not saved and the run cannot be resumed.
Shards: shard-NNNNN.npz with `encodings` (N, C, H, W) and soft `labels` (N, classes);
manifest.json lists parameters and SHA-256 checksums (never the key).""",
    "train": """examples:
  instahide train --mode instahide --k 4 --model preact_resnet18 --epochs 200 --out runs/inside
  instahide train --mode cross --k 6 --private-terms 2 --dom 0.3 --out runs/cross
  instahide train --mode vanilla --model small_cnn --epochs 5 --limit 5000 --out runs/plain
  torchrun --nproc_per_node 2 -m instahide train --mode instahide --out runs/ddp""",
    "bench": """examples:
  instahide bench                        # k=4, batches of 512, on the CPU
  instahide bench --k 6 --batch 4096 --json bench.json
  instahide bench --device cuda --batch 65536""",
    "attack": """examples:
  instahide attack --tier 0              # what the configuration gives away, no computation
  instahide attack --tier 1 --images 50 -T 10 --grid tier1.png
  instahide attack --tier 2 --images 100 -T 50 --json tier2.json
  instahide attack --tier 1 --k 6 --cross 2""",
    "info": """examples:
  instahide info
  python -m instahide info""",
}


def _command(commands, name: str, help: str, description: str | None = None):
    return commands.add_parser(name, help=help, description=description or help, epilog=EXAMPLES[name],
                               formatter_class=_Formatter)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="instahide", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fast InstaHide encoding, training and checks. InstaHide is not a privacy guarantee: "
                    "see docs/privacy.md.",
        epilog="start with:\n  instahide demo\n\n`instahide COMMAND --help` shows each command's options and examples.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    missing_torch = None
    demo = _command(commands, "demo", "encode, train vanilla vs InstaHide for a minute, show accuracy and a PNG",
                    "Trains the same small CNN plainly and on InstaHide encodings (inside-dataset, and cross-dataset "
                    "with photo patches) on data shipped inside pip packages: no download, no files. Prints test "
                    "accuracies and writes encodings.png (originals beside their encodings). Needs torch, "
                    "scikit-learn, scikit-image and Pillow: pip install 'instahide[demo]'.")
    try:
        from . import demo as demo_module
        from . import train as training
    except ImportError as error:  # torch missing
        missing_torch = str(error)
        demo_module = training = None
    else:
        demo_module.add_arguments(demo)
    encode = _command(commands, "encode", "encode a data set into .npz shards with soft labels (resumable)")
    encode_command.add_arguments(encode)
    train = _command(commands, "train", "train a model on InstaHide encodings (torch needed)")
    if training is not None:
        training.add_arguments(train)
    bench = _command(commands, "bench", "encoder throughput on this machine: fused vs numpy reference vs memory copy")
    bench_command.add_arguments(bench)
    attack = _command(commands, "attack", "run published attacks on our own encodings (docs/privacy.md)")
    attack_command.add_arguments(attack)
    _command(commands, "info", "version, CPU features, threads, and whether CUDA is compiled in and usable")
    return parser, demo_module, training, missing_torch


def main(argv=None) -> int:
    parser, demo_module, training, missing_torch = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("demo", "train") and missing_torch is not None:
        parser.error(f"`instahide {args.command}` needs torch ({missing_torch}): pip install 'instahide[demo]'")
    try:
        if args.command == "info":
            print(json.dumps(info(), indent=2))
        elif args.command == "demo":
            demo_module.run(args)
        elif args.command == "train":
            training.run(args)
        elif args.command == "encode":
            return encode_command.run(args)
        elif args.command == "bench":
            return bench_command.command(args)
        elif args.command == "attack":
            return attack_command.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"instahide {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:  # an optional dependency (scikit-learn, scikit-image, Pillow, torch)
        print(f"instahide {args.command}: error: {error}; pip install 'instahide[demo]' installs what the commands "
              "use", file=sys.stderr)
        return 1
    return 0


_CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
                 "amx_tile", "asimd", "sve", "sve2")


def cpu_features() -> list[str]:
    """The vector instruction sets this CPU offers, of those that matter for encoding (Linux:
    /proc/cpuinfo; elsewhere an empty list)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    offered = set(line.split(":", 1)[1].split())
                    return [name for name in _CPU_FEATURES if name in offered]
    except OSError:
        pass
    return []


def info() -> dict:
    import numpy

    import instahide

    report = instahide.build_info()
    report["cuda_usable"] = report["cuda_devices"] > 0
    report.update(machine=platform.machine(), cpu_features=cpu_features(), python=platform.python_version(),
                  numpy=numpy.__version__)
    try:
        import torch
    except ImportError:
        report["torch"] = None
    else:
        report.update(torch=torch.__version__, torch_cuda_available=torch.cuda.is_available())
    return report
