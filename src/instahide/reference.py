"""Plain-numpy reference of the encoder, written to read like docs/algorithm.md.

It shares no arithmetic with the compiled core (its own ChaCha20 included), so tests can hold
the two against each other. It computes in float64, vectorized over rows, and is far slower
than the core.
"""

from __future__ import annotations

import numpy as np

from . import _arrays
from .keys import Keys

# --- ChaCha20 (RFC 8439) and mask spec v1 ------------------------------------------------

_CONSTANTS = np.array([0x61707865, 0x3320646E, 0x79622D32, 0x6B206574], np.uint32)


def _rotl(v: np.ndarray, n: int) -> np.ndarray:
    return (v << np.uint32(n)) | (v >> np.uint32(32 - n))


def chacha20_blocks(key: bytes, counters: np.ndarray, nonces: np.ndarray) -> np.ndarray:
    """ChaCha20 blocks for a batch: counters (m,) uint32, nonces (m, 3) uint32 -> (m, 64) uint8."""
    m = len(counters)
    state = np.empty((16, m), np.uint32)
    state[0:4] = _CONSTANTS[:, None]
    state[4:12] = np.frombuffer(key, "<u4")[:, None]
    state[12] = counters
    state[13:16] = nonces.T
    x = state.copy()

    def quarter_round(a, b, c, d):
        x[a] += x[b]; x[d] = _rotl(x[d] ^ x[a], 16)  # noqa: E702
        x[c] += x[d]; x[b] = _rotl(x[b] ^ x[c], 12)  # noqa: E702
        x[a] += x[b]; x[d] = _rotl(x[d] ^ x[a], 8)  # noqa: E702
        x[c] += x[d]; x[b] = _rotl(x[b] ^ x[c], 7)  # noqa: E702

    for _ in range(10):
        quarter_round(0, 4, 8, 12); quarter_round(1, 5, 9, 13)  # noqa: E702
        quarter_round(2, 6, 10, 14); quarter_round(3, 7, 11, 15)  # noqa: E702
        quarter_round(0, 5, 10, 15); quarter_round(1, 6, 11, 12)  # noqa: E702
        quarter_round(2, 7, 8, 13); quarter_round(3, 4, 9, 14)  # noqa: E702
    words = np.ascontiguousarray((x + state).T, dtype="<u4")
    return words.view(np.uint8).reshape(m, 64)


