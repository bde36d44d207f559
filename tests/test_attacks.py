"""Tier 0 and Tier 1 attacks on our own encodings (a tiny case)."""

import numpy as np
import pytest

import instahide
from instahide import attacks

from conftest import CIFAR_MEAN, CIFAR_STD

pytest.importorskip("skimage")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def images():
    """16 natural images, the same on every machine: scikit-image's bundled photos (inside its
    wheel, no download), each shrunk to 32x32 as CIFAR-10's are, with classes 0-9 then 0-5.
    The attacks' priors (neighbouring pixels correlate, light from above) hold for photos."""
    from PIL import Image

    from instahide.datasets import bundled_photos

    photos = [np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BOX)) for photo in bundled_photos()]
    assert len(photos) >= 16
    return np.stack(photos[:16]), np.arange(16) % 10


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


def test_matching_undoes_a_permutation_exactly(images):
    x, _ = images
    order = np.random.default_rng(1).permutation(len(x))
    scores = attacks.score(x[order].astype(np.float64) / 255, x, match=True)
    assert np.all(order[scores.matching] == np.arange(len(x)))
    assert scores.ssim.min() > 0.9999 and scores.summary()["fraction_above_0.9"] == 1.0
    assert scores.chance_ssim < 0.5


def test_ssim_matrix_agrees_with_scikit_image(images):
    from skimage.metrics import structural_similarity

    x = images[0][:4].astype(np.float64) / 255
    y = np.clip(x[::-1] + np.random.default_rng(2).normal(0, 0.1, x.shape), 0, 1)
    matrix = attacks.ssim_matrix(x, y)
    for i in range(4):
        for j in range(4):
            assert matrix[i, j] == pytest.approx(structural_similarity(x[i], y[j], data_range=1.0, channel_axis=-1),
                                                 abs=1e-6)


def test_matching_with_fewer_recoveries_scores_the_rest_as_gray(images):
    x, _ = images
    scores = attacks.score(x[:3].astype(np.float64) / 255, x[:5], match=True)
    assert list(scores.matching) == [0, 1, 2, -1, -1]
    gray = np.full((2, *x.shape[1:]), 0.5)
    assert scores.ssim[:3].min() > 0.9999
    np.testing.assert_allclose(scores.ssim[3:], np.diag(attacks.ssim_matrix(gray, x[3:5].astype(np.float64) / 255)))


@pytest.fixture(scope="module")
def tier2_easy(images):
    """Tier 2 on an easy case: 16 images, k=3, T=30, hand-made similarity (a fixed key: the
    attack's success varies from key to key)."""
    pytest.importorskip("torch")
    x, y = images
    encoder = instahide.Encoder(k=3, mean=CIFAR_MEAN, std=CIFAR_STD, key=bytes(32))
    return attacks.run_encodings_only(x, y, encoder, 30, seed=0)


def test_encodings_only_clusters_beat_chance(tier2_easy):
    summary = tier2_easy.summary()
    assert summary["cluster_purity"] > 0.8 > 2 * summary["chance_purity"]


def test_encodings_only_recovers_images_above_chance(tier2_easy):
    summary = tier2_easy.summary()
    # This key's recoveries: mean SSIM 0.47, 7 of 16 above 0.5 (other keys: 0.59 to 0.97).
    assert summary["mean_ssim"] > 5 * summary["chance_ssim"] and summary["fraction_above_0.5"] >= 0.25


def test_encodings_only_sees_magnitudes_in_a_random_order(images):
    x, y = images
    challenge = attacks.make_challenge(x, y, instahide.Encoder(k=4), 2)
    publication = attacks.publish(challenge, seed=3)
    assert (publication.magnitudes >= 0).all() and not np.array_equal(publication.order, np.arange(len(x) * 2))
    np.testing.assert_array_equal(publication.magnitudes, np.abs(challenge.encodings[publication.order]))


def test_grid_has_three_rows(tmp_path, tier2_easy):
    from PIL import Image

    attacks.save_grid(tmp_path / "grid.png", tier2_easy, count=4, zoom=1)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (4 * 32 + 5 * 2, 3 * 32 + 4 * 2)


def test_cross_mode_known_mixing(images):
    x, y = images
    pool = instahide.PublicPool.from_array(np.random.default_rng(4).integers(0, 256, (20, 40, 40, 3), np.uint8),
                                           progress=False)
    encoder = instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD, private_terms=2, public=pool, patch_size=32)
    assert attacks.run_known_mixing(x, y, encoder, 10).summary()["mean_ssim"] > 0.9


def test_challenge_metrics_score_each_encoding_against_its_private_images(images):
    from skimage.metrics import structural_similarity

    x, _ = images
    truth = x.astype(np.float64) / 255
    members = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    decryptions = np.stack([truth[0], truth[3], truth[4], np.full_like(truth[0], 0.5)])
    scores = attacks.challenge_scores(decryptions, members, x)

    def ssim(a, b):
        return structural_similarity(a, b, data_range=1.0, channel_axis=-1)

    per = np.array([[ssim(d, truth[m]) for m in row] for d, row in zip(decryptions, members, strict=True)])
    l2 = np.array([[((d - truth[m]) ** 2).mean() for m in row] for d, row in zip(decryptions, members, strict=True)])
    assert per[:3].max(axis=1) == pytest.approx(1.0)  # three decryptions are one of their private images
    assert scores["challenge_max_ssim"] == pytest.approx(per.max(axis=1).mean(), abs=1e-6)
    assert scores["challenge_mean_ssim"] == pytest.approx(per.mean(), abs=1e-6)
    assert scores["challenge_min_l2"] == pytest.approx(l2.min(axis=1).mean())
    assert scores["challenge_mean_l2"] == pytest.approx(l2.mean())


