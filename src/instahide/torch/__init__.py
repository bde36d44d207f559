"""PyTorch integration (needs torch): epoch-keyed encoded batches for DataLoader workers, a
batch transform in the style of timm's Mixup, soft-target cross-entropy, and InstaHide
inference (the paper's section 3.3).

Each epoch is re-keyed: fresh partners, coefficients, windows and masks (the paper's one-time
use). Keys derive from the encoder's secret key and the epoch inside whichever process needs
them, so DataLoader workers (fork or spawn) receive no keys, only the dataset object.

Modules: `loader` (EncodedBatches, InstaHideLoader, InstaHideMix), `loss` (soft_cross_entropy),
`inference` (predict), and, imported when named, `models` (the training command's networks)
and `recipe` (the fast training recipe).
"""

from .inference import predict
from .loader import EncodedBatches, InstaHideLoader, InstaHideMix
from .loss import soft_cross_entropy

__all__ = ["EncodedBatches", "InstaHideLoader", "InstaHideMix", "soft_cross_entropy", "predict"]