def mask(mask_key: bytes, epoch: int, rows, shape) -> np.ndarray:
    """Mask spec v1: element j = c*H*W + y*W + x of row i is -1 where bit (j mod 8) of
    keystream byte j // 8 of ChaCha20(mask_key, nonce = LE u32 epoch || LE u64 i) is set."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    elements = int(np.prod(shape))
    blocks = -(-elements // 512)  # 512 bits per 64-byte block
    row_of_block = np.repeat(rows.astype(np.uint64), blocks)
    nonces = np.stack([np.full_like(row_of_block, epoch), row_of_block & 0xFFFFFFFF, row_of_block >> 32], axis=1)
    counters = np.tile(np.arange(blocks, dtype=np.uint32), len(rows))
    keystream = chacha20_blocks(mask_key, counters, nonces.astype(np.uint32)).reshape(len(rows), blocks * 64)
    bits = np.unpackbits(keystream, axis=1, bitorder="little")[:, :elements]
    return (1 - 2 * bits.astype(np.int8)).reshape(len(rows), *shape)


# --- The encoder ---------------------------------------------------------------------------


def window(images: np.ndarray, index: np.ndarray, offset: np.ndarray, flip: np.ndarray, size) -> np.ndarray:
    """Source windows (B, C, h, w) in the images' own units: output pixel (y, x) reads source
    pixel (y + dy, x' + dx), x' = w-1-x when flipped; reads outside the source give 0.
    `images` is (N, C, H, W)."""
    h, w = size
    _, _, height, width = images.shape
    dy, dx = offset[:, 0, None, None], offset[:, 1, None, None]
    y = np.arange(h)[None, :, None] + dy
    x = np.where(flip[:, None, None], w - 1 - np.arange(w), np.arange(w)) + dx
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)  # (B, h, w)
    pixels = images[index[:, None, None], :, np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)]  # (B, h, w, C)
    return np.where(inside[..., None], pixels, 0).transpose(0, 3, 1, 2).astype(np.float64)


def public_window(pool, index, offset, flip, size) -> np.ndarray:
    """Windows of public pool images (of their own sizes), one row at a time."""
    windows = [window(pool.image(i).transpose(2, 0, 1)[None], np.zeros(1, np.int64), o[None], f[None], size)[0]
               for i, o, f in zip(index, offset, flip, strict=True)]
    return np.stack(windows) if windows else np.zeros((0, pool.channels, *size))


def encode(images, labels, keys: Keys, *, rows=None, sign: str = "flip", mean=None, std=None,
           layout: str | None = None, out_layout: str = "NCHW", out_dtype: str = "float32",
           num_classes: int | None = None, renormalize_labels: bool = False, public=None):
    """Encodes `rows` of an epoch (default: all) exactly as `instahide.Encoder.encode` does.

    Returns (encoded, soft_labels) as numpy arrays; bfloat16 output comes as uint16 bit
    patterns, as from the encoder.
    """
    images = _arrays.as_numpy(images, "images")
    channels_last = _arrays.channels_last(images, layout)
    nchw = images.transpose(0, 3, 1, 2) if channels_last else images
    n, channels, height, width = nchw.shape
    _arrays.check_keys(keys, n, public=public, patch=(height, width))
    rows = _arrays.row_ids(rows, n)
    unit = 1.0 / 255 if images.dtype == np.uint8 else 1.0
    mean, std = _arrays.normalization(mean, std, channels)
    mean, std = mean.astype(np.float64)[:, None, None], std.astype(np.float64)[:, None, None]

    # m = sum_t lam[i, t] * (window_t * unit - mean) / std, public terms with the pool's
    # mean and std
    mixture = np.zeros((len(rows), channels, height, width))
    with np.errstate(invalid="ignore"):  # infinite pixels: +Inf meeting -Inf gives NaN, as in the core
        for t in range(keys.k):
            args = (keys.index[rows, t], keys.offset[rows, t], keys.flip[rows, t], (height, width))
            if t < keys.private_terms:
                v, m, s = window(nchw, *args) * unit, mean, std
            else:
                v, m, s = public_window(public, *args) / 255, public.mean[:, None, None], public.std[:, None, None]
            lam = keys.lam[rows, t].astype(np.float64)[:, None, None, None]
            mixture += lam * (v - m) / s

    if sign == "flip":
        encoded = mask(keys.mask_key, keys.epoch, rows, (channels, height, width)) * mixture
    elif sign == "abs":
        encoded = np.abs(mixture)
    elif sign == "none":
        encoded = mixture
    else:
        raise ValueError(f"sign must be 'flip', 'abs' or 'none', got {sign!r}")
    if out_layout == "NHWC":
        encoded = encoded.transpose(0, 2, 3, 1)
    encoded = _arrays.to_out_dtype(np.ascontiguousarray(encoded.astype(np.float32)), out_dtype)

    # y_hat = sum over private terms of lam[i, t] * onehot(label of term t)
    labels, classes, soft_input = _arrays.check_labels(labels, n, num_classes)
    targets = labels.astype(np.float64) if soft_input else np.eye(classes)[labels]
    private = range(keys.private_terms)
    soft = sum(keys.lam[rows, t].astype(np.float64)[:, None] * targets[keys.index[rows, t]] for t in private)
    if renormalize_labels:
        soft = soft / keys.lam[rows, : keys.private_terms].astype(np.float64).sum(axis=1, keepdims=True)
    return encoded, soft.astype(np.float32)
