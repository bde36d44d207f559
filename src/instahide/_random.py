"""A cryptographic random stream for key sampling: ChaCha20 keystream turned into numbers.

Every random choice of an epoch (coefficients, partners, windows) is read from its own stream
``ChaCha20(sampling key, nonce = (epoch, domain))``, so that given the secret key, the epoch
and the options, the keys are deterministic, and without the secret key they are unpredictable.
"""

from __future__ import annotations

import struct

import numpy as np

from . import _core

_BLOCK = 64


class Stream:
    """Sequential draws from one ChaCha20 keystream (32-bit block counter from 0)."""

    def __init__(self, key: bytes, epoch: int, domain: int) -> None:
        self._key = key
        self._nonce = struct.pack("<IQ", epoch, domain)
        self._block = 0

    def uint64(self, size) -> np.ndarray:
        count = int(np.prod(size, dtype=np.int64))
        blocks = -(-count * 8 // _BLOCK)
        if self._block + blocks > 2**32:
            raise OverflowError("random stream exhausted (2^32 ChaCha20 blocks)")
        raw = _core.chacha20(self._key, self._nonce, self._block, blocks)
        self._block += blocks
        return raw.view("<u8")[:count].astype(np.uint64, copy=False).reshape(size)

    def uniform(self, size) -> np.ndarray:
        """Floats in [0, 1) with 53 random bits."""
        return (self.uint64(size) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def half_normal(self, size) -> np.ndarray:
        """|N(0, 1)| by the Box-Muller transform."""
        u1 = 1.0 - self.uniform(size)  # in (0, 1]: log is finite
        u2 = self.uniform(size)
        return np.abs(np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2))

    def integers(self, low: int, high: int, size) -> np.ndarray:
        """Integers in [low, high); the modulo bias is below (high - low) / 2^64."""
        span = np.uint64(high - low)
        return (self.uint64(size) % span).astype(np.int64) + low

    def bits(self, size) -> np.ndarray:
        return (self.uint64(size) & np.uint64(1)).astype(bool)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of range(n): the order of n random 64-bit keys."""
        return np.argsort(self.uint64(n), kind="stable").astype(np.int64)
