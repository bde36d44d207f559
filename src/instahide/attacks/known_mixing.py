"""Tier 1 (`recover_known_mixing`, `run_known_mixing`): an upper bound, as GradAttack's: the
attacker knows which images and coefficients made every encoding (not the signs) and solves,
per pixel, the phase retrieval problem |A x| = |e| with A shared by all pixels
(`mixing_matrix`; in cross mode the known public part, `public_part`). The per-pixel sign
retrieval and the choice of the remaining signs are shared with Tier 2's reconstruction."""

from __future__ import annotations

import time

import numpy as np

from ..encoder import Encoder
from .challenge import dominant_members, make_challenge, private_members
from .metrics import Scores, challenge_scores, score


def mixing_matrix(keys: list, n: int) -> np.ndarray:
    """A (m, n): row j of encoding j holds the coefficients of the private images it mixes
    (no windows shifted or flipped; in cross mode the public terms are left to `public_part`)."""
    rows = []
    for k in keys:
        kp = k.private_terms
        if k.offset[:, :kp].any() or k.flip[:, :kp].any():
            raise ValueError("the known-mixing attack needs unshifted, unflipped windows (pad=0, hflip=False)")
        a = np.zeros((k.n, n))
        np.add.at(a, (np.repeat(np.arange(k.n), kp), k.index[:, :kp].reshape(-1)),
                  k.lam[:, :kp].reshape(-1).astype(np.float64))
        rows.append(a)
    return np.concatenate(rows)


def public_part(keys: list, pool, height: int, width: int) -> np.ndarray:
    """Cross mode, mixing known: the public terms of every encoding (m, C, H, W), normalized
    with the pool's statistics. The pool is public, so whoever knows the keys knows this part."""
    parts = []
    for k in keys:
        part = np.zeros((k.n, pool.channels, height, width))
        for i in range(k.n):
            for t in range(k.private_terms, k.k):
                dy, dx = k.offset[i, t]
                patch = pool.image(int(k.index[i, t]))[dy:dy + height, dx:dx + width].astype(np.float64) / 255
                part[i] += k.lam[i, t] * ((patch - pool.mean) / pool.std).transpose(2, 0, 1)
        parts.append(part)
    return np.concatenate(parts)


def recover_known_mixing(encodings: np.ndarray, a: np.ndarray, mean, std, iterations: int = 30,
                         restarts: int = 4, seed: int = 0, public=None) -> np.ndarray:
    """Tier 1: private images (n, H, W, C) in [0, 1] from encodings (m, C, H, W) and the known
    mixing matrix A (m, n), signs unknown.

    Per pixel, alternate sign guesses s = sign(A x) and least squares x = A+ (s |e|); start each
    pixel from its solved left (or upper) neighbour, whose sign pattern is nearly right, plus a
    few random starts; keep the best fit. |A x| = |A (-x)|: each pixel takes the sign that agrees
    with its solved neighbour (neighbouring pixels of photos correlate), and the remaining signs
    come from `_align_channels` (channels agree with channel 0) and `_sign_by_sky` (photos are
    brighter at the top). That rule held on approximate recoveries too, where the pixel range (the sign
    that puts more unnormalized values inside [0, 1]) chose the negated images (inside k=6,
    T=5: mean SSIM -0.35 with the pixel range, 0.75 with this rule, docs/privacy.md).

    Cross mode: `public` (m, C, H, W) is the known public part b (`public_part`); then
    |A x + b| = |e| has no sign ambiguity left, and x = A+ (s |e| - b)."""
    n, (_, channels, height, width) = a.shape[1], encodings.shape
    solved = _retrieve_signs(encodings, a, iterations, restarts, seed, public).reshape(n, channels, height, width)
    if public is None:
        solved = _sign_by_sky(_align_channels(solved), std)
    return _to_pixels(solved, mean, std)


