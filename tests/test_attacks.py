"""Tier 0 and Tier 1 attacks on our own encodings (a tiny case)."""

import numpy as np
import pytest

import instahide
from instahide import attacks

from conftest import CIFAR_MEAN, CIFAR_STD

pytest.importorskip("skimage")


def smooth_images(rng, n=16, size=32):
    """Photo-like images: smooth random fields, so that neighbouring pixels correlate."""
    noise = rng.normal(size=(n, size // 4, size // 4, 3))
    images = np.kron(noise, np.ones((1, 4, 4, 1)))
    images = (images - images.min()) / (images.max() - images.min())
    return (images * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(request):
    try:
        cifar = request.getfixturevalue("cifar_test")
        return cifar[0][::120][:16], cifar[1][::120][:16]
    except pytest.skip.Exception:
        rng = np.random.default_rng(0)
        return smooth_images(rng), rng.integers(0, 10, 16)


def test_known_mixing_recovers_images_with_many_encodings(images):
    x, y = images
    scores = attacks.run_known_mixing(x, y, instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD), 30)
    summary = scores.summary()
    assert summary["mean_ssim"] > 0.9 > 3 * summary["chance_ssim"]


def test_known_mixing_fails_with_one_encoding(images):
    x, y = images
    scores = attacks.run_known_mixing(x, y, instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD), 1)
    assert scores.summary()["mean_ssim"] < 0.3


def test_attack_refuses_what_it_cannot_model(images):
    x, y = images
    keys = [instahide.Encoder(k=4, pad=2).keys(len(x), 0)]
    with pytest.raises(ValueError, match="unshifted"):
        attacks.mixing_matrix(keys, len(x))


def test_audit_says_what_leaks():
    findings = attacks.audit(instahide.Encoder(k=4), encodings_per_image=50)
    text = " ".join(findings)
    assert "ChaCha20" in text and "|mixture|" in text and "50 times" in text and "coefficients" in text


def test_attack_command(capsys):
    from instahide import cli

    assert cli.main(["attack", "--tier", "0", "-T", "7"]) == 0
    assert "7 times" in capsys.readouterr().out
