"""The CUDA backend: executes a Plan on arrays that live on a GPU: torch CUDA tensors and other
objects exposing ``__cuda_array_interface__`` (e.g. CuPy), read through their pointers, shapes
and strides (no libtorch link, as faiss's contrib/torch_utils does). The kernel runs on the
caller's current stream of the array's device, asynchronously.

Keys are uploaded once per epoch and device (cached on the Keys object); the kernel looks
each batch row up in them by its row id. Row ids from the host are copied per batch; row ids
already on the device (an int64 torch tensor, e.g. a slice of the epoch's order uploaded
once) are used in place, checked once per tensor they are a view of. Output is allocated on
the same device by the array's own library.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays, _core, _cpu
from ._plan import Images, Plan

_PIXEL = {np.dtype(np.uint8): 0, np.dtype(np.float32): 1}
_TORCH_PIXEL_DTYPES = {"torch.uint8": np.dtype(np.uint8), "torch.float32": np.dtype(np.float32)}
_device_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_device_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_side_streams: dict = {}  # device -> the torch stream that uploads row ids


def is_cuda_array(x) -> bool:
    if _arrays.is_torch(x):
        return x.device.type == "cuda"
    return hasattr(x, "__cuda_array_interface__")


class _Library:
    """The few array operations the CUDA path needs, from torch or CuPy."""

    def __init__(self, x) -> None:
        self.xp: Any  # the torch or the cupy module
        if _arrays.is_torch(x):
            import torch

            self.name, self.xp = "torch", torch
            self.device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        elif type(x).__module__.split(".")[0] == "cupy":
            import cupy

            self.name, self.xp = "cupy", cupy
            self.device = x.device.id
        else:
            raise TypeError(f"{type(x).__name__} exposes __cuda_array_interface__ but is neither a torch tensor "
                            "nor a CuPy array; convert it to one of those")

    def stream(self) -> int:
        if self.name == "torch":
            return self.xp.cuda.current_stream(self.device).cuda_stream
        with self.xp.cuda.Device(self.device):
            return self.xp.cuda.get_current_stream().ptr

    def upload(self, array: np.ndarray, wait: bool = False):
        """Host to device on the current stream. Without `wait` torch stages the copy in its
        caching pinned-memory allocator (which keeps the buffer until the copy is done) and
        returns at once; with it the copy is complete on return, for arrays kept and used
        later on any stream (the epoch's tables, the public pool)."""
        if self.name == "torch":
            host = self.xp.from_numpy(np.ascontiguousarray(array))
            if wait:
                return host.to(f"cuda:{self.device}")
            return host.pin_memory().to(f"cuda:{self.device}", non_blocking=True)
        with self.xp.cuda.Device(self.device):
            return self.xp.asarray(array)

    def upload_rows(self, rows: np.ndarray):
        """The batch's row ids on the device. With torch they are copied on a side stream that
        the current stream then waits for: the copy overlaps the work already queued (the
        previous batch's kernel) instead of running between two kernels."""
        if self.name != "torch":
            return self.upload(rows)
        torch = self.xp
        current = torch.cuda.current_stream(self.device)
        side = _side_streams.get(self.device)
        if side is None:
            side = _side_streams[self.device] = torch.cuda.Stream(self.device)
        host = torch.from_numpy(rows).pin_memory()  # the pinned block is kept until the copy ends
        with torch.cuda.stream(side):
            device_rows = host.to(f"cuda:{self.device}", non_blocking=True)
        current.wait_stream(side)
        device_rows.record_stream(current)  # its memory is not reused before the kernel is done
        return device_rows

    def empty(self, shape, dtype: str):
        if self.name == "torch":
            return self.xp.empty(shape, dtype=getattr(self.xp, dtype), device=f"cuda:{self.device}")
        if dtype == "bfloat16":
            raise TypeError("CuPy has no bfloat16: use out_dtype float32 or float16, or torch tensors")
        with self.xp.cuda.Device(self.device):
            return self.xp.empty(shape, dtype=dtype)

    def pointer(self, a) -> int:
        # torch refuses __cuda_array_interface__ for bfloat16 tensors: ask it directly
        return a.data_ptr() if self.name == "torch" else a.__cuda_array_interface__["data"][0]


def _interface(x, name: str):
    """(pointer, dtype, shape, strides in elements) of a CUDA array."""
    if _arrays.is_torch(x):  # asked directly: torch's __cuda_array_interface__ is slow Python
        dtype = _TORCH_PIXEL_DTYPES.get(str(x.dtype))
        if dtype is None:
            raise TypeError(f"{name} must be uint8 or float32, got {x.dtype}")
        return x.data_ptr(), dtype, tuple(x.shape), tuple(x.stride())
    cai = x.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    strides = cai.get("strides")
    if strides is None:  # C-contiguous
        strides, size = [], dtype.itemsize
        for extent in reversed(shape):
            strides.insert(0, size)
            size *= extent
    if any(s % dtype.itemsize for s in strides):
        raise ValueError(f"{name}: strides must be multiples of the element size")
    return cai["data"][0], dtype, shape, tuple(s // dtype.itemsize for s in strides)


def _tables(keys, lib: _Library, pool=None, patch=None):
    """The keys' per-row tables on the device, uploaded once per (keys, device), with the range
    of the indices they hold, checked here once rather than per batch (the kernel trusts them)."""
    per_keys = _device_tables.setdefault(keys, {})
    if lib.device not in per_keys:
        kp = keys.private_terms
        private, public = keys.index[:, :kp], keys.index[:, kp:]
        bounds = {"private": (int(private.min()), int(private.max())) if private.size else (0, -1),
                  "public": (int(public.min()), int(public.max())) if public.size else (0, -1)}
        _arrays.check_key_values(keys, pool, patch)  # what the CPU path checks per batch
        per_keys[lib.device] = ({name: lib.upload(value, wait=True) for name, value in (
            ("index", keys.index), ("lam", keys.lam), ("offset", keys.offset), ("flip", keys.flip.view(np.uint8)))},
            bounds)
    return per_keys[lib.device]


def _pool_source(pool, lib: _Library, scale: tuple, shift: tuple) -> _core.ImageSource:
    """The public pool on the device (uploaded once per device) as a packed source."""
    per_pool = _device_pools.setdefault(pool, {})
    if lib.device not in per_pool:
        per_pool[lib.device] = [lib.upload(a, wait=True) for a in (pool.pixels, pool.offsets, pool.sizes)]
    pixels, offsets, sizes = per_pool[lib.device]
    return _core.ImageSource.device_packed(pointer=lib.pointer(pixels), pixel=0, channels=pool.channels,
                                           count=len(pool), offsets=lib.pointer(offsets), sizes=lib.pointer(sizes),
                                           elements=len(pool.pixels), scale=scale, shift=shift)


@dataclass(frozen=True)
class DeviceImages:
    """The caller's images on a GPU: their library (torch or CuPy) and device, base pointer
    and element strides in (N, C, H, W) order."""

    lib: _Library
    pointer: int
    strides: tuple[int, int, int, int]


def intake(images, layout: str | None) -> tuple[DeviceImages, Images]:
    """The images' pointer, strides and geometry (uint8 or float32, 4-d, on the device their
    library names)."""
    lib = _Library(images)
    pointer, dtype, shape, strides = _interface(images, "images")
    if dtype not in _PIXEL:
        raise TypeError(f"images must be uint8 or float32, got {dtype}")
    if len(shape) != 4:
        raise ValueError(f"images must be 4-d (N, C, H, W) or (N, H, W, C), got shape {shape}")
    owner = _core.pointer_device(pointer) if shape[0] else lib.device
    if owner != lib.device:
        raise ValueError(f"images claim device {lib.device} but their memory is on device {owner}")
    channels_last = _arrays.channels_last(np.empty((0, *shape[1:]), dtype), layout)
    axes = (0, 3, 1, 2) if channels_last else (0, 1, 2, 3)
    n, channels, height, width = (shape[a] for a in axes)
    device_strides = (strides[axes[0]], strides[axes[1]], strides[axes[2]], strides[axes[3]])
    return DeviceImages(lib, pointer, device_strides), Images(n, channels, height, width, channels_last, dtype)


def encode(plan: Plan, images: DeviceImages, labels, rows):
    """(encoded, soft labels) of `rows` of the epoch, as arrays of the images' library on
    their device. Host data costs a round trip only where the caller passes it: row ids on the
    host are uploaded per batch (on a side stream with torch); labels on the host are mixed
    there by the CPU core and uploaded; row ids on the device with labels on the host are
    copied to the host for that."""
    lib, keys, geometry = images.lib, plan.keys, plan.images
    n = geometry.n
    rows_on_device = is_cuda_array(rows)
    if rows_on_device:
        device_rows = _device_row_ids(rows, n, lib)
        count = int(device_rows.shape[0])
    else:
        rows = _arrays.row_ids(rows, n)
        count = len(rows)
    shape = (n, geometry.channels, geometry.height, geometry.width)
    sources = [_core.ImageSource.device(pointer=images.pointer, pixel=_PIXEL[geometry.dtype], shape=shape,
                                        strides=images.strides, scale=plan.scale, shift=plan.shift)]
    if plan.public is not None:
        sources.append(_pool_source(plan.public, lib, plan.public_scale, plan.public_shift))

    out = lib.empty(plan.out_shape(count), plan.out_dtype)
    if count == 0:
        return out, lib.upload(_cpu.mix_labels(plan, _host_labels(labels), np.empty(0, np.int64)))
    tables, bounds = _tables(keys, lib, plan.public, (geometry.height, geometry.width))
    if bounds["private"][0] < 0 or bounds["private"][1] >= n:
        raise ValueError(f"keys.index refers to images outside [0, {n})")
    if plan.public is not None and (bounds["public"][0] < 0 or bounds["public"][1] >= len(plan.public)):
        raise ValueError(f"keys.index refers to public images outside [0, {len(plan.public)})")
    on_device = lib.name == "torch" and _arrays.is_torch(labels) and labels.device == tables["lam"].device
    device_labels, classes, soft_input = (_checked_device_labels(labels, keys.n, plan.num_classes) if on_device
                                          else (None, 0, False))
    if not rows_on_device:
        device_rows = lib.upload_rows(rows)
    # Labels on this device (class ids or soft labels) are mixed by the kernel, in the same
    # pass (float64 sums in term order, as the host's, so both agree bit for bit).
    soft, kernel_labels = None, None
    if on_device:
        soft = lib.empty((count, classes), "float32")
        kernel_labels = _core.Labels.device(pointer=lib.pointer(device_labels), count=keys.n, classes=classes,
                                            renormalize=plan.renormalize_labels, soft=soft_input)
    # The kernel looks each row up in the epoch's tables by its row id: no per-batch gathers.
    _core.encode_cuda(sources=sources, private_terms=keys.private_terms, rows=count, k=keys.k,
                      index=lib.pointer(tables["index"]), lam=lib.pointer(tables["lam"]),
                      offset=lib.pointer(tables["offset"]), flip=lib.pointer(tables["flip"]),
                      row_id=lib.pointer(device_rows), mask_key=keys.mask_key, epoch=keys.epoch, sign=plan.sign,
                      out=lib.pointer(out), out_type=plan.out_code, out_channels_last=plan.out_channels_last,
                      out_height=geometry.height, out_width=geometry.width, device=lib.device, stream=lib.stream(),
                      labels=kernel_labels, soft=0 if soft is None else lib.pointer(soft))
    if soft is not None:
        return out, soft
    if rows_on_device:  # labels on the host: mixed there, from the rows' host copy (a sync)
        rows = device_rows.cpu().numpy()
    return out, lib.upload(_cpu.mix_labels(plan, _host_labels(labels), rows))  # mixed on the host


class _CheckedRows:
    """The device tensors whose values were checked as row ids (all in [0, n)): the tensor that
    batches of row ids are views of (the epoch's order, uploaded once) is checked at its first
    use, with one reduction and one wait for it, and again only when it changes (its version
    counter, shared with its views, moves)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.checked: dict = {}  # id(base) -> (weakref to base, version, n)

    def check(self, rows, n: int) -> None:
        base = rows._base if rows._base is not None else rows
        entry = self.checked.get(id(base))
        if entry is not None and entry[0]() is base and entry[1:] == (base._version, n):
            return
        if base.numel():
            import torch

            lo, hi = torch.stack(torch.aminmax(base.detach().reshape(-1))).tolist()  # one wait
            if lo < 0 or hi >= n:
                where = "" if base is rows else " (checked whole: the tensor they are a view of)"
                raise ValueError(f"rows must lie in [0, {n}), got values in [{lo}, {hi}]{where}")
        if len(self.checked) >= self.size:
            self.checked.pop(next(iter(self.checked)))
        self.checked[id(base)] = (weakref.ref(base), base._version, n)


_checked_rows = _CheckedRows()


def _device_row_ids(rows, n: int, lib: _Library):
    """Row ids already on the GPU, as the kernel takes them: a 1-d contiguous int64 torch
    tensor on the images' device, with values in [0, n) (see _CheckedRows)."""
    if lib.name != "torch" or not _arrays.is_torch(rows):
        raise TypeError("row ids on a GPU must be a torch tensor, with torch images; pass other row ids as a host "
                        "array")
    import torch

    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise TypeError(f"rows on a GPU must be a 1-d int64 tensor, got {rows.dim()}-d {rows.dtype}")
    if rows.device.index != lib.device:
        raise ValueError(f"rows are on cuda:{rows.device.index} but the images on cuda:{lib.device}")
    if rows.numel() > 1 and rows.stride(0) != 1:
        raise ValueError("rows on a GPU must be contiguous (call .contiguous())")
    _checked_rows.check(rows, n)
    return rows


class _LabelCache:
    """One labels tensor's host copy, and what was derived from it, kept until the tensor
    changes (its version counter moves): the batches of an epoch then wait for no
    device-to-host copy and scan the labels once."""

    def __init__(self) -> None:
        self.ref = lambda: None
        self.version = -1
        self.host = None
        self.derived: dict = {}

    def get(self, labels):
        if self.ref() is not labels or self.version != labels._version:
            self.host = labels.detach().cpu().numpy()
            self.ref, self.version, self.derived = weakref.ref(labels), labels._version, {}
        return self.host


_label_cache = _LabelCache()


def _host_labels(labels):
    """Labels as a host array for the (small) soft-label computation on the host."""
    if _arrays.is_torch(labels):
        return labels.detach().numpy() if labels.device.type != "cuda" else _label_cache.get(labels)
    if hasattr(labels, "__cuda_array_interface__") and hasattr(labels, "get"):
        return labels.get()  # CuPy
    return labels


def _checked_device_labels(labels, n: int, num_classes):
    """(labels for the kernel, class count, soft input?) of a CUDA labels tensor, checked whole
    on the host once per tensor version (the kernel trusts the class ids); class ids as a
    contiguous int64 tensor on their device, soft labels as a contiguous float32 one."""
    host = _label_cache.get(labels)
    cache_key = (n, num_classes)
    if cache_key not in _label_cache.derived:
        _, classes, soft_input = _arrays.check_labels(host, n, num_classes)
        import torch

        dtype = torch.float32 if soft_input else torch.int64
        ready = labels.dtype == dtype and labels.is_contiguous()
        # a converted copy is kept; the tensor itself is not (the cache must not keep it alive)
        converted = None if ready else labels.detach().to(dtype).contiguous()
        _label_cache.derived[cache_key] = (converted, classes, soft_input)
    converted, classes, soft_input = _label_cache.derived[cache_key]
    return (labels if converted is None else converted), classes, soft_input
