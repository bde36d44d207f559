"""pytest-benchmark suite: one batch of the CIFAR-shaped workload per implementation.

    pytest benchmarks/test_bench_encode.py --benchmark-only

(Timing only; the correctness tests live in tests/.)"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def workload():
    return workloads.load_workload(k=4, batch=512, synthetic=os.environ.get("INSTAHIDE_BENCH_SYNTHETIC") == "1")


@pytest.fixture(scope="module")
def batches(workload):
    order = np.random.default_rng(0).permutation(workload.n)
    return [order[i:i + workload.batch] for i in range(0, workload.n, workload.batch)]


def run_batches(encode, batches):
    state = {"i": 0}

    def one():
        encode(batches[state["i"] % len(batches)])  # rotate: inputs larger than the cache
        state["i"] += 1

    return one


@pytest.mark.parametrize("impl", ["fused_cpu", "numpy_vectorized", "numpy_reference", "torch_ops"])
def test_encode_batch(benchmark, workload, batches, impl):
    if impl == "torch_ops":
        pytest.importorskip("torch")
    make = {"fused_cpu": workloads.make_fused_cpu, "numpy_vectorized": workloads.make_numpy_vectorized,
            "numpy_reference": workloads.make_numpy_reference, "torch_ops": workloads.make_torch_ops}[impl]
    benchmark.extra_info["images_per_batch"] = workload.batch
    benchmark.extra_info["bytes_per_image"] = workload.bytes_per_image
    benchmark.pedantic(run_batches(make(workload), batches), rounds=10 if impl == "numpy_reference" else 50,
                       warmup_rounds=2)
