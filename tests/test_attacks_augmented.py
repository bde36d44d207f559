"""The crop-and-flip attacks (instahide.attacks.augmented): the windowed mixing operator against
the encoder itself, and Tier 1 with the windows known recovering photos."""

import numpy as np
import pytest

import instahide
from instahide import attacks
from instahide.attacks import augmented

from conftest import CIFAR_MEAN, CIFAR_STD

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def images():
    """16 of scikit-image's bundled photos at 32x32 (as tests/test_attacks.py)."""
    from PIL import Image

    from instahide.datasets import bundled_photos

    photos = [np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BOX)) for photo in bundled_photos()]
    return np.stack(photos[:16]), np.arange(16) % 10


@pytest.mark.parametrize(("pad", "hflip"), [(0, True), (2, False), (2, True), (4, True)])
def test_windowed_mixing_reproduces_the_encoder(images, pad, hflip):
    """|forward(x)| with the keys' images, coefficients and windows equals |encoding| (the
    encoder's own output, float32): the operator reads windows as docs/algorithm.md says."""
    x, y = images
    encoder = instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD, pad=pad, hflip=hflip)
    keys = encoder.keys(len(x), 0)
    encodings, _ = encoder.encode(x, y, keys)
    normalized = ((x / 255 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)).transpose(0, 3, 1, 2)
    taus = augmented.window_ids(keys.offset, keys.flip, pad, hflip)
    fill = -np.asarray(CIFAR_MEAN) / np.asarray(CIFAR_STD)
    mixing = augmented._Mixing(keys.index, keys.lam, taus, len(x), (3, 32, 32), pad, hflip, fill)
    mixture = mixing.forward(torch.from_numpy(normalized.astype(np.float32))).numpy().reshape(encodings.shape)
    np.testing.assert_allclose(np.abs(mixture), np.abs(encodings), atol=2e-5)


def test_adjoint_is_the_transpose_of_forward(images):
    rng = np.random.default_rng(0)
    encoder = instahide.Encoder(k=3, pad=2, hflip=True)
    keys = encoder.keys(6, 0)
    mixing = augmented._Mixing(keys.index, keys.lam, augmented.window_ids(keys.offset, keys.flip, 2, True), 6,
                               (3, 8, 8), 2, True, np.zeros(3))
    x = torch.from_numpy(rng.standard_normal((6, 3, 8, 8)).astype(np.float32))
    r = torch.from_numpy(rng.standard_normal((6, 3, 64)).astype(np.float32))
    assert float((mixing.forward(x, fill=False) * r).sum()) == pytest.approx(float((x * mixing.adjoint(r)).sum()),
                                                                              rel=1e-4)


def test_known_windows_recovers_photos_through_crop_and_flip(images):
    x, y = images
    encoder = instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD, pad=2, hflip=True)
    summary = attacks.run_known_windows(x, y, encoder, 20).summary()
    assert summary["mean_ssim"] > 0.8 > 3 * summary["chance_ssim"]
    assert summary["challenge_max_ssim"] > 0.8


def test_known_windows_refuses_cross_mode(images):
    x, y = images
    pool = instahide.PublicPool.from_array(np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8),
                                           progress=False)
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, pad=2, hflip=True)
    with pytest.raises(ValueError, match="inside mode"):
        attacks.run_known_windows(x, y, encoder, 2)
