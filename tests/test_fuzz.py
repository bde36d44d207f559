"""Property tests (hypothesis) of the public API against the numpy reference: random shapes,
pixel types, layouts and strides, k, sign modes, padding and flips, distinct partners, a small
public pool, output types, row subsets and thread counts.

Case counts: INSTAHIDE_FUZZ_SCALE (default 1) multiplies them; the default run executes over
10,000 cases in total (CI), `INSTAHIDE_FUZZ_SCALE=10` over 100,000. The number actually run is
printed at the end of the session ("fuzz cases run"). Failures hypothesis finds and shrinks are
kept below as @example regression cases.
"""

import os

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import instahide
from instahide import reference

from helpers import FUZZ_CASES, assert_encodings_close, assert_signs_identical

SCALE = float(os.environ.get("INSTAHIDE_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def encode_cases(draw):
    n = draw(st.integers(1, 6))
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    height, width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    k = draw(st.integers(1, 6))
    cross = k > 1 and draw(st.booleans())
    private_terms = draw(st.integers(1, k - 1)) if cross else k
    return dict(
        n=n, channels=channels, height=height, width=width, k=k, private_terms=private_terms,
        dtype=draw(st.sampled_from(["uint8", "float32"])),
        layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        view=draw(st.sampled_from(["contiguous", "strided", "reversed", "other-layout-in-memory"])),
        sign=draw(st.sampled_from(["flip", "abs", "none"])),
        pad=draw(st.sampled_from([0, 0, 1, 2, 9])),
        hflip=draw(st.booleans()),
        distinct=n >= private_terms and draw(st.booleans()),
        out_dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        out_layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        normalize=draw(st.booleans()),
        soft_labels=draw(st.booleans()),
        rows=draw(st.one_of(st.none(), st.lists(st.integers(0, n - 1), max_size=8))),
        pool_growth=draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=3)),
        dom=draw(st.sampled_from([0.0, 0.2])) if cross else 0.0,
        epoch=draw(st.integers(0, 2**32 - 1)),
        threads=draw(st.integers(0, 3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def build_images(case, rng):
    n, c, h, w = case["n"], case["channels"], case["height"], case["width"]
    shape = (n, h, w, c) if case["layout"] == "NHWC" else (n, c, h, w)
    if case["dtype"] == "uint8":
        make = lambda s: rng.integers(0, 256, s, dtype=np.uint8)  # noqa: E731
    else:
        make = lambda s: (rng.normal(0.5, 0.5, s) * rng.choice([1.0, 100.0])).astype(np.float32)  # noqa: E731
    view = case["view"]
    if view == "strided":  # every other image, a window of a larger image: gaps between rows and images
        return make((2 * n, *(s + 2 for s in shape[1:])))[::2, 1:1 + shape[1], 2:2 + shape[2], :shape[3]]
    if view == "reversed":
        return make(shape)[::-1, :, ::-1]
    if view == "other-layout-in-memory":  # NHWC images held in NCHW memory, or the reverse
        other = (0, 2, 3, 1) if case["layout"] == "NHWC" else (0, 3, 1, 2)
        inverse = np.argsort(other)
        return make(tuple(shape[a] for a in inverse)).transpose(other)
    return make(shape)


def build_pool(case, rng):
    c, h, w = case["channels"], case["height"], case["width"]
    sizes = np.array([(h + dh, w + dw) for dh, dw in case["pool_growth"]], np.int32)
    counts = sizes[:, 0].astype(np.int64) * sizes[:, 1] * c
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pixels = rng.integers(0, 256, int(counts.sum()), dtype=np.uint8)
    return instahide.PublicPool(pixels, offsets, sizes, channels=c, mean=rng.uniform(0.2, 0.6, c),
                                std=rng.uniform(0.1, 0.4, c))


@fuzz_settings(6000)
@given(encode_cases())
@example(dict(n=1, channels=1, height=1, width=1, k=1, private_terms=1, dtype="uint8", layout="NCHW",
              view="contiguous", sign="flip", pad=0, hflip=False, distinct=False, out_dtype="float32",
              out_layout="NCHW", normalize=False, soft_labels=False, rows=[], pool_growth=[(0, 0)], dom=0.0,
              epoch=0, threads=0, seed=0))
def test_encoder_matches_the_reference(case):
    FUZZ_CASES["encode"] += 1
    rng = np.random.default_rng(case["seed"])
    images = build_images(case, rng)
    n, c = case["n"], case["channels"]
    labels = rng.dirichlet(np.ones(4), n).astype(np.float32) if case["soft_labels"] else rng.integers(0, 5, n)
    mean, std = (rng.uniform(0.2, 0.6, c), rng.uniform(0.1, 0.4, c)) if case["normalize"] else (None, None)
    pool = build_pool(case, rng) if case["private_terms"] < case["k"] else None
    encoder = instahide.Encoder(
        k=case["k"], sign=case["sign"], mean=mean, std=std, pad=case["pad"], hflip=case["hflip"],
        out_dtype=case["out_dtype"], key=rng.bytes(32), distinct=case["distinct"], layout=case["layout"],
        out_layout=case["out_layout"], num_threads=case["threads"],
        **(dict(private_terms=case["private_terms"], public=pool, patch_size=(case["height"], case["width"]),
                dom=case["dom"]) if pool else {}))
    keys = encoder.keys(n, case["epoch"])
    rows = None if case["rows"] is None else np.array(case["rows"], np.int64)
    out, soft = encoder.encode(images, labels, keys, rows=rows)
    ref, ref_soft = reference.encode(images, labels, keys, rows=rows, sign=case["sign"], mean=mean, std=std,
                                     layout=case["layout"], out_layout=case["out_layout"],
                                     out_dtype=case["out_dtype"], public=pool)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_encodings_close(out, ref, case["out_dtype"])
    if case["sign"] == "flip":
        assert_signs_identical(out, ref, case["out_dtype"])
    np.testing.assert_allclose(soft, ref_soft, rtol=1e-6, atol=1e-7)


@fuzz_settings(2500)
@given(key=st.binary(min_size=32, max_size=32), epoch=st.integers(0, 2**32 - 1),
       rows=st.lists(st.one_of(st.integers(0, 64), st.integers(0, 2**63 - 1)), max_size=5),
       shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 70)))
def test_mask_matches_the_reference(key, epoch, rows, shape):
    FUZZ_CASES["mask"] += 1
    got = instahide.mask(key, epoch, rows, shape)
    assert got.dtype == np.int8 and got.shape == (len(rows), *shape)
    assert np.array_equal(got, reference.mask(key, epoch, rows, shape))


@fuzz_settings(1600)
@given(n=st.integers(1, 12), k=st.integers(1, 6), epoch=st.integers(0, 2**32 - 1), pad=st.integers(0, 5),
       hflip=st.booleans(), distinct=st.booleans(), secret=st.binary(min_size=32, max_size=32),
       public=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.lists(st.integers(0, 4), min_size=2, max_size=8))))