def _retrieve_signs(encodings: np.ndarray, a: np.ndarray, iterations: int, restarts: int, seed: int,
                    public=None) -> np.ndarray:
    """Per-pixel sign retrieval of `recover_known_mixing`: (n, C, H*W) in normalized units, up to
    one global sign (none with a known public part)."""
    rng = np.random.default_rng(seed)
    m, channels, height, width = encodings.shape
    n = a.shape[1]
    pinv = np.linalg.pinv(a)
    magnitude = np.abs(encodings.astype(np.float64)).reshape(m, channels, height * width)
    offsets = np.zeros_like(magnitude) if public is None else np.asarray(public, np.float64).reshape(magnitude.shape)
    solved = np.zeros((n, channels, height * width))

    def refine(x, e, b):
        for _ in range(iterations):
            x = pinv @ (np.sign(a @ x + b + 1e-12) * e - b)
        return x, np.linalg.norm(np.abs(a @ x + b) - e)

    for c in range(channels):
        for p in range(height * width):
            e, b = magnitude[:, c, p], offsets[:, c, p]
            starts = [rng.normal(size=(n,)) for _ in range(restarts)]
            if p % width:
                starts.insert(0, solved[:, c, p - 1])
            if p >= width:
                starts.insert(0, solved[:, c, p - width])
            best, best_error = None, np.inf
            for x0 in starts:
                x, error = refine(x0, e, b)
                if error < best_error:
                    best, best_error = x, error
                if best_error < 1e-6 * (1 + np.linalg.norm(e)):
                    break
            if best is None:
                raise RuntimeError("sign retrieval found no finite solution")
            # agree with the solved neighbours (left and upper), or with the same pixel of the
            # previous channel (colour channels correlate) for the first pixel
            correlation = (best @ solved[:, c, p - 1] if p % width else 0.0) + (
                best @ solved[:, c, p - width] if p >= width else 0.0)
            if p == 0 and c > 0:
                correlation = best @ solved[:, c - 1, 0]
            if public is not None:  # the public part fixes the sign
                correlation = 1.0
            solved[:, c, p] = (np.sign(correlation) or 1.0) * best
    return solved


def _to_pixels(normalized: np.ndarray, mean, std) -> np.ndarray:
    """(n, C, H, W) normalized values to (n, H, W, C) images in [0, 1]."""
    mean = np.asarray(mean, np.float64)[:, None, None]
    std = np.asarray(std, np.float64)[:, None, None]
    return np.clip((normalized * std + mean).transpose(0, 2, 3, 1), 0, 1)


def _align_channels(normalized: np.ndarray) -> np.ndarray:
    """The channels decouple, so each has its own sign. Colour channels correlate: each takes
    the sign that correlates with channel 0 over all images. One global sign is left."""
    normalized = normalized.copy()
    for c in range(1, normalized.shape[1]):
        if np.sum(normalized[:, c] * normalized[:, 0]) < 0:
            normalized[:, c] = -normalized[:, c]
    return normalized


def _sign_by_sky(normalized: np.ndarray, std) -> np.ndarray:
    """The global sign of channel-aligned recoveries. The pixel range (the sign that puts more
    unnormalized values inside [0, 1]) cannot tell it on approximate values: photos are
    brighter at the top than at the bottom (sky, light from above; on every random subset of
    CIFAR-10 test we tried, and an attacker can check it on public data), so the sign under
    which most images have the brighter upper half wins (72% of 2000 CIFAR-10 test images do,
    so 100 images vote rightly with near certainty; a handful of images may not)."""
    brightness = (normalized * np.asarray(std, np.float64)[None, :, None, None]).mean(axis=1)
    half = normalized.shape[2] // 2
    # one vote per image, on its own scale: approximate recoveries differ in scale, and a
    # mean over the set let one image with a large norm decide for all
    difference = brightness[:, :half].mean(axis=(1, 2)) - brightness[:, half:].mean(axis=(1, 2))
    votes = np.sign(difference).sum()
    if votes == 0:
        votes = (difference / (brightness.std(axis=(1, 2)) + 1e-12)).sum()
    return normalized if votes >= 0 else -normalized


def run_known_mixing(images, labels, encoder: Encoder, encodings_per_image: int, **options) -> Scores:
    """Tier 1 end to end: challenge, attack, scores."""
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    start = time.perf_counter()
    a = mixing_matrix(challenge.keys, len(images))
    public = None
    if encoder.public is not None:
        public = public_part(challenge.keys, encoder.public, *challenge.encodings.shape[2:])
    recovered = recover_known_mixing(challenge.encodings, a, challenge.mean, challenge.std, public=public, **options)
    scores = score(recovered, challenge.images, time.perf_counter() - start)
    scores.challenge = challenge
    # one image per encoding, as the challenge asks: the recovery of its largest private term
    scores.per_encoding = challenge_scores(recovered[dominant_members(challenge.keys)],
                                           private_members(challenge.keys), challenge.images)
    return scores
