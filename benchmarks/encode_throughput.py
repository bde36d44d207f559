"""Encoding throughput on one workload, all implementations in one run, against the copy
bandwidth of this machine.

    python benchmarks/encode_throughput.py [--json results.json]

Workload: CIFAR shape (3x32x32 uint8, the CIFAR-10 training set from ../shared/data, or
random images where absent), k=4, batches of 512 rows of one epoch's keys in shuffled order,
float32 NCHW output. Bytes moved per image = every source window read once at its dtype + the
output written once. Reported: median images/s over rounds, GB/s and the fraction of the
copy bandwidth; also, because the machine's speed drifts between rounds, the median over
rounds of each round's own ratios (to that round's copy, and of fused_cpu to each
implementation in that round), which cancels drift shared by both sides of a ratio.
`gather_sum_bound` is not an encoder: the same reads and writes with one add per element,
what the random-gather pattern alone reaches; fused_cpu's paired fraction of it is printed. It
comes from the benchmark module instahide._yardstick, which wheels do not carry: build it with
`CMAKE_ARGS=-DINSTAHIDE_BENCH=ON pip install -e .` (skipped, with that hint, where absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(iterable, **_):
        return iterable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instahide  # noqa: E402

import workloads  # noqa: E402
from provenance import provenance  # noqa: E402


def time_pass(encode, batches) -> float:
    """Seconds per image of one pass over `batches`."""
    start = time.perf_counter()
    for rows in batches:
        encode(rows)
    return (time.perf_counter() - start) / sum(len(r) for r in batches)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
    parser.add_argument("--repeats", type=int, default=9, help="rounds; medians are reported")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    parser.add_argument("--skip", nargs="*", default=[], help="implementations to leave out")
    args = parser.parse_args(argv)
    for option, value, low, high in (("--k", args.k, 2, 16), ("--batch", args.batch, 1, 50_000),
                                     ("--threads", args.threads, 0, 1024), ("--repeats", args.repeats, 1, 1000)):
        if not low <= value <= high:
            parser.error(f"{option} {value}: must be {low} to {high}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: its folder does not exist")

    threads = args.threads or instahide.available_cores()
    w = workloads.load_workload(k=args.k, batch=args.batch, synthetic=args.synthetic)
    order = np.random.default_rng(0).permutation(w.n)
    batches = [order[i:i + w.batch] for i in range(0, w.n, w.batch)]
    print(f"{w.source}: {w.n} images {w.images.shape[1:]}, k={w.k}, batch {w.batch}, {threads} threads, "
          f"{w.bytes_per_image} bytes moved per image")

    pool, pool_source = workloads.load_public_pool(args.synthetic) if "fused_cpu_cross" not in args.skip else (None, "")
    if pool is not None:
        print(f"public pool: {pool_source}, {pool}")
    implementations = {
        "fused_cpu": (lambda: workloads.make_fused_cpu(w, threads), batches),
        # the authors' CIFAR augmentation (pad-4 random crop, horizontal flip) fused in
        "fused_cpu_augment": (lambda: workloads.make_fused_cpu(w, threads, pad=4, hflip=True), batches),
        "fused_cpu_cross": (lambda: workloads.make_fused_cpu_cross(w, pool, threads), batches),
        # not an encoder: the same reads and writes with one add per element (the pattern's bound)
        "gather_sum_bound": (lambda: workloads.make_gather_sum_bound(w, threads), batches),
        "numpy_reference": (lambda: workloads.make_numpy_reference(w), batches[:8]),
        "numpy_vectorized": (lambda: workloads.make_numpy_vectorized(w), batches[:24]),
        "torch_ops": (lambda: workloads.make_torch_ops(w, threads), batches[:24]),
    }
    encoders = {}
    for name, (make, subset) in implementations.items():
        if name in args.skip:
            continue
        try:
            encoders[name] = (make(), subset)
        except ImportError as error:
            print(f"{name}: skipped ({error})")
    for encode, subset in encoders.values():  # warm-up
        for rows in subset[:2]:
            encode(rows)

    # Rounds: every implementation and the copy once per round, so that all of them see the
    # same machine state; medians over rounds.
    per_image = {name: [] for name in encoders}
    copies = []
    for _ in tqdm(range(args.repeats), desc="rounds", disable=not sys.stderr.isatty()):
        copies.append(workloads.copy_bandwidth(threads=threads, repeats=3))
        for name, (encode, subset) in encoders.items():
            per_image[name].append(time_pass(encode, subset))
    copy = {kind: float(np.median([c[kind] for c in copies])) for kind in copies[0]}
    copy_gbps = max(copy.values())
    copy_per_round = np.array([max(c.values()) for c in copies])
    print("copy bandwidth: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in copy.items()))
    results = []
    for name, seconds in per_image.items():
        ips = 1.0 / float(np.median(seconds))
        # cross mode reads 2 private windows and 4 public patches (uint8, same size) per image
        bytes_per_image = w.bytes_per_image
        if name == "fused_cpu_cross":
            bytes_per_image += (6 - w.k) * w.images[0].size
        gbps = ips * bytes_per_image / 1e9
        paired = bytes_per_image / np.array(seconds) / 1e9 / copy_per_round
        results.append({"impl": name, "images_per_s": ips, "gbps": gbps, "fraction_of_copy": gbps / copy_gbps,
                        "fraction_of_copy_per_round": paired.tolist(),
                        "fraction_of_copy_paired": float(np.median(paired))})
    fused_seconds = np.array(per_image.get("fused_cpu", []))
    for r in results:
        if len(fused_seconds):
            r["fused_cpu_is_paired"] = float(np.median(np.array(per_image[r["impl"]]) / fused_seconds))

    key_seconds = min(timeit_keys(w) for _ in range(3))
    fused = next((r for r in results if r["impl"] == "fused_cpu"), None)
    print(f"\n{'impl':<18}{'images/s':>14}{'GB/s':>9}{'of copy':>9}{'fused is':>11}"
          f"{'paired: of copy':>17}{'fused is':>10}")
    for r in results:
        ratio = f"{fused['images_per_s'] / r['images_per_s']:.1f}x" if fused else "-"
        paired_ratio = f"{r['fused_cpu_is_paired']:.1f}x" if fused else "-"
        print(f"{r['impl']:<18}{r['images_per_s']:>14,.0f}{r['gbps']:>9.2f}{r['fraction_of_copy']:>9.2f}{ratio:>11}"
              f"{r['fraction_of_copy_paired']:>17.2f}{paired_ratio:>10}")
    bound = next((r for r in results if r["impl"] == "gather_sum_bound"), None)
    if fused and bound:
        fused["of_gather_sum_bound_paired"] = bound["fused_cpu_is_paired"]  # bound's time / fused's time
        print(f"\nfused_cpu reaches {fused['of_gather_sum_bound_paired']:.2f} of gather_sum_bound "
              "(its access pattern alone, paired per round)")
    print(f"\nkeys of one epoch ({w.n} rows, k={w.k}): {key_seconds * 1e3:.1f} ms")
    report = {
        "copy_gbps": copy_gbps,
        "copy": copy,
        "results": results,
        "workload": {"source": w.source, "n": w.n, "shape": list(w.images.shape[1:]), "k": w.k, "batch": w.batch,
                     "bytes_per_image": w.bytes_per_image, "threads": threads, "out_dtype": "float32"},
        "keys_seconds_per_epoch": key_seconds,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cores": instahide.available_cores()},
        **provenance(),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def timeit_keys(w) -> float:
    encoder = instahide.Encoder(k=w.k)
    start = time.perf_counter()
    encoder.keys(w.n, 0)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
