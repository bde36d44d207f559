"""`instahide encode`: a data set encoded into resumable, deterministic .npz shards with soft
labels (instahide.shards does the writing): the command's options, the encoder they make, and
the public pool of cross mode."""

from __future__ import annotations

import sys

from ._checks import need, writable_file, writable_folder


def add_arguments(parser) -> None:
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


def check_arguments(args) -> None:
    """Every numeric option in range and the outputs writable, before any data is read."""
    need(2 <= args.k <= 16, "--k", args.k, "2 to 16")
    if args.mode == "cross":
        need(1 <= args.private_terms < args.k, "--private-terms", args.private_terms, f"1 to k - 1 = {args.k - 1}")
        need(0 <= args.dom <= 1, "--dom", args.dom, "in [0, 1]")
    need(0 < args.upper <= 1, "--upper", args.upper, "in (0, 1]")
    need(0 <= args.pad <= 64, "--pad", args.pad, "0 to 64")
    need(args.size is None or 1 <= args.size <= 4096, "--size", args.size, "1 to 4096")
    need(1 <= args.epochs <= 10_000, "--epochs", args.epochs, "1 to 10000")
    need(args.shard_size >= 1, "--shard-size", args.shard_size, "at least 1")
    need(args.threads >= 0, "--threads", args.threads, "0 (the cores this process may use) or more")
    writable_folder("--out", args.out)
    writable_file("--key-file", args.key_file)


def run(args) -> int:
    check_arguments(args)
    import numpy as np

    from .. import _arrays
    from ..datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset
    from ..encoder import Encoder
    from ..keys import new_secret_key
    from ..shards import OutputError, encode_to_shards, key_from_file

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

    from ..pool import PublicPool

    if spec == "photos":
        from ..datasets import bundled_photos

        return PublicPool.from_images(bundled_photos(), short_side=3 * side, progress=False)
    path = Path(spec)
    if path.suffix == ".npz":
        return PublicPool.load(path)
    if path.is_file():
        return PublicPool.from_tar(path, short_side=max(40, side), progress=False)
    if path.is_dir():
        return PublicPool.from_folder(path, short_side=max(40, side), progress=False)
    raise FileNotFoundError(f"{spec}: no public images there (or give --public photos)")
