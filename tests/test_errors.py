"""Bad input gives a clear TypeError or ValueError, never a crash or a silent copy."""

import numpy as np
import pytest

import instahide
from instahide import _arrays


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    encoder = instahide.Encoder(k=3)
    return encoder, images, labels, encoder.keys(20, 0)


@pytest.mark.parametrize("options,match", [
    (dict(k=0), "k must"), (dict(k=17), "k must"), (dict(k=2.5), "k must"), (dict(k=4, upper=0.2), "upper"),
    (dict(upper=1.5), "upper"), (dict(sign="negate"), "sign"), (dict(pad=-1), "pad"),
    (dict(out_dtype="float64"), "out_dtype"),
    (dict(layout="CHW"), "layout"), (dict(out_layout="HWC"), "out_layout"), (dict(num_threads=-2), "num_threads"),
])
def test_bad_encoder_options(options, match):
    with pytest.raises(ValueError, match=match):
        instahide.Encoder(**options)


def test_bad_secret_key():
    with pytest.raises(TypeError, match="32 bytes"):
        instahide.Encoder(key=b"too short")
    with pytest.raises(TypeError, match="32 bytes"):
        instahide.Encoder(key="a" * 32)


def test_bad_images(setup):
    encoder, images, labels, keys = setup
    for bad, error, match in [
        (images.astype(np.int16), TypeError, "uint8 or float32"),
        (images.astype(np.float64), TypeError, "uint8 or float32"),
        (images[0], ValueError, "4-d"), (images[..., None], ValueError, "4-d"),
        (images.tolist(), TypeError, "numpy array"),
        (images[:, :, :, :2].repeat(3, axis=1)[:, :8], ValueError, "cannot tell the layout"),
    ]:
        with pytest.raises(error, match=match):
            encoder.encode(bad, labels, keys)


def test_keys_that_do_not_match(setup):
    encoder, images, labels, keys = setup
    with pytest.raises(ValueError, match="20 rows but there are 19"):
        encoder.encode(images[:19], labels[:19], keys)
    with pytest.raises(ValueError, match="k=4 terms, the encoder k=3"):
        encoder.encode(images, labels, instahide.Encoder(k=4).keys(20, 0))
    with pytest.raises(TypeError, match="instahide.Keys"):
        encoder.encode(images, labels, {"index": keys.index})
    bad_index = keys.index.copy()
    bad_index[5, 2] = 20
    forged = instahide.Keys(index=bad_index, lam=keys.lam, offset=keys.offset, flip=keys.flip, epoch=0,
                            mask_key=keys.mask_key, private_terms=3)
    with pytest.raises(ValueError, match=r"keys.index\[5, 2\] = 20 is out of range"):
        encoder.encode(images, labels, forged)
    with pytest.raises(ValueError, match="outside"):
        instahide.reference.encode(images, labels, forged)


def test_core_checks_indices_itself(setup):
    """The compiled core does not trust its caller: an index out of range is an error there too."""
    encoder, images, labels, keys = setup
    index = keys.index.copy()
    index[3, 1] = -1
    with pytest.raises(ValueError, match=r"keys.index\[3, 1\] = -1 is out of range"):
        instahide._core.encode(sources=[source(images)], private_terms=3, index=index, lam=keys.lam,
                               offset=keys.offset, flip=keys.flip, row_id=np.arange(20), mask_key=keys.mask_key,
                               epoch=0, sign=0, out=np.empty((20, 3, 8, 8), np.float32), out_type=0,
                               out_channels_last=False)


