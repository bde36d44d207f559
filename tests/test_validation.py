"""Validation at every public boundary, beyond tests/test_errors.py: each bad argument gives a
TypeError, ValueError or MemoryError that names it; the compiled core re-checks what Python
passes; empty batches give empty results; NaN and Inf propagate as documented
(docs/robustness.md); huge outputs fail with a clear error, not an abort."""

import numpy as np
import pytest

import instahide
from instahide import _core, reference

from helpers import assert_encodings_close


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    encoder = instahide.Encoder(k=3, pad=2, hflip=True)
    return encoder, images, labels, encoder.keys(20, 0)


def forged(keys, **changes):
    fields = dict(index=keys.index, lam=keys.lam, offset=keys.offset, flip=keys.flip, epoch=keys.epoch,
                  mask_key=keys.mask_key, private_terms=keys.private_terms)
    return instahide.Keys(**{**fields, **changes})


@pytest.mark.parametrize("options,error,match", [
    (dict(pad=2**31), ValueError, "pad"), (dict(pad=1.5), ValueError, "pad"),
    (dict(num_threads=1.5), ValueError, "num_threads"),
    (dict(num_classes=0), ValueError, "num_classes"), (dict(num_classes=2.5), ValueError, "num_classes"),
    (dict(mean=(0.5, np.nan, 0.5)), ValueError, "mean"), (dict(std=(0.2, -0.2, 0.2)), ValueError, "std"),
    (dict(std=np.inf), ValueError, "std"), (dict(dom=np.nan), ValueError, "dom"),
    (dict(upper=np.nan), ValueError, "upper"),
    (dict(key=bytearray(31)), TypeError, "32 bytes"), (dict(key=b"\0" * 33), TypeError, "32 bytes"),
    (dict(private_terms=2), ValueError, "public pool"),
])
def test_bad_encoder_options_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        instahide.Encoder(k=3, **options)


def random_pool(m=3, h=12, w=12):
    images = np.random.default_rng(2).integers(0, 256, (m, h, w, 3), dtype=np.uint8)
    return instahide.PublicPool.from_array(images, short_side=None, progress=False)


def test_bad_cross_mode_options():
    pool = random_pool()
    for options, match in [(dict(private_terms=3), "private_terms"), (dict(private_terms=0), "private_terms"),
                           (dict(private_terms=1), "patch_size"), (dict(private_terms=1, patch_size=0), "patch_size"),
                           (dict(private_terms=1, patch_size=(4, 4, 4)), "patch_size"),
                           (dict(private_terms=1, patch_size=13), "smaller")]:
        with pytest.raises(ValueError, match=match):
            instahide.Encoder(k=3, public=pool, **options)


@pytest.mark.parametrize("layout,shape,match", [
    ("NHWC", (20, 3, 8, 8), "8 channels in layout 'NHWC'"), ("NCHW", (20, 8, 8, 3), "8 channels in layout 'NCHW'"),
    ("NHWC", (20, 0, 8, 3), "positive size"),
])
def test_images_that_do_not_match_the_layout(setup, layout, shape, match):
    _, _, labels, keys = setup
    with pytest.raises(ValueError, match=match):
        instahide.Encoder(k=3, layout=layout).encode(np.zeros(shape, np.uint8), labels, keys)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.uint16, np.bool_, ">f4", object])
def test_image_dtypes_other_than_uint8_and_float32(setup, dtype):
    encoder, images, labels, keys = setup
    with pytest.raises(TypeError, match="images must be uint8 or float32"):
        encoder.encode(images.astype(dtype), labels, keys)


def test_keys_for_another_configuration(setup):
    encoder, images, labels, keys = setup
    pool = random_pool()
    cross = instahide.Encoder(k=3, private_terms=1, public=pool, patch_size=8)
    with pytest.raises(ValueError, match="private_terms=3, the encoder 1"):
        cross.encode(images, labels, keys)
    with pytest.raises(ValueError, match="public terms: the encoder needs the public pool"):
        encoder.encode(images, labels, cross.keys(20, 0))
    with pytest.raises(ValueError, match="rows but there are"):
        encoder.encode(images, labels, encoder.keys(21, 0))


@pytest.mark.parametrize("field,value,match", [
    ("lam", np.nan, r"keys.lam\[4, 1\] = nan is not finite"), ("lam", np.inf, r"keys.lam\[4, 1\] = inf is not finite"),
    ("index", -1, r"keys.index\[4, 1\] = -1 is out of range"),
    ("index", 2**62, r"keys.index\[4, 1\] = \d+ is out of range"),
])
def test_forged_key_values_rejected_by_the_core(setup, field, value, match):
    """The core checks the rows it encodes; the reference checks the whole table."""
    encoder, images, labels, keys = setup
    table = getattr(keys, field).copy()
    table[4, 1] = value
    bad = forged(keys, **{field: table})
    with pytest.raises(ValueError, match=match):
        encoder.encode(images, labels, bad)
    with pytest.raises(ValueError, match=f"keys.{field}"):
        reference.encode(images, labels, bad)
    # rows that do not use the bad entry encode as before
    out, _ = encoder.encode(images, labels, bad, rows=[0, 1, 2])
    assert np.array_equal(out, encoder.encode(images, labels, keys, rows=[0, 1, 2])[0])


