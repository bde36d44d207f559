"""Comparison helpers shared by the tests."""

from collections import Counter

import numpy as np

import instahide

# Property-test cases run in this session, by test family (reported at the end by conftest.py).
FUZZ_CASES: Counter = Counter()


def as_float(x: np.ndarray, out_dtype: str) -> np.ndarray:
    return instahide.bfloat16_to_float32(x) if out_dtype == "bfloat16" else x.astype(np.float32)


def assert_encodings_close(out: np.ndarray, ref: np.ndarray, out_dtype: str) -> None:
    """float32: within 1e-5 relative (plus 1e-6 of the data's scale for values near 0);
    float16 / bfloat16: within one unit in the last place of that type (both sides round a
    float32 to nearest even; the float32 values may differ in their last bits)."""
    a, b = as_float(out, out_dtype).astype(np.float64), as_float(ref, out_dtype).astype(np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    scale = max(1.0, float(np.nanmax(np.abs(b)))) if b.size else 1.0
    if out_dtype == "float32":
        tolerance = 1e-5 * np.abs(b) + 1e-6 * scale
    else:
        mantissa_bits = 10 if out_dtype == "float16" else 7
        exponent = np.floor(np.log2(np.maximum(np.abs(b), 2.0**-14)))
        tolerance = 2.0 ** (exponent - mantissa_bits) + 1e-6 * scale
    worst = np.nanmax(np.abs(a - b) - tolerance) if a.size else 0
    assert worst <= 0, f"largest excess over tolerance: {worst}"


def assert_signs_identical(out: np.ndarray, ref: np.ndarray, out_dtype: str) -> None:
    """The mask is exact: signs agree wherever the value is not (close to) zero."""
    a, b = as_float(out, out_dtype), as_float(ref, out_dtype)
    clear = np.abs(b) > 1e-4 * max(1.0, float(np.abs(b).max(initial=0)))
    assert np.array_equal(np.signbit(a)[clear], np.signbit(b)[clear])
