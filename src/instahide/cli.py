"""The `instahide` command line: demo, encode, train, bench, attack, info."""

from __future__ import annotations

import argparse
import json
import platform
import sys


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs keep their line breaks (the examples); options show their defaults, if any."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
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
    _encode_arguments(encode)
    train = _command(commands, "train", "train a model on InstaHide encodings (torch needed)")
    if training is not None:
        training.add_arguments(train)
    bench = _command(commands, "bench", "encoder throughput on this machine: fused vs numpy reference vs memory copy")
    bench.add_argument("--batch", type=int, default=512, help="rows per encode call")
    bench.add_argument("--k", type=int, default=4, help="images mixed per encoding")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--images", type=int, default=16_384, help="random 32x32x3 uint8 images to encode")
    bench.add_argument("--seconds", type=float, default=2.0, help="timing per implementation")
    bench.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores this process may use)")
    bench.add_argument("--json", help="write the results here")
    attack = _command(commands, "attack", "run published attacks on our own encodings (docs/privacy.md)")
    _attack_arguments(attack)
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
            return _encode(args)
        elif args.command == "bench":
            return _bench(args)
        elif args.command == "attack":
            return _attack(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"instahide {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:  # an optional dependency (scikit-learn, scikit-image, Pillow, torch)
        print(f"instahide {args.command}: error: {error}; pip install 'instahide[demo]' installs what the commands "
              "use", file=sys.stderr)
        return 1
    return 0


# --- info -------------------------------------------------------------------------------

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


# --- encode -----------------------------------------------------------------------------

def _encode_arguments(parser) -> None:
    parser.add_argument("data", help="digits, cifar10, an .npz with images and labels, an .npy of images (with "
                                     "--labels), a class tar file, or a folder of class subfolders")
    parser.add_argument("--out", required=True, help="output folder (created; a rerun resumes in it)")
    parser.add_argument("--key-file", help="the 32-byte secret key: read if it exists, else created there (0600)")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="cifar10 and tar/batches")
    parser.add_argument("--labels", help="class ids (.npy) for an .npy of images")
    parser.add_argument("--size", type=int, help="resize folder images (and digits) to size x size")
    parser.add_argument("--mode", choices=["instahide", "cross", "mixup"], default="instahide",
                        help="instahide: k private images; cross: private + public patches; mixup: no sign mask")
    parser.add_argument("--k", type=int, default=4, help="terms per encoding")
    parser.add_argument("--private-terms", type=int, default=2, help="cross mode: private terms")
    parser.add_argument("--public", default="photos",
                        help="cross mode: public images: photos (scikit-image's bundled ones), a tar, a folder, or "
                             "a saved PublicPool .npz")
    parser.add_argument("--dom", type=float, default=0.3, help="cross mode: least total weight of private terms")
    parser.add_argument("--upper", type=float, default=0.65, help="largest coefficient")
    parser.add_argument("--pad", type=int, default=0, help="random shifts of up to pad pixels (crop augmentation)")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips")
    parser.add_argument("--epochs", type=int, default=1, help="encodings per image: one per epoch, fresh keys each")
    parser.add_argument("--shard-size", type=int, default=10_000, help="encodings per shard")
    parser.add_argument("--out-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores this process may use)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _encode(args) -> int:
    import numpy as np

    from . import _arrays
    from .datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset
    from .encoder import Encoder
    from .keys import new_secret_key
    from .shards import OutputError, encode_to_shards, key_from_file

    def say(text):
        print(text, file=sys.stderr, flush=True)

    images, labels, source = load_dataset(args.data, args.split, args.size, args.labels)
    channels_last = _arrays.channels_last(images, None)
    if args.data == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:  # the set's own per-channel statistics
        pixels = images if channels_last else np.moveaxis(images, 1, -1)
        values = pixels.reshape(-1, pixels.shape[-1])
        mean = values.mean(axis=0, dtype=np.float64) / 255
        std = np.maximum(values.std(axis=0, dtype=np.float64) / 255, 1e-3)
    if args.key_file:
        key, created = key_from_file(args.key_file)
        if created:
            say(f"wrote a new secret key to {args.key_file} (mode 0600): keep it private, it decrypts the encodings")
    else:
        key = new_secret_key()
        say("note: no --key-file, so this run's secret key (fresh from the OS) is not saved: the run cannot be "
            "resumed or reproduced. Pass --key-file PATH to keep it.")
    options = dict(k=args.k, upper=args.upper, mean=mean, std=std, pad=args.pad, hflip=args.hflip,
                   out_dtype=args.out_dtype, key=key, num_threads=args.threads)
    if args.mode == "mixup":
        encoder = Encoder(sign="none", **options)
    elif args.mode == "instahide":
        encoder = Encoder(**options)
    else:
        height, width = images.shape[1:3] if channels_last else images.shape[2:4]
        encoder = Encoder(private_terms=args.private_terms, public=_public_pool(args.public, max(height, width)),
                          patch_size=(height, width), dom=args.dom, **options)
    say(f"{source}: {len(images)} images x {args.epochs} epoch(s) -> {args.out}")
    try:
        manifest = encode_to_shards(images, labels, encoder, args.out, epochs=args.epochs, shard_size=args.shard_size,
                                    source=source, progress=not args.quiet)
    except OutputError as error:
        say(f"instahide encode: error: {error}")
        return 1
    except KeyboardInterrupt:
        resumable = "rerun the same command to resume" if args.key_file else "the key was not saved: start again"
        say(f"instahide encode: interrupted; complete shards are kept in {args.out}; {resumable}")
        return 130
    say(f"done: {len(manifest['shards'])} shards and manifest.json in {args.out}")
    return 0


def _public_pool(spec: str, side: int):
    from pathlib import Path

    from .pool import PublicPool

    if spec == "photos":
        from .datasets import bundled_photos

        return PublicPool.from_images(bundled_photos(), short_side=3 * side, progress=False)
    path = Path(spec)
    if path.suffix == ".npz":
        return PublicPool.load(path)
    if path.is_file():
        return PublicPool.from_tar(path, short_side=max(40, side), progress=False)
    if path.is_dir():
        return PublicPool.from_folder(path, short_side=max(40, side), progress=False)
    raise FileNotFoundError(f"{spec}: no public images there (or give --public photos)")


# --- bench ------------------------------------------------------------------------------

def _bench(args) -> int:
    from . import bench

    try:
        report = bench.run(batch=args.batch, k=args.k, device=args.device, images=args.images, seconds=args.seconds,
                           threads=args.threads)
    except RuntimeError as error:  # no usable CUDA device
        print(f"instahide bench: error: {error}", file=sys.stderr)
        return 1
    print(bench.format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


# --- attack -----------------------------------------------------------------------------

def _attack_arguments(attack) -> None:
    attack.add_argument("--tier", type=int, choices=[0, 1, 2], default=1,
                        help="0: audit of the configuration; 1: recovery with the mixing known (an upper bound); "
                             "2: recovery from |encodings| and labels alone")
    attack.add_argument("--images", type=int, default=50, help="private images: a random subset of CIFAR-10 test")
    attack.add_argument("--k", type=int, default=4, help="images mixed per encoding (private and public)")
    attack.add_argument("--cross", type=int, metavar="PRIVATE", default=None,
                        help="cross mode: PRIVATE of the k terms are private, the rest Tiny-ImageNet patches "
                             "(e.g. --k 6 --cross 2, dom 0.3)")
    attack.add_argument("--encodings-per-image", "-T", type=int, default=10)
    attack.add_argument("--similarity", choices=["handmade", "network"], default="handmade",
                        help="Tier 2: hand-made edge correlation, or a small network trained on public encodings")
    attack.add_argument("--train-seconds", type=float, default=90.0, help="Tier 2 network: training time")
    attack.add_argument("--seed", type=int, default=0, help="picks the images (the keys stay secret)")
    attack.add_argument("--json", help="write the scores here")
    attack.add_argument("--grid", help="write a PNG: originals, one encoding each, recoveries")


def _attack(args) -> int:
    import numpy as np

    from . import attacks
    from .datasets import load_cifar10

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
                                            seed=args.seed)
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
    from .datasets import CIFAR10_MEAN, CIFAR10_STD
    from .encoder import Encoder

    if args.cross is None:
        return Encoder(k=args.k, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    from .datasets import default_data_dir
    from .pool import PublicPool

    pool = PublicPool.from_tar(default_data_dir() / "tiny-imagenet-val.tar", progress=False)
    return Encoder(k=args.k, mean=CIFAR10_MEAN, std=CIFAR10_STD, private_terms=args.cross, public=pool, patch_size=32,
                   dom=0.3)


if __name__ == "__main__":
    raise SystemExit(main())