def test_core_rejects_wrong_buffers(setup):
    _, images, _, keys = setup
    args = dict(sources=[source(images)], private_terms=3, index=keys.index, lam=keys.lam,
                offset=keys.offset, flip=keys.flip, row_id=np.arange(20), mask_key=keys.mask_key, epoch=0, sign=0,
                out=np.empty((20, 3, 8, 8), np.float32), out_type=0, out_channels_last=False, num_threads=0)
    instahide._core.encode(**args)
    for name, value, error in [
        ("lam", keys.lam.astype(np.float64), TypeError), ("index", keys.index.astype(np.int32), TypeError),
        ("out", np.empty((20, 3, 8, 8), np.float64), TypeError),
        ("out", np.empty((20, 3, 8, 8), np.float32)[:, :, ::-1], ValueError),
        ("out", np.empty((20, 4, 8, 8), np.float32), ValueError),
        ("out", np.empty((19, 3, 8, 8), np.float32), ValueError),
        ("offset", keys.offset[:, :, :1].copy(), ValueError), ("mask_key", b"123", ValueError), ("sign", 3, ValueError),
        ("out_type", 1, TypeError), ("private_terms", 4, ValueError),
    ]:
        with pytest.raises(error):
            instahide._core.encode(**{**args, name: value})
    readonly = np.empty((20, 3, 8, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        instahide._core.encode(**{**args, "out": readonly})


def test_bad_labels(setup):
    encoder, images, labels, keys = setup
    for bad, error, match in [
        (labels[:19], ValueError, "one entry per image"), (labels.astype(np.float32), TypeError, "class ids"),
        (-labels - 1, ValueError, ">= 0"), (labels[:, None], TypeError, "class ids"),
    ]:
        with pytest.raises(error, match=match):
            encoder.encode(images, bad, keys)
    with pytest.raises(ValueError, match="num_classes"):
        instahide.Encoder(k=3, num_classes=5).encode(images, labels + 5, keys)


def test_bad_rows(setup):
    encoder, images, labels, keys = setup
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 20\)"):
        encoder.encode(images, labels, keys, rows=[0, 20])
    with pytest.raises(ValueError, match="rows must lie"):
        encoder.encode(images, labels, keys, rows=[-1])
    with pytest.raises(TypeError, match="rows must be"):
        encoder.encode(images, labels, keys, rows=[0.5])
    with pytest.raises(TypeError, match="rows must be"):
        encoder.encode(images, labels, keys, rows=[[0, 1]])


def test_bad_normalization(setup):
    _, images, labels, keys = setup
    for mean, std in [((0.5, 0.5), None), (None, (0.2, 0.0, 0.2)), (None, (0.2, np.nan, 0.2)), ((np.inf, 0, 0), None)]:
        with pytest.raises(ValueError, match="mean|std"):
            instahide.Encoder(k=3, mean=mean, std=std).encode(images, labels, keys)


def test_torch_tensors_are_views_and_come_back_as_tensors(setup):
    torch = pytest.importorskip("torch")
    encoder, images, labels, keys = setup
    tensor = torch.from_numpy(images.copy())
    assert _arrays.as_numpy(tensor, "images").ctypes.data == tensor.data_ptr()  # no copy
    out, soft = encoder.encode(tensor, torch.from_numpy(labels), keys)
    expected, expected_soft = encoder.encode(images, labels, keys)
    assert isinstance(out, torch.Tensor) and isinstance(soft, torch.Tensor)
    assert np.array_equal(out.numpy(), expected) and np.array_equal(soft.numpy(), expected_soft)
    bf16 = instahide.Encoder(k=3, key=encoder.key, out_dtype="bfloat16")
    out16, _ = bf16.encode(tensor, labels, keys)
    assert out16.dtype == torch.bfloat16
    assert np.array_equal(out16.float().numpy(), instahide.bfloat16_to_float32(bf16.encode(images, labels, keys)[0]))
    with pytest.raises(TypeError):
        encoder.encode(tensor.to(torch.int32), labels, keys)
    meta = torch.empty((20, 8, 8, 3), dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="meta"):
        encoder.encode(meta, labels, keys)


def test_core_checks_row_ids_and_labels_of_epoch_tables(setup):
    """With the epoch's tables looked up by row id, the core checks each row id against the
    tables, and the label mixer each index and class id it reads."""
    _, images, labels, keys = setup
    out = np.empty((2, 3, 8, 8), np.float32)
    for rows in ([0, 20], [-1, 3]):
        with pytest.raises(ValueError, match="row id"):
            instahide._core.encode(sources=[source(images)], private_terms=3, index=keys.index, lam=keys.lam,
                                   offset=keys.offset, flip=keys.flip, row_id=np.array(rows, np.int64),
                                   mask_key=keys.mask_key, epoch=0, sign=0, out=out, out_type=0,
                                   out_channels_last=False)
        with pytest.raises(ValueError, match="row id"):
            mix_labels(keys, np.array(rows, np.int64), labels.astype(np.int64))
    with pytest.raises(ValueError, match=r"labels\[\d+\] = 10 is out of range"):
        mix_labels(keys, np.arange(20), np.full(20, 10, np.int64))
    with pytest.raises(ValueError, match="out of range for 5 labels"):
        mix_labels(keys, np.arange(20), np.zeros(5, np.int64))


def source(images):
    return instahide._core.ImageSource.host(images=images, channels_last=True, scale=[1.0] * 3, shift=[0.0] * 3)


def mix_labels(keys, rows, class_ids):
    return instahide._core.mix_labels(index=keys.index, lam=keys.lam, row_id=rows, private_terms=3,
                                      labels=instahide._core.Labels.host(labels=class_ids, classes=10))