def test_public_patch_offsets_must_lie_inside_the_public_image():
    rng = np.random.default_rng(1)
    pool = instahide.PublicPool.from_array(rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8), short_side=None)
    encoder = instahide.Encoder(k=3, private_terms=1, public=pool, patch_size=8)
    images, labels = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 6)
    keys = encoder.keys(6, 0)
    encoder.encode(images, labels, keys)
    for dy, dx in [(-1, 0), (0, -1), (3, 0), (0, 5), (2**31 - 1, 0)]:  # room: dy <= 2, dx <= 4
        offset = keys.offset.copy()
        offset[2, 2] = (dy, dx)
        bad = forged(keys, offset=offset)
        with pytest.raises(ValueError, match=r"keys.offset\[2, 2\] = .* outside public image"):
            encoder.encode(images, labels, bad)
        with pytest.raises(ValueError, match=r"keys.offset\[2, 2\]"):
            reference.encode(images, labels, bad, public=pool)
    index = keys.index.copy()
    index[1, 2] = len(pool)
    with pytest.raises(ValueError, match=r"keys.index\[1, 2\] = 4 is out of range for a set of 4"):
        encoder.encode(images, labels, forged(keys, index=index))


def test_private_offsets_anywhere_read_padding(setup):
    """Private windows may lie anywhere, even at the int32 extremes: they read 0 outside."""
    _, images, labels, keys = setup
    encoder = instahide.Encoder(k=3, sign="none", key=instahide.new_secret_key())
    offset = keys.offset.copy()
    offset[:, 1:] = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], np.int32)
    bad = forged(keys, offset=offset)
    out, _ = encoder.encode(images, labels, bad)
    ref, _ = reference.encode(images, labels, bad, sign="none")
    assert_encodings_close(out, ref, "float32")
    window0 = reference.window(images.transpose(0, 3, 1, 2), np.arange(20), keys.offset[:, 0], keys.flip[:, 0], (8, 8))
    np.testing.assert_allclose(out, keys.lam[:, 0, None, None, None] * window0 / 255, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels,error,match", [
    (np.zeros(20, np.float64), TypeError, "class ids"), (np.zeros((20, 3, 1), np.float32), TypeError, "class ids"),
    (np.zeros(20, bool), TypeError, "class ids"), (np.zeros((19, 4), np.float32), ValueError, "one entry per image"),
    (np.zeros(21, np.int64), ValueError, "one entry per image"), ("cat", TypeError, "labels must be"),
])
def test_mismatched_labels(setup, labels, error, match):
    encoder, images, _, keys = setup
    with pytest.raises(error, match=match):
        encoder.encode(images, labels, keys)


def test_num_classes_checked_at_encode(setup):
    _, images, labels, keys = setup
    with pytest.raises(ValueError, match="num_classes"):
        instahide.Encoder(k=3, num_classes=4).encode(images, np.full(20, 4), keys)
    with pytest.raises(ValueError, match="num_classes"):
        instahide.Encoder(k=3, num_classes=4).encode(images, np.zeros((20, 5), np.float32), keys)


def test_empty_batches_give_empty_results(setup):
    encoder, images, labels, keys = setup
    for rows in ([], np.array([], np.int64), slice(5, 5), range(0)):
        out, soft = encoder.encode(images, labels, keys, rows=np.asarray(rows) if isinstance(rows, range) else rows)
        assert out.shape == (0, 3, 8, 8) and out.dtype == np.float32 and soft.shape == (0, 10)
    # an empty private set with empty keys
    empty_keys = forged(keys, index=keys.index[:0], lam=keys.lam[:0], offset=keys.offset[:0], flip=keys.flip[:0])
    out, soft = encoder.encode(images[:0], labels[:0], empty_keys)
    assert out.shape == (0, 3, 8, 8) and soft.shape == (0, 0)
    out, soft = reference.encode(images[:0], labels[:0], empty_keys)
    assert out.shape == (0, 3, 8, 8) and soft.shape == (0, 0)
    assert instahide.mask(keys.mask_key, 0, [], (3, 8, 8)).shape == (0, 3, 8, 8)


