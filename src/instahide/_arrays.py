"""Array intake shared by the encoder and the reference: numpy arrays and CPU torch tensors
as numpy views (no copies), layouts, rows, labels and normalization, with clear errors."""

from __future__ import annotations

import functools
import os

import numpy as np

OUT_DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_COUNTS = (1, 3, 4)


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "numpy")


def as_numpy(x, name: str) -> np.ndarray:
    """A numpy view of a numpy array or a CPU torch tensor; never a copy."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}: pass CPU tensors or numpy arrays here "
                             "(CUDA tensors go to the GPU path)")
        if x.requires_grad:
            x = x.detach()
        return x.numpy()
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def channels_last(images: np.ndarray, layout: str | None) -> bool:
    """Whether (N, ., ., .) images are NHWC; layout None guesses from the channel axis."""
    if images.dtype not in (np.uint8, np.float32):
        raise TypeError(f"images must be uint8 or float32, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"images must be 4-d (N, C, H, W) or (N, H, W, C), got shape {images.shape}")
    if layout is None:
        first, last = images.shape[1] in _CHANNEL_COUNTS, images.shape[3] in _CHANNEL_COUNTS
        if first == last:
            raise ValueError(f"cannot tell the layout of images of shape {images.shape}: pass layout='NCHW' or 'NHWC'")
        return last
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    channels = images.shape[3 if layout == "NHWC" else 1]
    if not 1 <= channels <= 4:
        raise ValueError(f"images of shape {images.shape} have {channels} channels in layout {layout!r}: "
                         "C must be 1 to 4 (is the layout right?)")
    if min(images.shape[1:]) < 1:
        raise ValueError(f"images must have a positive size, got shape {images.shape}")
    return layout == "NHWC"


def row_ids(rows, n: int) -> np.ndarray:
    """Epoch row ids as int64: all rows for None, a slice, or an index array."""
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, slice):
        return np.ascontiguousarray(np.arange(n, dtype=np.int64)[rows])
    if is_torch(rows) and rows.device.type != "cpu":
        raise TypeError(f"rows are on {rows.device} but the images on the host: pass host row ids (rows.cpu())")
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise TypeError("rows must be a slice or a 1-d array of integers")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must lie in [0, {n}), got values in [{rows.min()}, {rows.max()}]")
    return rows


def check_keys(keys, n: int, check_indices: bool = True, public=None, patch=None) -> None:
    """Keys for n images; `check_indices=False` leaves the index range to the compiled core,
    which checks every row it encodes (a full scan per batch would cost more than a batch)."""
    from .keys import Keys

    if not isinstance(keys, Keys):
        raise TypeError(f"keys must be instahide.Keys, got {type(keys).__name__}")
    if keys.n != n:
        raise ValueError(f"the keys are for {keys.n} rows but there are {n} images")
    kp = keys.private_terms
    if kp != keys.k and public is None:
        raise ValueError("these keys have public terms: the encoder needs the public pool")
    if check_indices and keys.index.size:
        private, public_index = keys.index[:, :kp], keys.index[:, kp:]
        if private.min() < 0 or private.max() >= n:
            raise ValueError(f"keys.index refers to images outside [0, {n})")
        if public_index.size and (public_index.min() < 0 or public_index.max() >= len(public)):
            raise ValueError(f"keys.index refers to public images outside [0, {len(public)})")
        check_key_values(keys, public, patch)


def check_key_values(keys, public=None, patch=None) -> None:
    """What the compiled core re-checks per row, over all rows at once (for the paths that
    check keys once: the reference and the CUDA tables): finite coefficients, and public
    patches inside their images. Private indices must already be in range."""
    if not np.isfinite(keys.lam).all():
        row, term = np.argwhere(~np.isfinite(keys.lam))[0]
        raise ValueError(f"keys.lam[{row}, {term}] = {keys.lam[row, term]} is not finite")
    if keys.private_terms < keys.k and public is not None and patch is not None:
        check_public_patches(keys.index, keys.offset, np.arange(keys.n), keys.private_terms, public, patch)


def check_public_patches(index, offset, rows, private_terms: int, public, patch) -> None:
    """The public terms of `rows` (their index and offset tables) read patches inside their
    pool images (docs/algorithm.md). The core would read 0 outside them; keys that do that
    are forged or meant for another pool."""
    public_index = index[:, private_terms:]
    if public_index.size == 0:
        return
    outside = (public_index < 0) | (public_index >= len(public))
    if outside.any():
        row, term = np.argwhere(outside)[0]
        raise ValueError(f"keys.index[{rows[row]}, {private_terms + term}] = {public_index[row, term]} is out of range "
                         f"for a set of {len(public)} images")
    sizes = public.sizes[public_index]  # (rows, k - kp, 2)
    corner = offset[:, private_terms:].astype(np.int64)
    inside = ((corner >= 0) & (corner + np.asarray(patch, np.int64) <= sizes)).all(axis=2)
    if not inside.all():
        row, term = np.argwhere(~inside)[0]
        raise ValueError(f"keys.offset[{rows[row]}, {private_terms + term}] = {tuple(corner[row, term].tolist())} puts "
                         f"the {patch[0]}x{patch[1]} patch outside public image {public_index[row, term]} "
                         f"{tuple(sizes[row, term].tolist())}")


def check_memory(shape, dtype, what: str) -> None:
    """A clear MemoryError for an output larger than this machine's memory, before allocating
    it (an overcommitting kernel would hand out the pages and kill the process once they are
    written)."""
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize  # Python ints: no overflow
    physical = _physical_memory()
    if physical is not None and nbytes > physical:
        raise MemoryError(f"{what} of shape {shape} needs {nbytes / 2**30:.3g} GiB, more than this machine's "
                          f"{physical / 2**30:.3g} GiB: encode fewer rows at a time")


@functools.cache
def _physical_memory() -> int | None:
    """Bytes of physical memory (asked once: every encode call checks its output against it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def allocate(shape, dtype, what: str) -> np.ndarray:
    """np.empty after check_memory, with the same clear message if the allocation fails."""
    check_memory(shape, dtype, what)
    try:
        return np.empty(shape, dtype)
    except MemoryError as error:
        raise MemoryError(f"{what} of shape {tuple(shape)} could not be allocated: "
                          "encode fewer rows at a time") from error


def normalization(mean, std, channels: int):
    """Per-channel mean and std as float32 arrays; None means 0 and 1."""
    mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)
    std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"mean and std need {channels} values (one per channel)")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("mean must be finite and std finite and positive")
    return mean, std


