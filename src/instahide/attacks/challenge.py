"""The attacked setting: `Challenge` (the encodings an attacker sees, with the ground truth
kept apart) and `make_challenge`, which encodes every private image for T epochs with our own
encoder; `dominant_members` and `private_members` read the ground truth (which private images
each encoding mixes) from the keys, for scoring. `SETTINGS`, `challenge_encoder` and
`challenge_pool` make the settings of the InstaHide Challenge and its inside-mode relatives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoder import Encoder

# The settings attacked in docs/privacy.md. "cross 2+4" is the InstaHide Challenge's: k = 6, two
# private images and four public patches, the private coefficients summing to at least 0.3.
SETTINGS: dict[str, dict] = {"inside k=4": dict(k=4), "inside k=6": dict(k=6),
                             "cross 2+4": dict(k=6, private_terms=2, dom=0.3)}
PATCH_SIZE = 32
MIN_KEYPOINTS = 40
# The crop and flip that training fuses into the encoder (each term of an encoding gets its own
# window offset in [-pad, pad] and flip bit): "translate 2 + flip" is the fast recipe's
# (`instahide train --recipe fast`, benchmarks/time_to_accuracy.py), "pad 4 + flip" the paper
# recipe's (`instahide train`).
AUGMENTATIONS: dict[str, dict] = {"none": dict(pad=0, hflip=False), "translate 2 + flip": dict(pad=2, hflip=True),
                                  "pad 4 + flip": dict(pad=4, hflip=True)}


def challenge_pool(data_dir=None, min_keypoints: int | None = MIN_KEYPOINTS, limit: int | None = None):
    """The public pool of the challenge setting: Tiny-ImageNet validation images with more than
    `min_keypoints` OpenCV SIFT keypoints (the challenge's filter of flat images), counted at
    their own 64x64 size (where 45% pass; at 40x40 under 1% would), then scaled to a short side
    of 40 pixels, from which the encoder cuts random 32x32 patches."""
    from pathlib import Path

    from ..datasets import default_data_dir
    from ..pool import PublicPool

    return PublicPool.from_tar(Path(data_dir or default_data_dir()) / "tiny-imagenet-val.tar", short_side=40,
                               limit=limit, min_keypoints=min_keypoints, progress=False)


def challenge_encoder(setting: str, mean, std, pool=None, key: bytes | None = None,
                      augmentation: str = "none") -> Encoder:
    """The encoder of one of `SETTINGS` with `key` (None: a fresh one from the OS); cross mode
    needs the public `pool`. `augmentation`, one of `AUGMENTATIONS`: "none" as the challenge's
    encodings, or the crop and flip of a training recipe."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {setting!r}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {sorted(AUGMENTATIONS)}, got {augmentation!r}")
    options = dict(SETTINGS[setting], **AUGMENTATIONS[augmentation])
    if "private_terms" in options:
        if pool is None:
            raise ValueError(f"{setting} mixes public patches: pass the public pool (challenge_pool())")
        options.update(public=pool, patch_size=PATCH_SIZE)
    return Encoder(mean=mean, std=std, key=key, **options)


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
