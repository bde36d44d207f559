"""GPU throughput: the fused CUDA kernel, the authors' PyTorch-op encoding on the same GPU, and
a device-to-device copy as the bandwidth yardstick, timed with CUDA events (warm-up, medians,
inputs larger than L2).

    python benchmarks/gpu_throughput.py [--json gpu.json]

Shapes: CIFAR (3x32x32 uint8 NHWC, k=4, 50,000 private images resident on the GPU, batches of
4,096 and 65,536 rows; also with the training augmentation, pad 4 and flips), CIFAR cross mode
(k=6: 2 private + 4 patches of a 10,000-image 40x40 public pool, batch 65,536) and ImageNet-like
(3x224x224, k=4, batch 256). Output float32 NCHW.
Bytes moved per image = k source windows at their dtype + the output written once. Row ids
come from the host per batch (`fused_cuda`, as numpy arrays) or are slices of an epoch order
uploaded once (`fused_cuda_device_rows`: no per-batch copy).

Each fused case is timed in --rounds rounds (the median is reported, every round is kept in
the JSON), the whole call and the kernel alone (from the profiler's GPU activity).

Training overhead: one SGD step of the pre-activation ResNet-18 (and the small CNN) on a batch
of 128 against encoding that batch on the GPU, from the same GPU-resident uint8 set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import instahide
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD

KERNEL_NAME = "encode_kernel"
MEAN = np.array(CIFAR10_MEAN, np.float32)
STD = np.array(CIFAR10_STD, np.float32)


def time_cuda(fn, repeats: int = 20, warmup: int = 3, runs: int = 5) -> float:
    """Seconds per call of fn(): `repeats` calls queued back to back between two CUDA events on
    the current stream (host work overlaps the GPU's, as in a training loop); median of `runs`."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / repeats)
    return float(np.median(times))


def gpu_activity(fn, calls: int = 10) -> dict[str, float]:
    """Device microseconds per call of each GPU activity (kernels, copies, memsets) that fn()
    queues, by name (torch profiler): the kernel alone, without the host's per-batch work, and
    what else a call costs the GPU; empty if the profiler fails."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        return {e.key: e.device_time_total / calls for e in prof.key_averages() if e.device_time_total > 0}
    except Exception as error:  # a diagnostic, never a reason to fail
        print(f"profiler unavailable: {error}")
        return {}


def host_profile(fn, path: str, calls: int = 200) -> None:
    """cProfile of `calls` calls of fn() (the host's per-call work), top functions to `path`."""
    import cProfile
    import io
    import pstats

    fn()
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    with open(path, "w") as f:
        f.write(f"{calls} calls\n" + text.getvalue())


def copy_gbps(nbytes: int = 2 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / time_cuda(lambda: dst.copy_(src)) / 1e9


def case(name, n, shape, k, batch, copy, pool=None, augment=False, host_profile_path=None, labels_device="cuda",
         rounds=3):
    c, h, w = shape
    images = torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (n,), device=labels_device)
    bytes_per_image = k * c * h * w + c * h * w * 4
    cross = {} if pool is None else {"private_terms": 2, "public": pool, "patch_size": (h, w), "dom": 0.3}
    augmentation = {"pad": 4, "hflip": True} if augment else {}
    encoder = instahide.Encoder(k=k, mean=MEAN, std=STD, **cross, **augmentation)
    keys = encoder.keys(n, 0)
    order = np.random.default_rng(0).permutation(n)
    # rows of one epoch; a batch larger than the set takes rows more than once
    cycle = np.resize(order, max(n, 4 * batch))
    batches = [cycle[i:i + batch] for i in range(0, len(cycle) - batch + 1, batch)]
    cycle_on_device = torch.from_numpy(cycle).cuda()  # the epoch's order uploaded once: slices of it
    batches_on_device = [cycle_on_device[i:i + batch] for i in range(0, len(cycle) - batch + 1, batch)]
    state = {"i": 0}

    def fused():
        encoder.encode(images, labels, keys, rows=batches[state["i"] % len(batches)])
        state["i"] += 1

    def fused_device_rows():
        encoder.encode(images, labels, keys, rows=batches_on_device[state["i"] % len(batches)])
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
    if pool is not None:
        impls = (("fused_cuda_cross", fused),)
    elif augment:
        impls = (("fused_cuda_augmented", fused),)
    else:
        impls = (("fused_cuda", fused), ("torch_ops_cuda", torch_ops))
        if batch >= 65536:  # where the call's cost beyond the kernel is measured
            impls = (impls[0], ("fused_cuda_device_rows", fused_device_rows), impls[1])
    for impl, fn in impls:
        if not impl.startswith("fused"):
            seconds = time_cuda(fn)
            gbps = batch / seconds * bytes_per_image / 1e9
            results.append({"impl": impl, "case": name, "batch": batch, "images_per_s": batch / seconds, "gbps": gbps,
                            "fraction_of_copy": gbps / copy})
            continue
        times = [time_cuda(fn) for _ in range(rounds)]
        seconds = float(np.median(times))
        ips = batch / seconds
        gbps = ips * bytes_per_image / 1e9
        entry = {"impl": impl, "case": name, "batch": batch, "images_per_s": ips, "gbps": gbps,
                 "fraction_of_copy": gbps / copy, "round_seconds": times}
        activity = gpu_activity(fn)
        kernel = sum(us for name, us in activity.items() if KERNEL_NAME in name) / 1e6
        if kernel:
            entry["kernel_images_per_s"] = batch / kernel
            entry["kernel_fraction_of_copy"] = batch / kernel * bytes_per_image / 1e9 / copy
        # the call's time against the GPU's busy time: a call slower than its GPU work leaves
        # the GPU idle (host-bound)
        entry["call_us"] = seconds * 1e6
        entry["gpu_us_per_call"] = activity
        if host_profile_path and impl == "fused_cuda":
            host_profile(fn, host_profile_path)
        results.append(entry)
    return results


def training_overhead(n=50_000, batch=128):
    """Seconds of one training step vs one encoding of its batch, both on the GPU."""
    from instahide.torch import soft_cross_entropy
    from instahide.torch.models import PreActResNet18, SmallCNN

    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (n,), device="cuda")
    encoder = instahide.Encoder(k=4, mean=MEAN, std=STD, pad=4, hflip=True, num_classes=10)
    keys = encoder.keys(n, 0)
    rows = np.random.default_rng(0).permutation(n)[:batch]
    x, y = encoder.encode(images, labels, keys, rows=rows)
    rows_out = []
    for model_name, model in (("preact_resnet18", PreActResNet18(num_classes=10)),
                              ("small_cnn", SmallCNN(num_classes=10))):
        model = model.cuda().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            soft_cross_entropy(model(x), y).backward()
            optimizer.step()

        step_s = time_cuda(step, repeats=30, warmup=5)
        encode_s = time_cuda(lambda: encoder.encode(images, labels, keys, rows=rows), repeats=30, warmup=5)
        rows_out.append({"model": model_name, "batch": batch, "step_ms": step_s * 1e3, "encode_ms": encode_s * 1e3,
                         "encode_fraction_of_step": encode_s / step_s})
    return rows_out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="only the CIFAR batch-65,536 cases (for tuning)")
    parser.add_argument("--host-profile", help="write a cProfile of the batch-4,096 encode calls to this file")
    parser.add_argument("--host-labels", action="store_true",
                        help="class ids on the host: the kernel runs without its label step (the soft labels are "
                             "mixed on the host and uploaded), to measure that step's cost")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per fused case (median reported)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    for option, path in (("--json", args.json), ("--host-profile", args.host_profile)):
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"{option} {path}: its folder does not exist")
    if not torch.cuda.is_available() or instahide.build_info()["cuda_devices"] == 0:
        raise SystemExit(f"no usable CUDA device: {instahide.build_info()['cuda_status']}")
    copy = copy_gbps()
    results = []
    if not args.quick:
        results += case("cifar", 50_000, (3, 32, 32), 4, 4096, copy, host_profile_path=args.host_profile,
                        rounds=args.rounds)
    labels_device = "cpu" if args.host_labels else "cuda"
    results += case("cifar", 50_000, (3, 32, 32), 4, 65536, copy, labels_device=labels_device, rounds=args.rounds)
    # as in training: random crops of the 4-padded image and horizontal flips
    results += case("cifar", 50_000, (3, 32, 32), 4, 65536, copy, augment=True, rounds=args.rounds)
    pool = instahide.PublicPool.from_images(np.random.default_rng(1).integers(0, 256, (10_000, 40, 40, 3), np.uint8),
                                            short_side=None, progress=False)
    results += case("cifar", 50_000, (3, 32, 32), 6, 65536, copy, pool=pool, rounds=args.rounds)
    overhead = []
    if not args.quick:
        results += case("imagenet", 2_000, (3, 224, 224), 4, 256, copy, rounds=args.rounds)
        overhead = training_overhead()
    print(f"device: {torch.cuda.get_device_name()}, copy {copy:.0f} GB/s (read + write)")
    print(f"{'impl':<24}{'case':<10}{'batch':>7}{'images/s':>14}{'GB/s':>9}{'of copy':>9}"
          f"{'kernel of copy':>16}")
    for r in results:
        kernel = f"{r['kernel_fraction_of_copy']:.2f}" if "kernel_fraction_of_copy" in r else "-"
        print(f"{r['impl']:<24}{r['case']:<10}{r['batch']:>7}{r['images_per_s']:>14,.0f}"
              f"{r['gbps']:>9.1f}{r['fraction_of_copy']:>9.2f}{kernel:>16}")
    for r in results:
        if r.get("gpu_us_per_call"):
            busy = sum(r["gpu_us_per_call"].values())
            print(f"{r['impl']} {r['case']} batch {r['batch']}: call {r['call_us']:.1f} us, "
                  f"GPU busy {busy:.1f} us: "
                  + ", ".join(f"{name[:70]} {us:.1f}" for name, us in sorted(r["gpu_us_per_call"].items(),
                                                                        key=lambda item: -item[1])))
    fused = {(r["case"], r["batch"]): r for r in results if r["impl"] == "fused_cuda"}
    for r in results:
        if r["impl"] == "torch_ops_cuda":
            speedup = fused[r["case"], r["batch"]]["images_per_s"] / r["images_per_s"]
            print(f"fused_cuda is {speedup:.1f}x torch_ops_cuda "
                  f"({r['case']}, batch {r['batch']})")
    # The target: a whole call at 0.7 of the copy, CIFAR batch 65,536 (k = 4, inside)
    target = [r for r in results if r["impl"] in ("fused_cuda", "fused_cuda_device_rows") and r["batch"] == 65536]
    if target:
        best = max(target, key=lambda r: r["fraction_of_copy"])
        print(f"best call at CIFAR batch 65,536: {best['fraction_of_copy']:.3f} of the copy ({best['impl']}, "
              f"kernel alone {best.get('kernel_fraction_of_copy', float('nan')):.3f}); "
              f"target 0.70")
    for o in overhead:
        print(f"training step {o['model']} batch {o['batch']}: {o['step_ms']:.2f} ms, encoding {o['encode_ms']:.3f} ms "
              f"({100 * o['encode_fraction_of_step']:.1f}% of the step)")
    report = {"copy_gbps": copy, "device": torch.cuda.get_device_name(), "build": instahide.build_info(),
              "results": results, "training_overhead": overhead}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
