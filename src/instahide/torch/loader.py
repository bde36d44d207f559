"""Encoded batches for training: `EncodedBatches` (a map-style dataset whose item b is batch b
of the current epoch, re-keyed per epoch and shared out over DDP ranks), `InstaHideLoader`
(a DataLoader over it that starts the next epoch on every iteration) and `InstaHideMix` (a
batch transform for pipelines that already produce batches)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed
from torch.utils.data import DataLoader, Dataset

from ..encoder import Encoder
from ..keys import row_order


class EncodedBatches(Dataset):
    """Item b is batch b of the current epoch: (encoded images, soft labels) as tensors.

    Call ``set_epoch(e)`` before each epoch (as with DistributedSampler); use it with
    ``DataLoader(batches, batch_size=None, num_workers=...)`` or `InstaHideLoader`. Rows are
    shuffled per epoch in an order derived from the secret key too, so every process agrees.
    Images on a GPU (torch CUDA tensors) encode there; use no workers then.

    Distributed training (DDP): every rank holds the whole private set and the same secret key,
    derives the same epoch keys, and encodes only its share of the batches (batch b goes to rank
    b mod world_size), so all ranks together produce exactly the single-process epoch. `rank`
    and `world_size` default to torch.distributed's when it is initialized.
    """

    def __init__(self, images, labels, encoder: Encoder, batch_size: int = 128, shuffle: bool = True,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = int(rank if rank is not None else torch.distributed.get_rank() if distributed else 0)
        self.world_size = int(world_size if world_size is not None else
                              torch.distributed.get_world_size() if distributed else 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.images, self.labels, self.encoder = images, labels, encoder
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.n = len(images)
        self.epoch = 0
        self._cache = None  # (epoch, keys, order): derived once per epoch and process
        self._device_order: tuple[int, torch.Tensor] | None = None  # (epoch, the order on the images' GPU)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def total_batches(self) -> int:
        """Batches of the whole epoch, over all ranks."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        """This rank's batches."""
        return max(0, -(-(self.total_batches - self.rank) // self.world_size))

    def epoch_keys(self):
        """(keys, row order) of the current epoch."""
        if self._cache is None or self._cache[0] != self.epoch:
            keys = self.encoder.keys(self.n, self.epoch)
            order = np.arange(self.n)
            if self.shuffle:
                order = row_order(self.encoder.key, self.epoch, self.n)
            self._cache = (self.epoch, keys, order)
        return self._cache[1], self._cache[2]

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = i * self.world_size + self.rank  # this rank's i-th batch of the epoch
        keys, order = self.epoch_keys()
        if self._rows_on_device():  # uploaded once per epoch; each batch takes a slice of it
            if self._device_order is None or self._device_order[0] != self.epoch:
                self._device_order = (self.epoch, torch.from_numpy(order.astype(np.int64)).to(self.images.device))
            rows = self._device_order[1][b * self.batch_size:(b + 1) * self.batch_size]
        else:
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
        x, y = self.encoder.encode(self.images, self.labels, keys, rows=rows)
        return _as_tensor(x), _as_tensor(y)

    def _rows_on_device(self) -> bool:
        """Images and labels on one GPU: the rows go there too (with labels on the host, the
        host mixes the soft labels and needs the rows there)."""
        return (torch.is_tensor(self.images) and self.images.is_cuda and torch.is_tensor(self.labels)
                and self.labels.device == self.images.device)


class InstaHideLoader:
    """Iterates over epochs of encoded batches, re-keying each time it is iterated:
    ``for x, y in loader`` runs epoch loader.epoch, then the next call the next epoch."""

    def __init__(self, images, labels, encoder: Encoder, batch_size: int = 128, shuffle: bool = True,
                 drop_last: bool = False, num_workers: int = 0, start_epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, **loader_options) -> None:
        self.batches = EncodedBatches(images, labels, encoder, batch_size, shuffle, drop_last, rank, world_size)
        self.num_workers, self.loader_options = num_workers, loader_options
        self.epoch = int(start_epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.batches.set_epoch(self.epoch)
        self.epoch += 1
        yield from DataLoader(self.batches, batch_size=None, shuffle=False, num_workers=self.num_workers,
                              **self.loader_options)


class InstaHideMix:
    """Batch-level InstaHide for pipelines that already produce batches, in the style of timm's
    Mixup: ``x, y = mix(x, y)`` mixes each image with others of its batch. Every call uses
    fresh keys (its own epoch number, counting calls): give it an Encoder of its own."""

    def __init__(self, encoder: Encoder, start: int = 0) -> None:
        self.encoder, self.calls = encoder, int(start)

    def __call__(self, images, labels):
        keys = self.encoder.keys(len(images), self.calls)
        self.calls += 1
        x, y = self.encoder.encode(images, labels, keys)
        return _as_tensor(x), _as_tensor(y)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
