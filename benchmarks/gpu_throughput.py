"""GPU throughput: the fused CUDA kernel, the authors' PyTorch-op encoding on the same GPU, and
a device-to-device copy as the bandwidth yardstick, timed with CUDA events (warm-up, medians,
inputs larger than L2).

    python benchmarks/gpu_throughput.py [--json gpu.json]

Shapes: CIFAR (3x32x32 uint8 NHWC, k=4, 50,000 private images resident on the GPU, batches of
4,096 and 65,536 rows) and ImageNet-like (3x224x224, k=4, batch 256). Output float32 NCHW.
Bytes moved per image = k source windows at their dtype + the output written once.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import instahide

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def time_cuda(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of fn() by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def copy_gbps(nbytes: int = 2 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / time_cuda(lambda: dst.copy_(src)) / 1e9


def case(name, n, shape, k, batch, copy):
    c, h, w = shape
    images = torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (n,), device="cuda")
    bytes_per_image = k * c * h * w + c * h * w * 4
    encoder = instahide.Encoder(k=k, mean=MEAN, std=STD)
    keys = encoder.keys(n, 0)
    order = np.random.default_rng(0).permutation(n)
    # rows of one epoch; a batch larger than the set takes rows more than once
    cycle = np.resize(order, max(n, 4 * batch))
    batches = [cycle[i:i + batch] for i in range(0, len(cycle) - batch + 1, batch)]
    state = {"i": 0}

    def fused():
        encoder.encode(images, labels, keys, rows=batches[state["i"] % len(batches)])
        state["i"] += 1

    # the authors' train_inside.py: float tensors after ToTensor + Normalize, randperm gathers,
    # randint sign mask (the set prepared once, outside the timing)
    x = ((images.permute(0, 3, 1, 2).float() / 255 - torch.from_numpy(MEAN).cuda()[:, None, None])
         / torch.from_numpy(STD).cuda()[:, None, None]).contiguous()
    lam = torch.from_numpy(keys.lam).cuda()
    perms = [torch.from_numpy(keys.index[:, t]).cuda() for t in range(k)]
    rows_dev = [torch.from_numpy(b).cuda() for b in batches]

    def torch_ops():
        rows = rows_dev[state["i"] % len(rows_dev)]
        state["i"] += 1
        lam_b = lam[rows]
        mixed = lam_b[:, 0, None, None, None] * x[rows]
        for t in range(1, k):
            mixed += lam_b[:, t, None, None, None] * x[perms[t][rows]]
        mixed *= torch.randint(2, size=list(mixed.shape), device="cuda") * 2.0 - 1

    results = []
    for impl, fn in (("fused_cuda", fused), ("torch_ops_cuda", torch_ops)):
        seconds = time_cuda(fn)
        ips = batch / seconds
        gbps = ips * bytes_per_image / 1e9
        results.append({"impl": impl, "case": name, "batch": batch, "images_per_s": ips, "gbps": gbps,
                        "fraction_of_copy": gbps / copy})
    del x
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or instahide.build_info()["cuda_devices"] == 0:
        raise SystemExit(f"no usable CUDA device: {instahide.build_info()['cuda_status']}")
    copy = copy_gbps()
    results = []
    results += case("cifar", 50_000, (3, 32, 32), 4, 4096, copy)
    results += case("cifar", 50_000, (3, 32, 32), 4, 65536, copy)
    results += case("imagenet", 2_000, (3, 224, 224), 4, 256, copy)
    print(f"device: {torch.cuda.get_device_name()}, copy {copy:.0f} GB/s (read + write)")
    print(f"{'impl':<16}{'case':<10}{'batch':>7}{'images/s':>14}{'GB/s':>9}{'of copy':>9}")
    for r in results:
        print(f"{r['impl']:<16}{r['case']:<10}{r['batch']:>7}{r['images_per_s']:>14,.0f}{r['gbps']:>9.1f}"
              f"{r['fraction_of_copy']:>9.2f}")
    report = {"copy_gbps": copy, "device": torch.cuda.get_device_name(), "build": instahide.build_info(),
              "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
