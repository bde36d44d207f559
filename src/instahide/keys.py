"""Keys of one epoch: which images, coefficients and windows make every encoding, plus the
mask key. Everything derives from one 32-byte secret key; see docs/algorithm.md.

Saved keys decrypt: whoever holds them (or the secret key) can undo the sign mask and knows
every mixture. Keep them as secret as the data itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import _files
from ._random import Stream

KEY_BYTES = 32
_FORMAT = "instahide-keys-v1"
_MEMBERS = ("index", "lam", "offset", "flip", "epoch", "mask_key", "private_terms")
_MAX_REDRAW_ROUNDS = 10_000

# Stream domains: each random quantity of an epoch has its own ChaCha20 nonce.
_COEFFICIENTS, _OFFSETS, _FLIPS, _PUBLIC_IMAGES, _PUBLIC_OFFSETS = 1, 2, 3, 4, 5
_PARTNER_SLOT, _DISTINCT_REPAIR = 16, 48
_ROW_ORDER = 96


def new_secret_key() -> bytes:
    """32 bytes from the operating system's cryptographic source."""
    return secrets.token_bytes(KEY_BYTES)


def check_secret_key(key) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise TypeError(f"the secret key must be {KEY_BYTES} bytes (e.g. instahide.new_secret_key())")
    return bytes(key)


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"instahide " + purpose + b" v1", hashlib.sha256).digest()


def mask_key_of(secret: bytes) -> bytes:
    """The ChaCha20 key of the sign mask (mask spec v1), derived from the secret key."""
    return _subkey(check_secret_key(secret), b"mask key")


def row_order(secret: bytes, epoch: int, n: int) -> np.ndarray:
    """The order in which an epoch's n rows are batched (training) or published (encoded
    shards): a permutation derived from the secret key, so every process agrees on it and it
    tells nobody without the key which row, and so which own image, an encoding holds."""
    return Stream(_subkey(check_secret_key(secret), b"batch order"), int(epoch), _ROW_ORDER).permutation(int(n))


