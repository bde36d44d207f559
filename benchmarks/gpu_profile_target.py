"""A target for a kernel profiler (Nsight Compute): the CIFAR batch-65,536 encode of
gpu_throughput.py (k = 4, uint8 NHWC, 50,000 images and their labels on the GPU, float32
NCHW output), called a few times.

    ncu -k regex:encode_kernel --launch-skip 3 --launch-count 1 \\
        python3 benchmarks/gpu_profile_target.py

(benchmarks/gpu_check.sh does this where `ncu` is found.)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import instahide
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f"--calls {args.calls}: must be at least 1")
    n, batch = 50_000, 65_536
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (n,), device="cuda")
    encoder = instahide.Encoder(k=4, mean=np.array(CIFAR10_MEAN, np.float32), std=np.array(CIFAR10_STD, np.float32))
    keys = encoder.keys(n, 0)
    order = np.resize(np.random.default_rng(0).permutation(n), 2 * batch)
    for i in range(args.calls):
        encoder.encode(images, labels, keys, rows=order[(i % 2) * batch:(i % 2 + 1) * batch])
    torch.cuda.synchronize()
    print(f"{args.calls} encode calls done")


if __name__ == "__main__":
    main()