def test_keys_satisfy_their_specification(n, k, epoch, pad, hflip, distinct, secret, public):
    """docs/algorithm.md's rules for every epoch's keys: convex coefficients within `upper`,
    indices in range, windows within the padding, public patches inside their images, every
    partner slot a permutation, no repeats with distinct=True; and determinism."""
    FUZZ_CASES["keys"] += 1
    kp = k if public is None or k == 1 else public[0] % (k - 1) + 1
    distinct = distinct and n >= kp
    patch = (3, 4)
    sizes = None if kp == k else np.array([(3 + a, 4 + b) for a, b in zip(public[1], public[1][::-1], strict=True)],
                                          np.int64)
    options = dict(k=k, distinct=distinct, pad=pad, hflip=hflip, private_terms=kp, public_sizes=sizes, patch=patch)
    keys = instahide.derive_keys(secret, epoch, n, **options)
    assert keys.n == n and keys.k == k and keys.private_terms == kp and keys.epoch == epoch
    assert np.allclose(keys.lam.sum(axis=1), 1, atol=1e-5) and (keys.lam > 0).all()
    if k > 1:
        assert keys.lam.max() <= 0.65 + 1e-6
    private = keys.index[:, :kp]
    assert np.array_equal(private[:, 0], np.arange(n))
    for t in range(kp):
        assert np.array_equal(np.sort(private[:, t]), np.arange(n))  # each slot a permutation
    if distinct:
        assert all(len(set(row)) == kp for row in private.tolist())
    assert (np.abs(keys.offset[:, :kp]) <= pad).all()
    assert hflip or not keys.flip.any()
    if kp < k:
        chosen = sizes[keys.index[:, kp:]]
        assert ((keys.index[:, kp:] >= 0) & (keys.index[:, kp:] < len(sizes))).all()
        assert (keys.offset[:, kp:] >= 0).all() and (keys.offset[:, kp:] + np.array(patch) <= chosen).all()
        assert not keys.flip[:, kp:].any()
    again = instahide.derive_keys(secret, epoch, n, **options)
    assert all(np.array_equal(getattr(keys, f), getattr(again, f)) for f in ("index", "lam", "offset", "flip"))
