"""The attacked setting: `Challenge` (the encodings an attacker sees, with the ground truth
kept apart) and `make_challenge`, which encodes every private image for T epochs with our own
encoder; `dominant_members` and `private_members` read the ground truth (which private images
each encoding mixes) from the keys, for scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoder import Encoder


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


def dominant_members(keys: list) -> np.ndarray:
    """Ground truth: the private image with the largest coefficient in each encoding."""
    return np.concatenate([k.index[np.arange(len(k.index)), np.argmax(k.lam[:, :k.private_terms], axis=1)]
                           for k in keys])


def private_members(keys: list) -> np.ndarray:
    """Ground truth: (m, private terms) private images mixed in each encoding, challenge order."""
    return np.concatenate([k.index[:, :k.private_terms] for k in keys])