def check_out_dtype(out_dtype: str) -> str:
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    return out_dtype


def numpy_out_dtype(out_dtype: str):
    """bfloat16, which numpy lacks, travels as uint16 bit patterns."""
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[check_out_dtype(out_dtype)]


def to_out_dtype(x: np.ndarray, out_dtype: str) -> np.ndarray:
    """float32 -> the output dtype, bfloat16 as uint16 bits rounded to nearest even."""
    if check_out_dtype(out_dtype) != "bfloat16":
        with np.errstate(over="ignore"):  # overflow to inf is the conversion's defined result
            return x.astype(numpy_out_dtype(out_dtype))
    bits = x.astype(np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    return np.where(nan, ((bits >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), rounded)


def bfloat16_to_float32(bits) -> np.ndarray:
    """Widens bfloat16 bit patterns (uint16, as numpy outputs carry them) to float32."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError("expected uint16 bfloat16 bit patterns")
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def check_labels(labels, n: int, num_classes: int | None, scan: bool = True):
    """(labels as numpy, number of classes, whether they are soft): class ids (n,) of an
    integer dtype, or soft labels (n, K) of a float dtype. `scan=False` leaves the range of
    the class ids to the compiled core, which checks those a batch reads (a full scan per
    batch costs more than mixing its labels); the class count still comes from the largest
    id when `num_classes` is None."""
    labels = as_numpy(labels, "labels")
    if labels.shape[:1] != (n,):
        raise ValueError(f"labels must have one entry per image ({n}), got shape {labels.shape}")
    if labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"soft labels have {labels.shape[1]} classes, num_classes={num_classes}")
        if labels.shape[1] < 1:
            raise ValueError("soft labels need at least one class (shape (n, K) with K >= 1)")
        return labels, labels.shape[1], True
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError("labels must be class ids (n,) of an integer dtype or soft labels (n, K) of a float dtype")
    if scan and n and labels.min() < 0:
        raise ValueError("class ids must be >= 0")
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    classes = (int(labels.max()) + 1 if n else 0) if num_classes is None else int(num_classes)
    if n and classes < 1:
        raise ValueError("class ids must be >= 0")
    if scan and n and labels.max() >= classes:
        raise ValueError(f"class id {labels.max()} is not below num_classes={classes}")
    return labels, classes, False
