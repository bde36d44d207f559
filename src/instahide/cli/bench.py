"""`instahide bench`: a quick encoder throughput measure on this machine: the fused encoder
(C++ on CPU threads, or the CUDA kernel) against the plain-numpy reference, and against the
memory-copy bandwidth measured in the same run. benchmarks/encode_throughput.py is the full
comparison (authors' PyTorch ops, vectorized numpy, cross mode, real CIFAR-10).

`add_arguments` and `command` are the command's options and code; `run`, `format_report` and
`copy_bandwidth` are the measures, for use from Python too."""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from .. import reference
from ..datasets import CIFAR10_MEAN, CIFAR10_STD
from ..encoder import Encoder
from ._checks import need, writable_file


def add_arguments(bench) -> None:
    bench.add_argument("--batch", type=int, default=512, help="rows per encode call")
    bench.add_argument("--k", type=int, default=4, help="images mixed per encoding")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--images", type=int, default=16_384, help="random 32x32x3 uint8 images to encode")
    bench.add_argument("--seconds", type=float, default=2.0, help="timing per implementation")
    bench.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores this process may use)")
    bench.add_argument("--json", help="write the results here")


def check_arguments(args) -> None:
    """Every option in range and the output writable, before any work."""
    need(args.batch >= 1, "--batch", args.batch, "at least 1")
    need(args.images >= args.batch, "--images", args.images, f"at least --batch ({args.batch})")
    need(2 <= args.k <= 16, "--k", args.k, "2 to 16")
    need(0 < args.seconds <= 3600, "--seconds", args.seconds, "above 0, at most 3600")
    need(args.threads >= 0, "--threads", args.threads, "0 (the cores this process may use) or more")
    writable_file("--json", args.json)


def command(args) -> int:
    check_arguments(args)
    try:
        report = run(batch=args.batch, k=args.k, device=args.device, images=args.images, seconds=args.seconds,
                     threads=args.threads)
    except RuntimeError as error:  # no usable CUDA device
        print(f"instahide bench: error: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def copy_bandwidth(threads: int = 2, megabytes: int = 256, repeats: int = 7) -> dict:
    """Bytes read + written per second (GB/s) by a large array copy: numpy's single-threaded
    copy and the same split over `threads` threads (numpy releases the GIL while copying)."""
    src = np.ones(megabytes << 20, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in

    def single():
        np.copyto(dst, src)

    def threaded():
        step = len(src) // threads
        parts = [threading.Thread(target=np.copyto, args=(dst[i * step:(i + 1) * step], src[i * step:(i + 1) * step]))
                 for i in range(threads)]
        for p in parts:
            p.start()
        for p in parts:
            p.join()

    result = {}
    for name, fn in (("single_thread", single), (f"{threads}_threads", threaded)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        result[name] = 2 * src.nbytes / float(np.median(times)) / 1e9
    return result


def _cuda_copy_bandwidth(device, megabytes: int = 1024, repeats: int = 7) -> dict:
    import torch

    src = torch.ones(megabytes << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {"device_copy": 2 * src.numel() / float(np.median(times)) / 1e9}


def _rate(encode, batches, seconds: float, sync=lambda: None) -> float:
    """Median images/s over passes through `batches`, passes repeated for about `seconds`."""
    encode(batches[0])  # warm-up
    sync()
    rates: list[float] = []
    started = time.perf_counter()
    while not rates or (time.perf_counter() - started < seconds and len(rates) < 50):
        start = time.perf_counter()
        for rows in batches:
            encode(rows)
        sync()
        rates.append(sum(len(r) for r in batches) / (time.perf_counter() - start))
    return float(np.median(rates))


def run(batch: int = 512, k: int = 4, device: str = "cpu", images: int = 16_384, size: int = 32,
        seconds: float = 2.0, threads: int = 0) -> dict:
    """Images/s, GB/s moved and fraction of the copy bandwidth of the fused encoder and of the
    numpy reference on random uint8 images (size x size x 3), k terms, float32 NCHW output."""
    if batch < 1 or images < batch:
        raise ValueError(f"need 1 <= batch <= images, got batch {batch}, images {images}")
    # benchmark pixels only: their values do not change the work
    pixels = np.random.default_rng().integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    labels = np.arange(images) % 10
    encoder = Encoder(k=k, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_threads=threads, layout="NHWC")
    keys = encoder.keys(images, 0)
    order = np.random.default_rng().permutation(images)
    batches = [order[i:i + batch] for i in range(0, images - batch + 1, batch)]
    bytes_per_image = k * size * size * 3 + size * size * 3 * 4  # each window read once + float32 written
    threads_used = encoder.num_threads or _cores()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no usable CUDA device (instahide info says why)")
        gpu = torch.device("cuda")
        on_device = torch.from_numpy(pixels).to(gpu)
        device_labels = torch.from_numpy(labels).to(gpu)
        fused = _rate(lambda rows: encoder.encode(on_device, device_labels, keys, rows=rows), batches, seconds,
                      sync=lambda: torch.cuda.synchronize(gpu))
        copy = _cuda_copy_bandwidth(gpu)
        device_name = torch.cuda.get_device_name(gpu)
    elif device == "cpu":
        fused = _rate(lambda rows: encoder.encode(pixels, labels, keys, rows=rows), batches, seconds)
        copy = copy_bandwidth(threads=threads_used, repeats=5)
        device_name = f"CPU, {threads_used} threads"
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    mean, std = np.asarray(CIFAR10_MEAN, np.float32), np.asarray(CIFAR10_STD, np.float32)
    ref = _rate(lambda rows: reference.encode(pixels, labels, keys, rows=rows, mean=mean, std=std), batches[:2],
                seconds / 2)
    copy_gbps = max(copy.values())
    results = []
    for name, ips in ((f"fused_{device}", fused), ("numpy_reference", ref)):
        gbps = ips * bytes_per_image / 1e9
        results.append({"impl": name, "images_per_s": ips, "mb_per_s": gbps * 1e3, "fraction_of_copy": gbps / copy_gbps,
                        "fused_is": fused / ips})
    return {"device": device_name, "batch": batch, "k": k, "images": images, "shape": [size, size, 3],
            "bytes_per_image": bytes_per_image, "copy_gbps": copy_gbps, "copy": copy, "results": results}


def _cores() -> int:
    from .. import _core

    return _core.get_num_threads()


def format_report(report: dict) -> str:
    lines = [f"{report['device']}: k={report['k']}, batch {report['batch']}, {report['images']} random "
             f"{'x'.join(map(str, report['shape']))} uint8 images, float32 out, "
             f"{report['bytes_per_image']} bytes moved per image",
             "copy bandwidth: " + ", ".join(f"{name} {v:.1f} GB/s" for name, v in report["copy"].items()),
             f"{'impl':<18}{'images/s':>14}{'MB/s':>10}{'of copy':>9}{'fused is':>10}"]
    for r in report["results"]:
        lines.append(f"{r['impl']:<18}{r['images_per_s']:>14,.0f}{r['mb_per_s']:>10,.0f}{r['fraction_of_copy']:>9.2f}"
                     f"{r['fused_is']:>9.1f}x")
    return "\n".join(lines)
