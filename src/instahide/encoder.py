"""The encoder: options, and the plan of each encode call (validated once), executed by the
CPU backend (_cpu) or, for arrays on a GPU, the CUDA backend (_cuda)."""

from __future__ import annotations

import numpy as np

from . import _arrays, _core, _cpu, _cuda
from ._plan import SIGN_CODES, Images, Plan
from .keys import Keys, check_secret_key, derive_keys, new_secret_key

MAX_PAD = 2**30  # window offsets travel as int32


class Encoder:
    """InstaHide encoder (inside-dataset mode: every term is a private image).

    Row i of an epoch is ``sign_i * sum_t lam[i,t] * normalize(window_t(image index[i,t]))``
    with the keys of that epoch; see docs/algorithm.md.

    Args:
        k: images mixed into each encoding.
        upper: largest allowed coefficient; rows are drawn again while max(lam) > upper.
        sign: "flip" (secret random sign per element), "abs" (|mixture|), or "none" (k-way mixup).
        mean, std: per-channel normalization in [0, 1] units for uint8 input (None: 0 and 1).
        pad: windows shift by dy, dx uniform in [-pad, pad], reading 0 outside the image.
        hflip: flip each window horizontally with probability 1/2.
        out_dtype: "float32", "float16" or "bfloat16" (numpy callers get bfloat16 as uint16 bits).
        key: the 32-byte secret key; None draws one from the OS's cryptographic source.
        distinct: no image appears twice within one encoding (default: the authors' independent
            permutations, where it may).
        layout: "NCHW", "NHWC" or None (inferred from the channel axis).
        out_layout: "NCHW" or "NHWC".
        num_classes: for class-id labels; None: max label + 1.
        renormalize_labels: divide soft labels by the private terms' coefficient sum.
        num_threads: CPU threads (0: the cores this process may use).
        cpu_kernel: the CPU core's row kernel: "auto" (AVX-512 where the CPU, build and arguments
            allow it, else portable) or "portable" (always; for comparisons). Both give the same
            encodings within float rounding; GPU encoding ignores it.
    """

    def __init__(self, k: int = 4, upper: float = 0.65, sign: str = "flip", mean=None, std=None, pad: int = 0,
                 hflip: bool = False, out_dtype: str = "float32", key: bytes | None = None, *,
                 distinct: bool = False, layout: str | None = None, out_layout: str = "NCHW",
                 num_classes: int | None = None, renormalize_labels: bool = False, num_threads: int = 0,
                 private_terms: int | None = None, public=None, patch_size=None, dom: float = 0.0,
                 cpu_kernel: str = "auto") -> None:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= 16:
            raise ValueError(f"k must be an integer in [1, 16], got {k!r}")
        if k > 1 and not 1.0 / k < upper <= 1.0:
            raise ValueError(f"upper must be in (1/k, 1] = ({1.0 / k:.4g}, 1], got {upper}")
        if sign not in SIGN_CODES:
            raise ValueError(f"sign must be one of {tuple(SIGN_CODES)}, got {sign!r}")
        if not isinstance(pad, (int, np.integer)) or not 0 <= pad <= MAX_PAD:
            raise ValueError(f"pad must be an integer in [0, 2^30], got {pad!r}")
        if layout is not None and layout not in _arrays.LAYOUTS:
            raise ValueError(f"layout must be 'NCHW', 'NHWC' or None, got {layout!r}")
        if out_layout not in _arrays.LAYOUTS:
            raise ValueError(f"out_layout must be 'NCHW' or 'NHWC', got {out_layout!r}")
        if not isinstance(num_threads, (int, np.integer)) or num_threads < 0:
            raise ValueError(f"num_threads must be an integer >= 0, got {num_threads!r}")
        if cpu_kernel not in ("auto", "portable"):
            raise ValueError(f"cpu_kernel must be 'auto' or 'portable', got {cpu_kernel!r}")
        if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        for name, value in (("mean", mean), ("std", std)):
            values = None if value is None else np.asarray(value, np.float64)
            if values is not None and (values.ndim > 1 or not np.isfinite(values).all() or
                                       (name == "std" and not (values > 0).all())):
                raise ValueError(f"{name} must be finite per-channel values" + (", std > 0" if name == "std" else ""))
        self.k, self.upper, self.sign, self.pad, self.hflip = int(k), float(upper), sign, int(pad), bool(hflip)
        self.out_dtype = _arrays.check_out_dtype(out_dtype)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self.distinct, self.layout, self.out_layout = bool(distinct), layout, out_layout
        self.num_classes, self.renormalize_labels = num_classes, bool(renormalize_labels)
        self.num_threads, self.cpu_kernel = int(num_threads), cpu_kernel
        self.public, self.dom = public, float(dom)
        if public is None:
            if private_terms not in (None, k):
                raise ValueError("public terms (private_terms < k) need a public pool: pass public=PublicPool(...)")
            self.private_terms, self.patch_size = int(k), None
        else:
            if private_terms is None or not 1 <= private_terms < k:
                raise ValueError(f"with a public pool, private_terms must be in [1, k={k}), e.g. 2 of k=6")
            if patch_size is None:
                raise ValueError("with a public pool, give patch_size: the private images' (H, W), e.g. 32")
            self.private_terms = int(private_terms)
            self.patch_size = ((int(patch_size), int(patch_size)) if np.ndim(patch_size) == 0
                               else tuple(map(int, patch_size)))
            if len(self.patch_size) != 2 or min(self.patch_size) < 1:
                raise ValueError(f"patch_size must be a positive size or (H, W), got {patch_size!r}")
            sizes = public.sizes
            if (sizes < np.asarray(self.patch_size)).any():
                raise ValueError(f"public images smaller than the {self.patch_size} patch: build the pool with a "
                                 "larger short_side")
        if not 0.0 <= self.dom < 1.0:
            raise ValueError(f"dom must be in [0, 1), got {dom}")
        self._secret = new_secret_key() if key is None else check_secret_key(key)
        self._normalization: dict = {}

    @property
    def key(self) -> bytes:
        """The secret key: it derives every epoch's keys. Keep it secret."""
        return self._secret

    def __repr__(self) -> str:
        return (f"Encoder(k={self.k}, upper={self.upper}, sign={self.sign!r}, pad={self.pad}, hflip={self.hflip}, "
                f"distinct={self.distinct}, out_dtype={self.out_dtype!r}, key=<hidden>)")

    def keys(self, n: int, epoch: int, own_at_least: float = 0.0) -> Keys:
        """The keys of one epoch of n images: fresh partners, coefficients, windows and mask.
        `own_at_least` keeps each row's own image at least that heavy (for inference)."""
        return derive_keys(self._secret, epoch, n, k=self.k, upper=self.upper, distinct=self.distinct, pad=self.pad,
                           hflip=self.hflip, private_terms=self.private_terms,
                           public_sizes=None if self.public is None else self.public.sizes, patch=self.patch_size,
                           dom=self.dom, own_at_least=own_at_least)

    def encode(self, images, labels, keys: Keys, rows=None):
        """Encodes `rows` of the epoch (an index array or slice; default all).

        `images` (N, C, H, W) or (N, H, W, C), uint8 or float32, and `labels` (class ids (N,)
        or soft labels (N, K)) are the whole private set: partners come from all of it.
        Returns (encoded, soft_labels): numpy arrays, or torch tensors for torch input. Images
        on a GPU (torch CUDA tensors, CuPy arrays) encode there, on the current stream,
        asynchronously; the outputs are on the same device. With torch CUDA images, `rows` may
        be an int64 tensor on their device (slices of one tensor: its values are checked once).
        """
        backend = _cuda if _cuda.is_cuda_array(images) else _cpu
        array, geometry = backend.intake(images, self.layout)
        return backend.encode(self._plan(geometry, keys), array, labels, rows)

    def _plan(self, images: Images, keys: Keys) -> Plan:
        """The plan of encoding `images` (their geometry) with `keys`: the keys checked against
        this encoder's options and the images, each source's normalization, the output and label
        options. The backends execute it."""
        self._check_keys(keys, images.n)
        scale, shift = self._scale_shift(images.channels, images.dtype)
        public_scale = public_shift = ()
        if self.public is not None:
            public_scale, public_shift = self._public_scale_shift(images.height, images.width, images.channels)
        return Plan(images=images, keys=keys, scale=scale, shift=shift, public=self.public,
                    public_scale=public_scale, public_shift=public_shift, sign=SIGN_CODES[self.sign],
                    out_dtype=self.out_dtype, out_channels_last=self.out_layout == "NHWC",
                    num_classes=self.num_classes, renormalize_labels=self.renormalize_labels,
                    num_threads=self.num_threads, cpu_kernel=self.cpu_kernel)

    def _check_keys(self, keys: Keys, n: int) -> None:
        """Keys made for this encoder's options and these n images (their index range is the
        core's to check, per row)."""
        _arrays.check_keys(keys, n, check_indices=False, public=self.public)
        if keys.k != self.k:
            raise ValueError(f"the keys have k={keys.k} terms, the encoder k={self.k}")
        if keys.private_terms != self.private_terms:
            raise ValueError(f"the keys have private_terms={keys.private_terms}, the encoder {self.private_terms}")

    def _scale_shift(self, channels: int, dtype) -> tuple:
        """Per-channel (scale, shift) of v' = v * scale - shift: unit/std and mean/std."""
        cache_key = (channels, np.dtype(dtype))
        if cache_key not in self._normalization:
            mean, std = _arrays.normalization(self.mean, self.std, channels)
            unit = np.float32(1 / 255) if np.dtype(dtype) == np.uint8 else np.float32(1)
            self._normalization[cache_key] = (tuple((unit / std).tolist()), tuple((mean / std).tolist()))
        return self._normalization[cache_key]

    def _public_scale_shift(self, height: int, width: int, channels: int) -> tuple:
        """Checks that the images fit the public pool and returns the pool's (scale, shift)."""
        if (height, width) != self.patch_size:
            raise ValueError(f"images are {height}x{width}, the encoder's patch_size is {self.patch_size}")
        if self.public.channels != channels:
            raise ValueError(f"the public pool has {self.public.channels} channels, the images {channels}")
        pool = self.public
        if ("public", pool) not in self._normalization:  # keyed by the pool object: a new pool, new values
            self._normalization["public", pool] = (tuple((np.float32(1 / 255) / pool.std).tolist()),
                                                   tuple((pool.mean / pool.std).tolist()))
        return self._normalization["public", pool]


def mask(key: bytes, epoch: int, rows, shape) -> np.ndarray:
    """The sign mask of spec v1 as int8 +-1, shape (len(rows), *shape) with shape = (C, H, W);
    `key` is the mask key (``Keys.mask_key``)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise TypeError("the mask key must be 32 bytes (Keys.mask_key)")
    if not isinstance(epoch, (int, np.integer)) or not 0 <= epoch < 2**32:
        raise ValueError("the epoch must be an integer in [0, 2^32)")
    rows = np.asarray(rows)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"rows must be integers, got {rows.dtype}")
    rows = np.ascontiguousarray(rows.astype(np.int64).reshape(-1))
    if rows.size and rows.min() < 0:
        raise ValueError("row ids must be >= 0")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    elements = shape[0] * shape[1] * shape[2]  # Python ints: no overflow
    _arrays.check_memory((len(rows), elements), np.int8, "the mask")
    return _core.mask(bytes(key), int(epoch), rows, elements).reshape(len(rows), *shape)
