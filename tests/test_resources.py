"""Resources: memory stays flat over many encode calls (success and error paths alike)."""

import sys

import numpy as np
import pytest

import instahide

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_ten_thousand_encode_calls_hold_memory_flat():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 64)
    encoders = [instahide.Encoder(k=4, pad=2, hflip=True), instahide.Encoder(k=3, out_dtype="bfloat16", num_threads=2),
                instahide.Encoder(k=2, sign="abs", out_layout="NHWC", num_threads=1)]
    keys = [e.keys(64, 0) for e in encoders]
    bad_index = keys[0].index.copy()
    bad_index[5, 1] = 64
    forged = instahide.Keys(index=bad_index, lam=keys[0].lam, offset=keys[0].offset, flip=keys[0].flip, epoch=0,
                            mask_key=keys[0].mask_key, private_terms=4)

    def calls(count):
        for i in range(count):
            e = i % 3
            rows = rng.integers(0, 64, 16)
            encoders[e].encode(images, labels, keys[e], rows=rows)
            if i % 50 == 0:  # error paths (C++ exceptions through the bindings) and fresh keys
                with pytest.raises(ValueError):
                    encoders[0].encode(images, labels, forged)
                encoders[e].keys(64, i)
                instahide.mask(keys[0].mask_key, i, rows, (3, 8, 8))

    calls(1000)  # warm up: allocator pools, per-thread scratch, caches
    before = resident_bytes()
    calls(10_000)
    growth = resident_bytes() - before
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 10,000 calls"
