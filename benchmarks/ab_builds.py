"""A/B of compiled cores in one process: the same encode calls through two or more builds of
`instahide._core`, alternating by round, compared by the median of each round's time ratio
(which cancels the machine's drift between rounds, large on shared VMs).

    python benchmarks/ab_builds.py BUILD_A.so BUILD_B.so [--rounds 24] [--case inside|augment|cross]

Each argument is a built `_core*.so` (e.g. from `python setup.py build_ext --build-lib DIR`).
Workload: 50,000 random 32x32x3 uint8 images with class ids, k=4, CIFAR normalization,
float32 NCHW out, soft labels mixed in the same call, 97 batches of 512 rows of one epoch's
keys per round. Cases: `inside` (the above), `augment` (plus the training augmentation, pad 4
and horizontal flips), `cross` (k=6: 2 private images and 4 patches of a pool of 10,000 random
40x40 public images).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import time
from pathlib import Path

import numpy as np

import instahide
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD


def load_core(path: str):
    loader = importlib.machinery.ExtensionFileLoader("_core", path)
    spec = importlib.util.spec_from_file_location("_core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def encode_call(core, images, pool, scale, shift, pool_scale, pool_shift, labels, keys):
    """encode(rows, out) through `core`: the keyword-only call with typed sources and labels,
    or, for a build from before them, the positional call with tuple sources."""
    if not hasattr(core, "ImageSource"):
        sources: list = [(images, True, scale, shift)]
        if pool is not None:
            sources.append((pool.pixels, pool.channels, pool.offsets, pool.sizes, pool_scale, pool_shift))
        return lambda rows, out: core.encode(sources, keys.private_terms, keys.index, keys.lam, keys.offset,
                                             keys.flip, rows, keys.mask_key, 0, 0, out, 0, False, 0,
                                             tables_by_row_id=True, patches_inside=True, labels=labels, classes=10)
    sources = [core.ImageSource.host(images=images, channels_last=True, scale=scale, shift=shift)]
    if pool is not None:
        sources.append(core.ImageSource.host_packed(pixels=pool.pixels, channels=pool.channels, offsets=pool.offsets,
                                                    sizes=pool.sizes, scale=pool_scale, shift=pool_shift))
    class_ids = core.Labels.host(labels=labels, classes=10)
    return lambda rows, out: core.encode(sources=sources, private_terms=keys.private_terms, index=keys.index,
                                         lam=keys.lam, offset=keys.offset, flip=keys.flip, row_id=rows,
                                         mask_key=keys.mask_key, epoch=0, sign=0, out=out, out_type=0,
                                         out_channels_last=False, patches_inside=True, labels=class_ids)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="paths of built _core*.so files; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--case", choices=["inside", "augment", "cross"], default="inside")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    for path in args.builds:
        if not Path(path).is_file():
            parser.error(f"builds: {path}: no such file (a built _core*.so)")
    cores = [load_core(path) for path in args.builds]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, len(images))
    options: dict = dict(k=4, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    if args.case == "augment":
        options.update(pad=4, hflip=True)
    if args.case == "cross":
        pool = instahide.PublicPool.from_images(rng.integers(0, 256, (10_000, 40, 40, 3), np.uint8), short_side=None,
                                                progress=False)
        options.update(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3)
    encoder = instahide.Encoder(**options)
    keys = encoder.keys(len(images), 0)
    order = rng.permutation(len(images))
    batches = [np.ascontiguousarray(order[i:i + 512], np.int64) for i in range(0, len(images) - 512, 512)]
    scale, shift = (np.float32(1 / 255) / np.asarray(CIFAR10_STD, np.float32)).tolist(), (
        np.asarray(CIFAR10_MEAN, np.float32) / np.asarray(CIFAR10_STD, np.float32)).tolist()
    pool_scale, pool_shift = (((np.float32(1 / 255) / pool.std).tolist(), (pool.mean / pool.std).tolist())
                              if args.case == "cross" else ([], []))
    calls = [encode_call(core, images, pool if args.case == "cross" else None, scale, shift, pool_scale, pool_shift,
                         labels, keys) for core in cores]
    out = np.empty((512, 3, 32, 32), np.float32)
    seconds = np.zeros((args.rounds, len(cores)))
    for round_ in range(args.rounds):
        order_of_builds = range(len(cores)) if round_ % 2 == 0 else reversed(range(len(cores)))
        for b in order_of_builds:
            start = time.perf_counter()
            for rows in batches:
                calls[b](rows, out)
            seconds[round_, b] = time.perf_counter() - start
    images_per_round = len(batches) * 512
    for b, path in enumerate(args.builds):
        ratio = seconds[:, b] / seconds[:, 0]
        print(f"{args.case}, {path}: median {images_per_round / np.median(seconds[:, b]):,.0f} images/s, "
              f"time vs the first build: median ratio {np.median(ratio):.3f}, "
              f"faster in {np.mean(ratio < 1):.0%} of rounds")


if __name__ == "__main__":
    main()