def test_nan_and_inf_pixels_propagate_as_documented(setup):
    """float32 images: NaN makes its output elements NaN (in every sign mode); +-Inf gives
    +-Inf (a flipped sign for sign="flip"), or NaN where +Inf and -Inf meet or the weight is 0;
    the core and the reference agree exactly on which elements are NaN or infinite."""
    _, images, labels, keys = setup
    x = images.astype(np.float32) / 255
    x[0, 1, 2, 0] = np.nan
    x[1, 3, 3, 1] = np.inf
    x[2, 4, 4, 2] = -np.inf
    x[3, 5, 5] = [np.inf, -np.inf, np.nan]
    used = np.isin(keys.index, [0, 1, 2, 3]).any(axis=1)
    for sign in ("flip", "abs", "none"):
        for out_dtype in ("float32", "float16", "bfloat16"):
            encoder = instahide.Encoder(k=3, pad=2, hflip=True, sign=sign, out_dtype=out_dtype)
            out, soft = encoder.encode(x, labels, keys)
            ref, _ = reference.encode(x, labels, keys, sign=sign, out_dtype=out_dtype)
            value = instahide.bfloat16_to_float32(out) if out_dtype == "bfloat16" else out.astype(np.float32)
            expected = instahide.bfloat16_to_float32(ref) if out_dtype == "bfloat16" else ref.astype(np.float32)
            assert np.array_equal(np.isnan(value), np.isnan(expected))
            assert np.array_equal(np.isinf(value), np.isinf(expected))
            assert np.array_equal(value[np.isinf(value)], expected[np.isinf(expected)])
            finite = np.isfinite(expected)
            rtol = {"float32": 1e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}[out_dtype]
            np.testing.assert_allclose(value[finite], expected[finite], rtol=rtol, atol=1e-5)
            assert not np.isfinite(value[used]).all()  # the bad pixels reached some rows...
            assert np.isfinite(value[~used]).all()  # ...and only those
            assert np.isfinite(soft).all()  # labels never see pixels
            if sign == "abs":
                assert not (np.signbit(value) & ~np.isnan(value)).any()


def test_sizes_past_32_bit_byte_offsets(tmp_path):
    """Images whose byte offsets pass 2^32 (a sparse memory-mapped file): the core addresses
    them in 64 bits and matches the reference."""
    stride = 2**32 + 2**20 + 64  # bytes between images
    try:
        mm = np.memmap(tmp_path / "big.u8", np.uint8, "w+", shape=(3 * stride,))
    except OSError:
        pytest.skip("no room for a sparse 12 GiB file")
    rng = np.random.default_rng(5)
    for i in range(3):
        mm[i * stride:i * stride + 4 * 4 * 3] = rng.integers(0, 256, 48, dtype=np.uint8)
    images = np.lib.stride_tricks.as_strided(mm, shape=(3, 4, 4, 3), strides=(stride, 12, 3, 1), writeable=False)
    encoder = instahide.Encoder(k=3, pad=1, hflip=True, layout="NHWC")
    keys = encoder.keys(3, 0)
    out, _ = encoder.encode(images, np.arange(3), keys)
    ref, _ = reference.encode(images, np.arange(3), keys, layout="NHWC")
    assert_encodings_close(out, ref, "float32")
    assert np.abs(out).max() > 0
    del images, mm


def test_outputs_too_large_fail_with_a_clear_memory_error(setup):
    encoder, _, labels, keys = setup
    # 20 views of one 3 x 2^17 x 2^17 image (stride 0: no memory): a 20 x 192 GiB output
    huge = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (20, 2**17, 2**17, 3))
    with pytest.raises(MemoryError, match=r"the encoded batch of shape \(20, 3, 131072, 131072\) needs .* GiB"):
        encoder.encode(huge, labels, keys)
    with pytest.raises(MemoryError, match="the mask of shape"):
        instahide.mask(keys.mask_key, 0, np.arange(1000), (4, 2**16, 2**16))


@pytest.mark.parametrize("args,error,match", [
    ((b"\0" * 31, 0, [0], (3, 4, 4)), TypeError, "mask key must be 32 bytes"),
    (("k" * 32, 0, [0], (3, 4, 4)), TypeError, "mask key must be 32 bytes"),
    ((b"\0" * 32, -1, [0], (3, 4, 4)), ValueError, "epoch"), ((b"\0" * 32, 2**32, [0], (3, 4, 4)), ValueError, "epoch"),
    ((b"\0" * 32, 0.5, [0], (3, 4, 4)), ValueError, "epoch"), ((b"\0" * 32, 0, [-1], (3, 4, 4)), ValueError, "row ids"),
    ((b"\0" * 32, 0, [0.5], (3, 4, 4)), TypeError, "rows must be integers"),
    ((b"\0" * 32, 0, [0], (3, 4)), ValueError, "shape"), ((b"\0" * 32, 0, [0], (3, 0, 4)), ValueError, "shape"),
])
def test_bad_mask_arguments(args, error, match):
    with pytest.raises(error, match=match):
        instahide.mask(*args)


