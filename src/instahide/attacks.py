"""Attacks on InstaHide encodings, run on our own encodings so that users can measure what
InstaHide hides in their setting (see docs/privacy.md).

Tier 0 (`audit`): what the configuration gives away with no computation.
Tier 1 (`recover_known_mixing`): an upper bound, as GradAttack's: the attacker knows which
images and coefficients made every encoding (not the signs) and solves, per pixel, the phase
retrieval problem |A x| = |e| with A shared by all pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .encoder import Encoder
from .keys import Keys


@dataclass
class Challenge:
    """Encodings an attacker sees, with the ground truth kept apart."""
    encodings: np.ndarray  # (m, C, H, W) float32: T encodings of each private image
    labels: np.ndarray     # (m, K) soft labels, as released with the encodings
    images: np.ndarray     # (n, H, W, C) uint8: the private images (ground truth)
    keys: list             # the Keys of each of the T epochs (ground truth)
    mean: np.ndarray
    std: np.ndarray


def make_challenge(images, labels, encoder: Encoder, encodings_per_image: int) -> Challenge:
    """T = `encodings_per_image` epochs of encodings of every private image (inside or cross
    mode, as the encoder is set up)."""
    keys = [encoder.keys(len(images), epoch) for epoch in range(encodings_per_image)]
    encoded = [encoder.encode(images, labels, k) for k in keys]
    mean = np.zeros(images.shape[-1], np.float32) if encoder.mean is None else encoder.mean
    std = np.ones(images.shape[-1], np.float32) if encoder.std is None else encoder.std
    return Challenge(np.concatenate([e for e, _ in encoded]), np.concatenate([s for _, s in encoded]),
                     np.asarray(images), keys, np.asarray(mean, np.float32), np.asarray(std, np.float32))


def audit(encoder: Encoder, encodings_per_image: int, labels_released: bool = True) -> list[str]:
    """Tier 0: findings that need no computation."""
    findings = ["Randomness comes from a 32-byte secret key (the OS's cryptographic source by default) through "
                "ChaCha20: no seed search is possible, unlike the InstaHide Challenge's 32-bit PRNG seeds."]
    if encoder.sign == "flip" or encoder.sign == "abs":
        findings.append("The sign flip hides only signs: publishing sign * mixture reveals |mixture| exactly, "
                        "the same as sign='abs'.")
    else:
        findings.append("sign='none': the encodings are plain mixtures (k-way mixup), no mask at all.")
    findings.append(f"Each private image is encoded {encodings_per_image} times; every extra encoding adds "
                    "equations for an attacker (with the mixing known, about 10-20 encodings per image sufficed "
                    "to recover images exactly in our measurements; see docs/privacy.md).")
    if labels_released:
        findings.append("Labels are released: they reveal the classes mixed in each encoding and, through the "
                        "soft-label values, the private coefficients.")
    return findings


def mixing_matrix(keys: list, n: int) -> np.ndarray:
    """A (m, n): row j of encoding j holds the coefficients of the private images it mixes
    (inside mode, no windows shifted or flipped)."""
    rows = []
    for k in keys:
        if k.private_terms != k.k:
            raise ValueError("the known-mixing attack handles inside mode only")
        if k.offset.any() or k.flip.any():
            raise ValueError("the known-mixing attack needs unshifted, unflipped windows (pad=0, hflip=False)")
        a = np.zeros((k.n, n))
        np.add.at(a, (np.repeat(np.arange(k.n), k.k), k.index.reshape(-1)), k.lam.reshape(-1).astype(np.float64))
        rows.append(a)
    return np.concatenate(rows)


def recover_known_mixing(encodings: np.ndarray, a: np.ndarray, mean, std, iterations: int = 30,
                         restarts: int = 4, seed: int = 0) -> np.ndarray:
    """Tier 1: private images (n, H, W, C) in [0, 1] from encodings (m, C, H, W) and the known
    mixing matrix A (m, n), signs unknown.

    Per pixel, alternate sign guesses s = sign(A x) and least squares x = A+ (s |e|); start each
    pixel from its solved left (or upper) neighbour, whose sign pattern is nearly right, plus a
    few random starts; keep the best fit. |A x| = |A (-x)|: each pixel takes the sign that agrees
    with its solved neighbour (neighbouring pixels of photos correlate), and each channel's one
    remaining sign is fixed by the pixel range: the sign that puts more unnormalized values inside
    [0, 1] (this needs a mean away from the middle of the range, as real data sets have)."""
    rng = np.random.default_rng(seed)
    m, channels, height, width = encodings.shape
    n = a.shape[1]
    pinv = np.linalg.pinv(a)
    magnitude = np.abs(encodings.astype(np.float64)).reshape(m, channels, height * width)
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    solved = np.zeros((n, channels, height * width))

    def refine(x, e):
        for _ in range(iterations):
            x = pinv @ (np.sign(a @ x + 1e-12) * e)
        return x, np.linalg.norm(np.abs(a @ x) - e)

    for c in range(channels):
        for p in range(height * width):
            e = magnitude[:, c, p]
            starts = [rng.normal(size=n) for _ in range(restarts)]
            if p % width:
                starts.insert(0, solved[:, c, p - 1])
            if p >= width:
                starts.insert(0, solved[:, c, p - width])
            best, best_error = None, np.inf
            for x0 in starts:
                x, error = refine(x0, e)
                if error < best_error:
                    best, best_error = x, error
                if best_error < 1e-6 * (1 + np.linalg.norm(e)):
                    break
            # agree with the solved neighbours (left and upper), or with the same pixel of the
            # previous channel (colour channels correlate) for the first pixel
            correlation = (best @ solved[:, c, p - 1] if p % width else 0.0) + (
                best @ solved[:, c, p - width] if p >= width else 0.0)
            if p == 0 and c > 0:
                correlation = best @ solved[:, c - 1, 0]
            solved[:, c, p] = (np.sign(correlation) or 1.0) * best
    # one sign remains for all pixels: values must unnormalize into [0, 1]
    def inside(v):
        v = v * std[None, :, None] + mean[None, :, None]
        return np.mean((v >= -0.02) & (v <= 1.02))

    if inside(-solved) > inside(solved):
        solved = -solved
    pixels = solved.reshape(n, channels, height, width) * std[:, None, None] + mean[:, None, None]
    return np.clip(pixels.transpose(0, 2, 3, 1), 0, 1)


@dataclass
class Scores:
    ssim: np.ndarray          # per private image, against its own original
    psnr: np.ndarray
    chance_ssim: float        # mean SSIM against a random other private image
    seconds: float

    def summary(self) -> dict:
        return {"mean_ssim": float(self.ssim.mean()), "max_ssim": float(self.ssim.max()),
                "fraction_above_0.5": float((self.ssim > 0.5).mean()), "fraction_above_0.9": float((self.ssim > 0.9).mean()),
                "mean_psnr": float(self.psnr.mean()), "chance_ssim": self.chance_ssim, "seconds": self.seconds}


def score(recovered: np.ndarray, originals: np.ndarray, seconds: float = 0.0, seed: int = 0) -> Scores:
    """SSIM and PSNR (scikit-image) of recovered images (n, H, W, C) in [0, 1] against the
    originals (uint8), with the chance level."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    truth = originals.astype(np.float64) / 255

    def ssim(x, y):
        return structural_similarity(x, y, data_range=1.0, channel_axis=-1)

    ssims = np.array([ssim(r, t) for r, t in zip(recovered, truth)])
    psnrs = np.array([peak_signal_noise_ratio(t, r, data_range=1.0) for r, t in zip(recovered, truth)])
    other = np.random.default_rng(seed).permutation(len(truth))
    other = np.where(other == np.arange(len(truth)), (other + 1) % len(truth), other)
    chance = float(np.mean([ssim(truth[o], t) for o, t in zip(other, truth)]))
    return Scores(ssims, psnrs, chance, seconds)


def run_known_mixing(images, labels, encoder: Encoder, encodings_per_image: int, **options) -> Scores:
    """Tier 1 end to end: challenge, attack, scores."""
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    start = time.perf_counter()
    a = mixing_matrix(challenge.keys, len(images))
    recovered = recover_known_mixing(challenge.encodings, a, challenge.mean, challenge.std, **options)
    return score(recovered, challenge.images, time.perf_counter() - start)
