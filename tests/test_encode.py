"""The compiled core against the numpy reference, on random and real images."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import instahide
from instahide import reference

from conftest import CIFAR_MEAN, CIFAR_STD
from helpers import assert_encodings_close, assert_signs_identical


def make_images(rng, n, c, h, w, dtype, layout):
    if dtype == "uint8":
        x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    else:
        x = rng.normal(0.5, 0.3, (n, h, w, c)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


def check_against_reference(images, labels, encoder, keys, rows=None, **reference_options):
    out, soft = encoder.encode(images, labels, keys, rows=rows)
    ref, ref_soft = reference.encode(
        images, labels, keys, rows=rows, sign=encoder.sign, mean=encoder.mean, std=encoder.std,
        layout=encoder.layout, out_layout=encoder.out_layout, out_dtype=encoder.out_dtype, **reference_options)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_encodings_close(out, ref, encoder.out_dtype)
    if encoder.sign == "flip":
        assert_signs_identical(out, ref, encoder.out_dtype)
    np.testing.assert_allclose(soft, ref_soft, rtol=1e-6, atol=1e-7)
    return out, soft


@pytest.mark.parametrize("layout,out_layout,dtype",
                         list(itertools.product(["NHWC", "NCHW"], ["NCHW", "NHWC"], ["uint8", "float32"])))
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "bfloat16"])
def test_layouts_and_dtypes(rng, layout, out_layout, dtype, out_dtype):
    images = make_images(rng, 40, 3, 12, 10, dtype, layout)
    labels = rng.integers(0, 7, 40)
    encoder = instahide.Encoder(k=4, pad=3, hflip=True, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                                out_dtype=out_dtype, layout=layout, out_layout=out_layout)
    check_against_reference(images, labels, encoder, encoder.keys(40, int(rng.integers(0, 2**32))))


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("sign", ["flip", "abs", "none"])
def test_every_k_and_sign_mode(rng, k, sign):
    images = make_images(rng, 30, 3, 16, 16, "uint8", "NHWC")
    labels = rng.integers(0, 10, 30)
    encoder = instahide.Encoder(k=k, sign=sign, pad=2, hflip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    out, _ = check_against_reference(images, labels, encoder, encoder.keys(30, k))
    if sign == "abs":
        assert (out >= 0).all()


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_channel_counts_and_odd_sizes(rng, channels):
    for h, w in [(1, 1), (5, 37), (33, 3), (70, 65)]:
        images = make_images(rng, 12, channels, h, w, "uint8", "NHWC")
        encoder = instahide.Encoder(k=3, pad=2, hflip=True, layout="NHWC")
        check_against_reference(images, rng.integers(0, 3, 12), encoder, encoder.keys(12, 5))


def test_large_padding_reads_zeros(rng):
    """Windows shifted entirely outside the image read 0 in source units: the output is the
    normalized zero, -mean/std mixed with the coefficients."""
    images = make_images(rng, 10, 3, 8, 8, "uint8", "NHWC")
    encoder = instahide.Encoder(k=2, sign="none", pad=100, mean=CIFAR_MEAN, std=CIFAR_STD)
    keys = encoder.keys(10, 0)
    out, _ = check_against_reference(images, rng.integers(0, 2, 10), encoder, keys)
    outside = (np.abs(keys.offset) >= 8).any(axis=2).all(axis=1)
    expected = -np.asarray(CIFAR_MEAN) / np.asarray(CIFAR_STD)
    for i in np.flatnonzero(outside):
        np.testing.assert_allclose(out[i].mean(axis=(1, 2)), expected, rtol=1e-5)


def test_non_contiguous_and_negative_strides(rng):
    base = rng.integers(0, 256, (20, 40, 36, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 10)
    for images in (base[::2, 3:35, 2:34], base[::-2, ::-1, :32][:, :32], base[:10, :32, :32, ::-1],
                   base[:10, :32, :32].transpose(0, 3, 1, 2)):
        encoder = instahide.Encoder(k=3, pad=4, hflip=True, layout="NCHW" if images.shape[1] == 3 else "NHWC")
        check_against_reference(images, labels, encoder, encoder.keys(10, 1))


def test_rows_subsets_equal_the_full_epoch(rng):
    images = make_images(rng, 64, 3, 8, 8, "uint8", "NHWC")
    labels = rng.integers(0, 10, 64)
    encoder = instahide.Encoder(k=4, pad=1, hflip=True)
    keys = encoder.keys(64, 3)
    full, full_soft = encoder.encode(images, labels, keys)
    rows = rng.permutation(64)[:17]
    part, part_soft = encoder.encode(images, labels, keys, rows=rows)
    assert np.array_equal(part, full[rows]) and np.array_equal(part_soft, full_soft[rows])
    sliced, _ = encoder.encode(images, labels, keys, rows=slice(10, 30, 3))
    assert np.array_equal(sliced, full[10:30:3])
    empty, empty_soft = encoder.encode(images, labels, keys, rows=np.array([], np.int64))
    assert empty.shape == (0, 3, 8, 8) and empty_soft.shape == (0, 10)


def test_same_output_whatever_the_thread_count(rng):
    images = make_images(rng, 300, 3, 32, 32, "uint8", "NHWC")
    labels = rng.integers(0, 10, 300)
    key = instahide.new_secret_key()
    outputs = []
    for threads in (1, 2, 3, 7):
        encoder = instahide.Encoder(k=4, pad=4, hflip=True, key=key, num_threads=threads)
        outputs.append(encoder.encode(images, labels, encoder.keys(300, 9))[0])
    for other in outputs[1:]:
        assert np.array_equal(outputs[0].view(np.uint32), other.view(np.uint32))


def test_soft_labels(rng):
    images = make_images(rng, 50, 3, 5, 5, "uint8", "NHWC")
    labels = rng.integers(0, 10, 50)
    encoder = instahide.Encoder(k=4)
    keys = encoder.keys(50, 0)
    _, soft = encoder.encode(images, labels, keys)
    np.testing.assert_allclose(soft.sum(axis=1), 1, atol=1e-6)  # inside mode: all terms private
    expected = np.zeros((50, 10))
    for i, t in itertools.product(range(50), range(4)):
        expected[i, labels[keys.index[i, t]]] += keys.lam[i, t]
    np.testing.assert_allclose(soft, expected, atol=1e-6)
    # soft input labels mix the same way
    onehot = np.eye(10, dtype=np.float32)[labels]
    _, soft_from_soft = encoder.encode(images, onehot, keys)
    np.testing.assert_allclose(soft_from_soft, soft, atol=1e-6)
    # labels can be fixed to more classes than appear
    _, wide = instahide.Encoder(k=4, num_classes=12).encode(images, labels, keys)
    assert wide.shape == (50, 12) and np.allclose(wide[:, :10], soft)


def test_renormalized_labels_use_private_terms_only():
    keys = instahide.Keys(index=np.array([[0, 1, 0], [1, 1, 1]]), lam=np.array([[0.5, 0.2, 0.3]] * 2, np.float32),
                          offset=np.zeros((2, 3, 2), np.int32), flip=np.zeros((2, 3), bool), epoch=0,
                          mask_key=bytes(32), private_terms=3)
    images = np.zeros((2, 2, 2, 3), np.uint8)  # ambiguous shape: layout given
    _, soft = instahide.Encoder(k=3, renormalize_labels=True, layout="NHWC").encode(images, np.array([0, 1]), keys)
    np.testing.assert_allclose(soft, [[0.8, 0.2], [0.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("out_dtype", ["float16", "bfloat16"])
def test_half_conversions_round_to_nearest_even_on_special_values(out_dtype):
    """k=1, no mask, no normalization: the output is the float input itself, rounded."""
    special = np.array([0.0, -0.0, 1.0, 65504, 65519, 65520, 1e6, -1e6, np.inf, -np.inf, np.nan, 2.0**-24,
                        2.0**-25, 3 * 2.0**-26, 2.0**-14, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8,
                        1 + 3 * 2.0**-8, 3.4e38, 1e-40], np.float32)
    values = np.concatenate([special, np.random.default_rng().normal(0, 1000, 1000).astype(np.float32),
                             np.float32(2.0) ** np.arange(-30, 30, dtype=np.float32)])
    images = np.zeros((1, 1, 1, len(values)), np.float32)
    images[0, 0, 0] = values
    encoder = instahide.Encoder(k=1, sign="none", out_dtype=out_dtype, layout="NCHW")
    keys = encoder.keys(1, 0)
    out, _ = encoder.encode(images, np.array([0]), keys)
    if out_dtype == "float16":
        with np.errstate(over="ignore"):
            expected = values.astype(np.float16)
        assert np.array_equal(out.reshape(-1).view(np.uint16)[~np.isnan(values)],
                              expected.view(np.uint16)[~np.isnan(values)])
        assert np.isnan(out.reshape(-1)[np.isnan(values)]).all()
    else:
        torch = pytest.importorskip("torch")
        expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        got = out.reshape(-1)
        assert np.array_equal(got[~np.isnan(values)], expected[~np.isnan(values)])
        assert np.isnan(instahide.bfloat16_to_float32(got[np.isnan(values)])).all()


def test_real_cifar_images(cifar_test):
    images, labels = cifar_test
    for kw in (dict(k=4), dict(k=4, pad=4, hflip=True, distinct=True), dict(k=6, sign="abs", out_dtype="float16"),
               dict(k=2, out_layout="NHWC", out_dtype="bfloat16")):
        encoder = instahide.Encoder(mean=CIFAR_MEAN, std=CIFAR_STD, **kw)
        keys = encoder.keys(len(images), 11)
        rows = np.arange(0, len(images), 3)
        check_against_reference(images, labels, encoder, keys, rows=rows)


def test_real_cifar_masks_are_the_spec(cifar_test):
    images, labels = cifar_test
    encoder = instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD)
    keys = encoder.keys(len(images), 2)
    rows = np.arange(100, 400)
    signed, _ = encoder.encode(images, labels, keys, rows=rows)
    unsigned, _ = instahide.Encoder(k=4, sign="none", key=encoder.key, mean=CIFAR_MEAN, std=CIFAR_STD).encode(
        images, labels, keys, rows=rows)
    mask = instahide.mask(keys.mask_key, keys.epoch, rows, (3, 32, 32))
    assert np.array_equal(mask, reference.mask(keys.mask_key, keys.epoch, rows, (3, 32, 32)))
    # bit-exact: the masked output is the unmasked one with the sign bit flipped where mask = -1
    flipped = unsigned.view(np.uint32) ^ np.where(mask < 0, np.uint32(1 << 31), np.uint32(0))
    assert np.array_equal(signed.view(np.uint32), flipped)


@given(n=st.integers(1, 12), channels=st.sampled_from([1, 3, 4]), height=st.integers(1, 20), width=st.integers(1, 20),
       k=st.integers(1, 6), pad=st.integers(0, 6), hflip=st.booleans(), sign=st.sampled_from(["flip", "abs", "none"]),
       dtype=st.sampled_from(["uint8", "float32"]), layout=st.sampled_from(["NCHW", "NHWC"]),
       out_layout=st.sampled_from(["NCHW", "NHWC"]), out_dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       epoch=st.integers(0, 2**32 - 1), threads=st.integers(0, 3))
def test_property_core_equals_reference(n, channels, height, width, k, pad, hflip, sign, dtype, layout, out_layout,
                                        out_dtype, epoch, threads):
    rng = np.random.default_rng(epoch)
    images = make_images(rng, n, channels, height, width, dtype, layout)
    mean, std = rng.uniform(0, 1, channels), rng.uniform(0.1, 1, channels)
    encoder = instahide.Encoder(k=k, upper=max(0.65, 1 / k + 0.1), sign=sign, mean=mean, std=std, pad=pad, hflip=hflip,
                                out_dtype=out_dtype, layout=layout, out_layout=out_layout, num_threads=threads)
    check_against_reference(images, rng.integers(0, 5, n), encoder, encoder.keys(n, epoch))


@pytest.mark.parametrize("k,private_terms,classes", [(1, 1, 2), (4, 4, 10), (6, 2, 100), (8, 5, 1000)])
def test_core_label_mixing_equals_weighted_bincount(rng, k, private_terms, classes):
    """The core's soft labels are exactly numpy's float64 weighted bincount rounded to float32."""
    n = 300
    labels = rng.integers(0, classes, n)
    index = rng.integers(0, n, (n, k))
    lam = rng.dirichlet(np.ones(k), n).astype(np.float32)
    rows = rng.permutation(n)[:123].astype(np.int64)
    soft = instahide._core.mix_labels(index=index, lam=lam, row_id=rows, private_terms=private_terms,
                                      labels=instahide._core.Labels.host(labels=labels, classes=classes))
    cells = np.arange(len(rows))[:, None] * classes + labels[index[rows, :private_terms]]
    expected = np.bincount(cells.reshape(-1), weights=lam[rows, :private_terms].reshape(-1),
                           minlength=len(rows) * classes).reshape(len(rows), classes).astype(np.float32)
    assert soft.dtype == np.float32 and np.array_equal(soft, expected)


@pytest.mark.parametrize("k,private_terms,classes", [(1, 1, 3), (4, 4, 10), (6, 2, 100)])
def test_core_mixes_soft_input_labels_as_the_reference(rng, k, private_terms, classes):
    """Soft (n, K) input labels are mixed by the core too: sum over private terms, in order, of
    lam * the image's label row, in float64 with one rounding: the reference's bits."""
    n = 200
    soft_in = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    soft_in[rng.random(n) < 0.2] = 0.0  # rows of zeros too
    index = rng.integers(0, n, (n, k))
    lam = rng.dirichlet(np.ones(k), n).astype(np.float32)
    rows = rng.permutation(n)[:77].astype(np.int64)
    soft = instahide._core.mix_labels(index=index, lam=lam, row_id=rows, private_terms=private_terms,
                                      labels=instahide._core.Labels.host(labels=soft_in, classes=classes))
    expected = sum(lam[rows, t].astype(np.float64)[:, None] * soft_in[index[rows, t]].astype(np.float64)
                   for t in range(private_terms)).astype(np.float32)
    assert soft.dtype == np.float32 and np.array_equal(soft, expected)
    # and through the encoder, against the reference, with and without renormalization
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    for renormalize in (False, True):
        encoder = instahide.Encoder(k=k, renormalize_labels=renormalize, layout="NHWC")
        keys = encoder.keys(n, 5)
        _, got = encoder.encode(images, soft_in.astype(np.float64), keys, rows=rows)
        _, ref = reference.encode(images, soft_in, keys, rows=rows, renormalize_labels=renormalize, layout="NHWC")
        if renormalize:
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
        else:
            assert np.array_equal(got, ref)
    with pytest.raises(ValueError, match="at least one class"):
        encoder.encode(images, np.zeros((n, 0), np.float32), keys)
