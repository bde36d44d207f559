"""The CPU core's two row kernels (AVX-512 where the CPU has it, portable everywhere) against
the numpy reference and each other, over layouts, channel counts, pixel and output types,
window sizes that are not a multiple of the 16-pixel run, padding, flips and public pools.
Encoder(cpu_kernel="portable") forces the portable kernel; "auto" (the default) lets the core pick."""

import copy
import platform
import sys

import numpy as np
import pytest

import instahide
from instahide import reference

from helpers import assert_encodings_close, assert_signs_identical

KERNELS = ["auto", "portable"]
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "bmi2"}


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def encode_with(kernel, encoder, images, labels, keys, rows=None):
    """encoder.encode(...) on the CPU row kernel `kernel` (a copy of the encoder: the same key)."""
    chosen = copy.copy(encoder)
    chosen.cpu_kernel = kernel
    return chosen.encode(images, labels, keys, rows=rows)


def reference_of(encoder, images, labels, keys, rows=None, **options):
    return reference.encode(images, labels, keys, rows=rows, sign=encoder.sign, mean=encoder.mean, std=encoder.std,
                            layout=encoder.layout, out_layout=encoder.out_layout, out_dtype=encoder.out_dtype,
                            **options)


def test_unknown_cpu_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="cpu_kernel must be 'auto' or 'portable'"):
        instahide.Encoder(cpu_kernel="avx2")
    x = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="cpu_kernel must be 'auto' or 'portable'"):
        encode_with("fast", instahide.Encoder(k=2), x, np.zeros(4, np.int64), instahide.Encoder(k=2).keys(4, 0))


def test_build_info_names_the_cpu_kernel():
    kernel = instahide.build_info()["cpu_kernel"]
    assert kernel in ("avx512", "portable")
    on_linux_x86 = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
    if on_linux_x86 and AVX512_FLAGS <= cpu_flags():
        assert kernel == "avx512"  # compiled in and picked where the CPU has the instructions
    if not AVX512_FLAGS <= cpu_flags():
        assert kernel == "portable"


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("out_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("layout,channels", [("NHWC", 3), ("NCHW", 3), ("NCHW", 1), ("NHWC", 1),
                                             ("NCHW", 2), ("NCHW", 4), ("NHWC", 4)])
def test_kernels_match_the_reference_and_each_other(rng, augment, out_layout, layout, channels):
    for case in range(3):
        dtype = ["uint8", "float32"][case % 2]
        out_dtype = ["float32", "float16", "bfloat16"][int(rng.integers(0, 3))]
        # Whole 16-pixel runs (the AVX-512 kernel's fast path when unaugmented) and partial ones.
        height, width = int(rng.integers(3, 40)), [32, 7, 20, 33, 16, 48][case + 3 * int(rng.integers(0, 2))]
        k, n = int(rng.integers(1, 7)), 24
        x = (rng.integers(0, 256, (n, height, width, channels), dtype=np.uint8) if dtype == "uint8"
             else rng.normal(0.5, 0.3, (n, height, width, channels)).astype(np.float32))
        images = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x
        labels = rng.integers(0, 5, n)
        encoder = instahide.Encoder(k=k, sign=["flip", "abs", "none"][case], pad=3 if augment else 0, hflip=augment,
                                    mean=rng.uniform(0.3, 0.6, channels), std=rng.uniform(0.2, 0.3, channels),
                                    out_dtype=out_dtype, layout=layout, out_layout=out_layout)
        keys = encoder.keys(n, int(rng.integers(0, 2**32)))
        rows = rng.permutation(n)[:17]
        ref, _ = reference_of(encoder, images, labels, keys, rows)
        outputs = {}
        for kernel in KERNELS:
            out, _ = encode_with(kernel, encoder, images, labels, keys, rows)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            assert_encodings_close(out, ref, out_dtype)
            if encoder.sign == "flip":
                assert_signs_identical(out, ref, out_dtype)
            outputs[kernel] = out
        assert_encodings_close(outputs["auto"], outputs["portable"], out_dtype)


def test_kernels_agree_on_strided_views(rng):
    # Pixel rows read bottom-up (a negative row stride) and every other image of a larger set.
    base = rng.integers(0, 256, (40, 20, 32, 3), dtype=np.uint8)
    images = base[::2, ::-1]
    labels = rng.integers(0, 10, 20)
    encoder = instahide.Encoder(k=4, pad=2, hflip=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    keys = encoder.keys(20, 3)
    ref, _ = reference_of(encoder, images, labels, keys)
    for kernel in KERNELS:
        out, _ = encode_with(kernel, encoder, images, labels, keys)
        assert_encodings_close(out, ref, "float32")
        assert_signs_identical(out, ref, "float32")


@pytest.mark.parametrize("patch", [20, 32])
@pytest.mark.parametrize("out_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_kernels_match_the_reference_in_cross_mode(rng, out_layout, dtype, patch):
    # A packed pool of mixed image sizes: patches start anywhere inside their image.
    pool_images = [rng.integers(0, 256, (int(rng.integers(patch, 50)), int(rng.integers(patch, 50)), 3), dtype=np.uint8)
                   for _ in range(30)]
    pool = instahide.PublicPool.from_images(pool_images, short_side=None, progress=False)
    x = rng.integers(0, 256, (25, patch, patch, 3), dtype=np.uint8)
    images = x if dtype == "uint8" else (x / 255).astype(np.float32)
    labels = rng.integers(0, 10, 25)
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=(patch, patch), dom=0.3,
                                mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), out_layout=out_layout)
    keys = encoder.keys(25, 7)
    ref, _ = reference_of(encoder, images, labels, keys, public=pool)
    for kernel in KERNELS:
        out, _ = encode_with(kernel, encoder, images, labels, keys)
        assert_encodings_close(out, ref, "float32")
        assert_signs_identical(out, ref, "float32")