@dataclass(frozen=True, eq=False)
class Keys:
    """Per-row keys of one epoch: row i's encoding mixes, for t in range(k), the image
    ``index[i, t]`` (of the private set for t < private_terms, else of the public pool),
    seen through window ``offset[i, t]`` = (dy, dx) and ``flip[i, t]``, weighted ``lam[i, t]``;
    its signs come from ChaCha20(mask_key, nonce=(epoch, i))."""

    index: np.ndarray
    lam: np.ndarray
    offset: np.ndarray
    flip: np.ndarray
    epoch: int
    mask_key: bytes
    private_terms: int

    def __post_init__(self) -> None:
        def array(name, dtype, ndim):
            value = np.asarray(getattr(self, name))
            if value.dtype != dtype or value.ndim != ndim:
                raise TypeError(f"Keys.{name} must be a {ndim}-d {np.dtype(dtype).name} array")
            object.__setattr__(self, name, np.ascontiguousarray(value))
            return value

        index = array("index", np.int64, 2)
        n, k = index.shape
        for name, dtype, shape in (("lam", np.float32, (n, k)), ("offset", np.int32, (n, k, 2)),
                                   ("flip", np.bool_, (n, k))):
            if array(name, dtype, len(shape)).shape != shape:
                raise ValueError(f"Keys.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if not 0 <= int(self.epoch) < 2**32:
            raise ValueError("the epoch must be in [0, 2^32)")
        if not isinstance(self.mask_key, bytes) or len(self.mask_key) != KEY_BYTES:
            raise TypeError(f"the mask key must be {KEY_BYTES} bytes")
        if not 1 <= int(self.private_terms) <= k:
            raise ValueError(f"private_terms must be in [1, k={k}]")
        object.__setattr__(self, "epoch", int(self.epoch))
        object.__setattr__(self, "private_terms", int(self.private_terms))

    @property
    def n(self) -> int:
        """Rows of the epoch."""
        return self.index.shape[0]

    @property
    def k(self) -> int:
        """Terms per encoding."""
        return self.index.shape[1]

    def __repr__(self) -> str:
        return (f"Keys(n={self.n}, k={self.k}, private_terms={self.private_terms}, epoch={self.epoch}, "
                "mask_key=<hidden>)")

    def save(self, path) -> None:
        """Writes the keys to an .npz file. Saved keys decrypt: store them like the data."""
        np.savez(path, format=np.array(_FORMAT), index=self.index, lam=self.lam, offset=self.offset, flip=self.flip,
                 epoch=np.array(self.epoch, np.int64), mask_key=np.frombuffer(self.mask_key, np.uint8),
                 private_terms=np.array(self.private_terms, np.int64))

    @classmethod
    def load(cls, path) -> Keys:
        """Keys saved by `save`; a damaged file or one of another kind raises ValueError."""
        f = _files.read_npz(path, "an instahide keys file", _MEMBERS, format=_FORMAT)
        with _files.about(path):
            return cls(index=f["index"], lam=f["lam"], offset=f["offset"], flip=f["flip"],
                       epoch=_files.integer(f, "epoch"), mask_key=f["mask_key"].tobytes(),
                       private_terms=_files.integer(f, "private_terms"))


def derive_keys(secret: bytes, epoch: int, n: int, *, k: int, upper: float = 0.65, distinct: bool = False,
                pad: int = 0, hflip: bool = False, private_terms: int | None = None, public_sizes=None,
                patch=None, dom: float = 0.0, own_at_least: float = 0.0) -> Keys:
    """The keys of one epoch of n rows. Inside-dataset mode (default) makes all k terms
    private; cross-dataset mode (`private_terms` < k) fills terms private_terms.. with patches
    of `patch` = (h, w) pixels at uniform positions of uniformly drawn public images, whose
    (H, W) sizes are `public_sizes`. `own_at_least` redraws rows whose own image (term 0)
    weighs less (InstaHide inference's option of a dominant test image)."""
    secret = check_secret_key(secret)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if not 0 <= epoch < 2**32:
        raise ValueError(f"the epoch must be in [0, 2^32), got {epoch}")
    if k > 1 and not 1.0 / k < upper <= 1.0:
        raise ValueError(f"upper must be in (1/k, 1] = ({1.0 / k:.4g}, 1], got {upper}")
    if not 0 <= pad <= 2**30:  # offsets are int32
        raise ValueError(f"pad must be in [0, 2^30], got {pad}")
    kp = k if private_terms is None else int(private_terms)
    if not 1 <= kp <= k:
        raise ValueError(f"private_terms must be in [1, k={k}], got {private_terms}")
    if distinct and n < kp:
        raise ValueError(f"distinct partners need at least {kp} images, got {n}")
    if not 0.0 <= dom < 1.0:
        raise ValueError(f"dom must be in [0, 1), got {dom}")
    if not 0.0 <= own_at_least < (upper if k > 1 else 1.0 + 1e-9):
        raise ValueError(f"own_at_least must be in [0, upper={upper}), got {own_at_least}")
    if kp < k:
        public_sizes, patch = _check_public(public_sizes, patch)
    n, epoch = int(n), int(epoch)
    sampling = _subkey(secret, b"sampling key")

    def stream(domain: int) -> Stream:
        return Stream(sampling, epoch, domain)

    lam = _coefficients(stream(_COEFFICIENTS), n, k, upper, kp if kp < k else k, dom, own_at_least)
    index = np.empty((n, k), np.int64)
    index[:, 0] = np.arange(n)
    for t in range(1, kp):
        index[:, t] = stream(_PARTNER_SLOT + t).permutation(n)
        if distinct:
            _repair_repeats(index, t, stream(_DISTINCT_REPAIR + t))
    offset = (stream(_OFFSETS).integers(-pad, pad + 1, (n, k, 2)) if pad else np.zeros((n, k, 2))).astype(np.int32)
    flip = stream(_FLIPS).bits((n, k)) if hflip else np.zeros((n, k), bool)
    if kp < k:  # public patches: any image, any position inside it, never flipped
        index[:, kp:] = stream(_PUBLIC_IMAGES).integers(0, len(public_sizes), (n, k - kp))
        room = public_sizes[index[:, kp:]] - np.asarray(patch, np.int64) + 1  # (n, k - kp, 2) positions per axis
        offset[:, kp:] = (stream(_PUBLIC_OFFSETS).uint64(room.shape) % room.astype(np.uint64)).astype(np.int32)
        flip[:, kp:] = False
    return Keys(index=index, lam=lam, offset=offset, flip=flip, epoch=epoch, mask_key=mask_key_of(secret),
                private_terms=kp)


def _check_public(public_sizes, patch):
    if public_sizes is None or patch is None:
        raise ValueError("public terms need the public pool's image sizes and the patch size")
    sizes = np.asarray(public_sizes, np.int64).reshape(-1, 2)
    if len(sizes) == 0:
        raise ValueError("the public pool is empty")
    patch = (int(patch[0]), int(patch[1]))
    small = np.flatnonzero((sizes < np.asarray(patch)).any(axis=1))
    if small.size:
        raise ValueError(f"{small.size} public images are smaller than the {patch[0]}x{patch[1]} patch "
                         f"(the first: image {small[0]}, {tuple(sizes[small[0]])})")
    return sizes, patch


def _coefficients(stream: Stream, n: int, k: int, upper: float, private_terms: int, dom: float,
                  own_at_least: float = 0.0) -> np.ndarray:
    """|N(0,1)| per term, each row divided by its sum; rows with a coefficient above `upper`,
    or whose private terms weigh less than `dom` in total, are drawn again (the authors' rule)."""

    def draw(rows: int) -> np.ndarray:
        g = stream.half_normal((rows, k))
        return g / g.sum(axis=1, keepdims=True)

    def rejected(rows: np.ndarray) -> np.ndarray:
        return (rows.max(axis=1) > upper) | (rows[:, :private_terms].sum(axis=1) < dom) | (rows[:, 0] < own_at_least)

    lam = draw(n)
    if k > 1:
        redo = np.flatnonzero(rejected(lam))
        for _ in range(_MAX_REDRAW_ROUNDS):
            if redo.size == 0:
                break
            lam[redo] = draw(redo.size)
            redo = redo[rejected(lam[redo])]
        else:
            raise RuntimeError(f"coefficients kept failing upper={upper} / dom={dom}; loosen them")
    return lam.astype(np.float32)


def _repair_repeats(index: np.ndarray, t: int, stream: Stream) -> None:
    """Makes slot t repeat no image of slots < t in any row while it stays a permutation.

    Rows whose slot-t image clashes give their images up; each such row (in random order)
    then takes a freed image it may hold, or, where none fits, re-routes images along an
    augmenting path (bipartite matching of rows to images), which always exists: the slots
    so far form a Latin rectangle, and those always extend (Hall's theorem)."""
    n = index.shape[0]
    column = index[:, t]  # a view: the repair edits the keys
    previous = index[:, :t]
    clashing = np.flatnonzero((previous == column[:, None]).any(axis=1))
    if clashing.size == 0:
        return
    clashing = clashing[stream.permutation(clashing.size)]
    owner = np.empty(n, np.int64)
    owner[column] = np.arange(n)
    free = [int(image) for image in column[clashing][stream.permutation(clashing.size)]]
    owner[free] = -1

    def allowed(row: int, image: int) -> bool:
        return not (previous[row] == image).any()

    for clash in clashing:
        start = int(clash)
        reached_by = {start: -1}  # row -> the image through which the search reached it
        came_from = {}  # image -> the row that asked for it
        queue, found = deque([start]), None
        while queue and found is None:
            row = queue.popleft()
            found = next(((row, f) for f in free if allowed(row, f)), None)
            if found:
                break
            for candidate in np.flatnonzero(~np.isin(np.arange(n), previous[row])):
                image = int(candidate)
                if image not in came_from and owner[image] >= 0 and owner[image] not in reached_by:
                    came_from[image] = row
                    reached_by[int(owner[image])] = image
                    queue.append(int(owner[image]))
        if found is None:
            raise RuntimeError("could not find distinct partners")
        row, image = found
        free.remove(image)
        while True:  # shift images back along the path
            given_up = reached_by[row]
            column[row], owner[image] = image, row
            if given_up < 0:
                break
            row, image = came_from[given_up], given_up