@pytest.mark.parametrize("options,error,match", [
    (dict(n=0), ValueError, "n must"), (dict(n=2.5), ValueError, "n must"), (dict(epoch=2**32), ValueError, "epoch"),
    (dict(pad=-1), ValueError, "pad"), (dict(pad=2**31), ValueError, "pad"), (dict(upper=0.1), ValueError, "upper"),
    (dict(private_terms=4), ValueError, "private_terms"), (dict(distinct=True, n=2), ValueError, "distinct"),
    (dict(private_terms=1), ValueError, "public"), (dict(secret=b"short"), TypeError, "32 bytes"),
])
def test_bad_derive_keys_arguments(options, error, match):
    arguments = {**dict(secret=b"\1" * 32, epoch=0, n=10, k=3), **options}
    with pytest.raises(error, match=match):
        instahide.derive_keys(arguments.pop("secret"), arguments.pop("epoch"), arguments.pop("n"), **arguments)


@pytest.mark.parametrize("changes,error,match", [
    (dict(index=np.zeros((4, 3), np.int32)), TypeError, "Keys.index"),
    (dict(lam=np.zeros((4, 3), np.float64)), TypeError, "Keys.lam"),
    (dict(lam=np.zeros((4, 2), np.float32)), ValueError, "Keys.lam"),
    (dict(offset=np.zeros((4, 3), np.int32)), TypeError, "Keys.offset"),
    (dict(flip=np.zeros((4, 3), np.uint8)), TypeError, "Keys.flip"), (dict(epoch=-1), ValueError, "epoch"),
    (dict(mask_key=b"\0" * 16), TypeError, "mask key"), (dict(private_terms=0), ValueError, "private_terms"),
])
def test_bad_keys_fields(changes, error, match):
    fields = dict(index=np.zeros((4, 3), np.int64), lam=np.zeros((4, 3), np.float32),
                  offset=np.zeros((4, 3, 2), np.int32), flip=np.zeros((4, 3), bool), epoch=0, mask_key=b"\0" * 32,
                  private_terms=3)
    with pytest.raises(error, match=match):
        instahide.Keys(**{**fields, **changes})


def test_core_rechecks_what_python_passes(setup):
    """The bindings and core reject what the Python layer would have: row ids, public offsets."""
    _, images, _, keys = setup
    def source(x, channels=3):
        return _core.ImageSource.host(images=x, channels_last=True, scale=[1.0] * channels, shift=[0.0] * channels)

    args = dict(sources=[source(images)], private_terms=3, index=keys.index, lam=keys.lam,
                offset=keys.offset, flip=keys.flip, row_id=np.arange(20), mask_key=keys.mask_key, epoch=0, sign=0,
                out=np.empty((20, 3, 8, 8), np.float32), out_type=0, out_channels_last=False, num_threads=0)
    for name, value, match in [
        ("row_id", lambda: -np.arange(20), "row ids must be >= 0"),
        ("row_id", lambda: np.arange(20, dtype=np.int32), "row_id"),
        ("sources", lambda: [source(images.astype(np.float64))], "uint8 or float32"),
        ("sources", lambda: [source(images, channels=2)], "one value per channel"),
        ("sources", lambda: [source(images[:0])], "the set is empty"),
        ("sources", lambda: [], "one or two image sources"), ("out_type", lambda: 7, "out_type"),
        ("sign", lambda: 3, "sign must be"),
        ("labels", lambda: _core.Labels.device(pointer=8, count=20, classes=10, renormalize=False, soft=False),
         "labels on a device"),
        ("sources", lambda: [_core.ImageSource.device(pointer=8, pixel=0, shape=(20, 3, 8, 8), strides=(192, 1, 24, 3),
                                                      scale=[1.0] * 3, shift=[0.0] * 3)], "must be on the host"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            _core.encode(**{**args, name: value()})
    with pytest.raises(ValueError, match="pixel type"):
        _core.ImageSource.device(pointer=8, pixel=2, shape=(20, 3, 8, 8), strides=(192, 1, 24, 3), scale=[1.0] * 3,
                                 shift=[0.0] * 3)
    with pytest.raises(ValueError, match="classes must be >= 1"):
        _core.Labels.host(labels=np.zeros(20, np.int64), classes=0)
    with pytest.raises(TypeError):  # keyword arguments only
        _core.encode(args["sources"], 3)
    with pytest.raises(ValueError, match="elements must be >= 0"):
        _core.mask(keys.mask_key, 0, np.arange(3), -1)
    with pytest.raises(ValueError, match="2\\^41 elements"):
        _core.mask(keys.mask_key, 0, np.arange(0), 2**41)
    with pytest.raises(ValueError, match="wrap"):
        _core.chacha20(keys.mask_key, b"\0" * 12, 2**32 - 1, 2)