def test_attacks_report_the_challenge_metrics(images, tier2_easy):
    x, y = images
    known = attacks.run_known_mixing(x, y, instahide.Encoder(k=4, mean=CIFAR_MEAN, std=CIFAR_STD), 30).summary()
    # the known-mixing recoveries are near exact: the best of each encoding's private images is found
    assert known["challenge_max_ssim"] > 0.9 and known["challenge_mean_ssim"] < known["challenge_max_ssim"]
    tier2 = tier2_easy.summary()
    assert tier2["challenge_max_ssim"] > 3 * tier2["chance_ssim"]
    assert tier2["challenge_min_l2"] <= tier2["challenge_mean_l2"]


def test_smooth_least_squares_equals_the_dense_solution():
    """The DCT/eigenbasis solve of (A^T A + beta L) x = A^T b against numpy's dense solve, with L
    the grid Laplacian (4-neighbours, Neumann boundaries) of every image and channel."""
    from instahide.attacks.encodings_only import _smooth_least_squares

    rng = np.random.default_rng(0)
    n, channels, height, width, m = 3, 2, 4, 5, 7
    a = rng.random((m, n))
    rhs = rng.normal(size=(n, channels, height, width))
    smoothness = 0.3
    got = _smooth_least_squares(a, height, width, smoothness)(rhs)

    def grid_laplacian(size):
        path = np.diag(np.r_[1.0, np.full(size - 2, 2.0), 1.0]) - np.eye(size, k=1) - np.eye(size, k=-1)
        return path

    laplacian = np.kron(grid_laplacian(height), np.eye(width)) + np.kron(np.eye(height), grid_laplacian(width))
    gram = a.T @ a
    beta = smoothness * np.linalg.eigvalsh(gram).mean()
    system = np.kron(gram, np.eye(height * width)) + beta * np.kron(np.eye(n), laplacian)
    system += 1e-9 * np.linalg.eigvalsh(gram).mean() * np.eye(len(system))
    for c in range(channels):
        want = np.linalg.solve(system, rhs[:, c].reshape(-1)).reshape(n, height, width)
        np.testing.assert_allclose(got[:, c], want, rtol=1e-8, atol=1e-10)


def test_pixel_signs_are_synchronized_up_to_one_global_sign(images):
    """|mixture| leaves one sign per pixel and channel shared by all images: flip each pixel of
    the photos' normalized values at random, and the synchronization must undo every flip up to
    one sign for the whole set."""
    from instahide.attacks.encodings_only import _synchronize_pixel_signs

    x, _ = images
    normalized = ((x / 255.0 - CIFAR_MEAN) / CIFAR_STD).transpose(0, 3, 1, 2).reshape(len(x), 3, -1)
    flips = np.where(np.random.default_rng(1).random(normalized.shape[1:]) < 0.5, -1.0, 1.0)
    got = _synchronize_pixel_signs(normalized * flips, width=32)
    agree = np.sign(got[0] * normalized[0])
    assert np.all(agree == agree.flat[0])
    np.testing.assert_allclose(got, agree.flat[0] * normalized)


@pytest.fixture(scope="module")
def photo_pool():
    """A public pool from the bundled photos at their own resolution: 64x64 crops, whose
    textures differ from the 32x32 private images (each a whole photo shrunk)."""
    from instahide.datasets import bundled_photos

    rng = np.random.default_rng(5)
    crops = []
    for photo in bundled_photos():
        for _ in range(12):
            y0, x0 = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
            crops.append(photo[y0:y0 + 64, x0:x0 + 64])
    return instahide.PublicPool.from_array(np.stack(crops), progress=False)


def test_encodings_only_solves_a_small_cross_mode_case(images, photo_pool):
    """The challenge's setting in small: cross 2+4 (dom 0.3), 16 private photos, T = 50, from
    |encodings| and soft labels only: the EM reconstruction under the public-noise model must
    recover the photos, scored per encoding as the challenge scores."""
    pytest.importorskip("torch")
    x, y = images
    encoder = attacks.challenge_encoder("cross 2+4", CIFAR_MEAN, CIFAR_STD, pool=photo_pool, key=bytes(range(32)))
    summary = attacks.run_encodings_only(x, y, encoder, 50, seed=0).summary()
    # this key: challenge Max_SSIM 0.67, 13 of 16 above SSIM 0.5 (chance SSIM 0.07)
    assert summary["challenge_max_ssim"] > 0.5 and summary["fraction_above_0.5"] >= 0.6, summary


def test_challenge_encoder_names_its_settings(photo_pool):
    assert attacks.challenge_encoder("inside k=6", CIFAR_MEAN, CIFAR_STD).k == 6
    cross = attacks.challenge_encoder("cross 2+4", CIFAR_MEAN, CIFAR_STD, pool=photo_pool)
    assert (cross.k, cross.private_terms, cross.dom, cross.patch_size) == (6, 2, 0.3, (32, 32))
    with pytest.raises(ValueError, match="public pool"):
        attacks.challenge_encoder("cross 2+4", CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="setting must be one of"):
        attacks.challenge_encoder("cross 3+3", CIFAR_MEAN, CIFAR_STD)
