"""The CPU backend: executes a Plan with the compiled core on host arrays (numpy arrays, or
CPU torch tensors read as numpy views, never copied). The core reads the epoch's tables at the
batch's row ids, checks every entry it reads, and mixes the labels in the same parallel call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _arrays, _core
from ._plan import Images, Plan


@dataclass(frozen=True)
class HostImages:
    """The caller's images as the core reads them, and whether to answer in torch tensors."""

    array: np.ndarray
    torch: bool


def intake(images, layout: str | None) -> tuple[HostImages, Images]:
    """The images' numpy view and geometry (uint8 or float32, 4-d, the layout given or told
    from the channel axis)."""
    x = _arrays.as_numpy(images, "images")
    channels_last = _arrays.channels_last(x, layout)
    channels, height, width = (x.shape[3], x.shape[1], x.shape[2]) if channels_last else x.shape[1:]
    return HostImages(x, _arrays.is_torch(images)), Images(x.shape[0], channels, height, width, channels_last, x.dtype)


def labels_for_core(labels, plan: Plan) -> tuple[_core.Labels | None, int]:
    """(the labels as the core reads them, class count): class ids as int64 (their range is
    the core's to check, for the rows a batch reads), soft labels as float32, both
    C-contiguous; None for an empty set of class ids without num_classes (no class)."""
    labels, classes, soft_input = _arrays.check_labels(labels, plan.keys.n, plan.num_classes, scan=False)
    if classes < 1:
        return None, 0
    return _core.Labels.host(labels=np.ascontiguousarray(labels, np.float32 if soft_input else np.int64),
                             classes=classes, renormalize=plan.renormalize_labels), classes


def sources(plan: Plan, images: np.ndarray) -> list[_core.ImageSource]:
    """The core's image sources: the private images, and the public pool in cross mode."""
    listed = [_core.ImageSource.host(images=images, channels_last=plan.images.channels_last, scale=plan.scale,
                                     shift=plan.shift)]
    if plan.public is not None:
        pool = plan.public
        listed.append(_core.ImageSource.host_packed(pixels=pool.pixels, channels=pool.channels, offsets=pool.offsets,
                                                    sizes=pool.sizes, scale=plan.public_scale,
                                                    shift=plan.public_shift))
    return listed


def encode(plan: Plan, images: HostImages, labels, rows) -> tuple:
    """(encoded, soft labels) of `rows` of the epoch: numpy arrays, or torch tensors for torch
    input."""
    keys = plan.keys
    rows = _arrays.row_ids(rows, plan.images.n)
    out = _arrays.allocate(plan.out_shape(len(rows)), _arrays.numpy_out_dtype(plan.out_dtype), "the encoded batch")
    core_labels, classes = labels_for_core(labels, plan)
    if len(rows):  # an empty batch has nothing to check or compute (even for an empty set)
        soft = _core.encode(sources=sources(plan, images.array), private_terms=keys.private_terms, index=keys.index,
                            lam=keys.lam, offset=keys.offset, flip=keys.flip, row_id=rows, mask_key=keys.mask_key,
                            epoch=keys.epoch, sign=plan.sign, out=out, out_type=plan.out_code,
                            out_channels_last=plan.out_channels_last, num_threads=plan.num_threads,
                            patches_inside=True, labels=core_labels, cpu_kernel=plan.cpu_kernel)
        assert soft is not None  # the core returns the soft labels whenever labels are given
    else:
        soft = np.zeros((0, classes), np.float32)
    if images.torch:
        return _to_torch(out, plan.out_dtype), _to_torch(soft, "float32")
    return out, soft


def mix_labels(plan: Plan, labels, rows: np.ndarray) -> np.ndarray:
    """The soft labels of `rows` from host labels, by the core: sum over private terms of
    lam[i, t] times the one-hot class or the soft label of term t's image (float64 sums, one
    rounding), as the encode call mixes them."""
    core_labels, classes = labels_for_core(labels, plan)
    if not len(rows) or core_labels is None:
        return np.zeros((len(rows), classes), np.float32)
    keys = plan.keys
    return _core.mix_labels(index=keys.index, lam=keys.lam, row_id=rows, private_terms=keys.private_terms,
                            labels=core_labels)


def _to_torch(array: np.ndarray, dtype: str):
    import torch

    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
