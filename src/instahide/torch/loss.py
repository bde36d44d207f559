"""The loss on soft (mixed) labels: `soft_cross_entropy`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_c -targets[c] * log_softmax(logits)[c] (soft labels)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
