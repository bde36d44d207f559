"""InstaHide inference (the paper's section 3.3): `predict` averages a model's softmax outputs
over fresh encodings of each image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..encoder import Encoder
from .loader import _as_tensor


@torch.no_grad()
def predict(model, images, encoder: Encoder, num_classes: int, repeats: int = 1, own_at_least: float = 0.0,
            batch_size: int = 256, start_epoch: int = 0) -> torch.Tensor:
    """InstaHide inference (the paper's section 3.3): class probabilities (n, num_classes) of
    `images`, each encoded `repeats` times with fresh keys (mixed with other images of the set
    and masked, as in training) and the softmax outputs averaged. `own_at_least` (e.g. 0.5)
    keeps each image's own coefficient at least that large. Give the encoder a key and epochs
    of its own (not the training encoder's)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    device = next(model.parameters()).device
    n = len(images)
    probabilities = torch.zeros((n, num_classes), device=device)
    no_labels = np.zeros(n, np.int64)
    for r in range(repeats):
        keys = encoder.keys(n, start_epoch + r, own_at_least=own_at_least)
        for start in range(0, n, batch_size):
            x, _ = encoder.encode(images, no_labels, keys, rows=np.arange(start, min(n, start + batch_size)))
            probabilities[start:start + len(x)] += F.softmax(model(_as_tensor(x).to(device).float()), dim=-1)
    return probabilities / repeats
