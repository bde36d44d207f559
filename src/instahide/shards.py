"""Encoded shards on disk (`instahide encode`): a private set encoded for `epochs` epochs,
written as ``shard-00000.npz`` files (``encodings``, ``labels``: soft labels) plus
``manifest.json`` (parameters, shards, their SHA-256; never the key).

Runs are resumable and their output is deterministic: every shard is a fixed slice of one
epoch's rows, taken in the epoch's key-derived order (`keys.row_order`), so the same secret
key, data and options give the same bytes. Each file is written under a temporary name in the
output folder, fsynced and renamed into place, so an interrupted run (SIGINT, SIGKILL, power
loss) leaves no file under a final name that is not complete; a rerun verifies the shards the
manifest lists, encodes the rest and ends with the same files as an uninterrupted run.

Shards hold no row ids: they would tell which private image each encoding is built on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import _files
from .encoder import Encoder
from .keys import KEY_BYTES, _subkey, new_secret_key, row_order

FORMAT = "instahide-shards-v1"
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same arrays give the same bytes


class OutputError(RuntimeError):
    """The output folder cannot take the run (full disk, another run's files)."""


def key_fingerprint(secret: bytes) -> str:
    """A one-way name of the secret key (HMAC-SHA256 of a fixed text, 16 bytes in hex): tells
    whether two runs used the same key without revealing it."""
    return _subkey(secret, b"key fingerprint")[:16].hex()


def key_from_file(path) -> tuple[bytes, bool]:
    """(secret key, created): the 32 bytes in `path`, or a fresh key from the OS written there
    (mode 0600, never overwriting) when the file does not exist."""
    path = Path(path)
    if path.exists():
        return read_key_file(path), False
    key = new_secret_key()
    write_key_file(path, key)
    return key, True


def write_key_file(path, key: bytes) -> None:
    """`key` to a new file at `path`, readable by its owner only (mode 0600), never overwriting."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())


def read_key_file(path) -> bytes:
    """The 32-byte secret key in the file at `path` (warning when others may read it)."""
    path = Path(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: a key file holds {KEY_BYTES} bytes, this one {len(key)}")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        print(f"warning: {path} is readable by other users; the key decrypts every encoding (chmod 600 it)",
              file=sys.stderr)
    return key


def npz_bytes(arrays: dict) -> bytes:
    """An uncompressed .npz (readable by np.load) whose bytes depend only on the arrays:
    np.savez stamps members with the current time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, fsyncs it and renames it over `path`;
    on any failure the temporary file is removed and `path` is untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_arrays(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


def parameters(encoder: Encoder, images: np.ndarray, labels: np.ndarray, epochs: int, shard_size: int,
               source: str = "") -> dict:
    """What determines the output, besides the key (of which only the fingerprint is kept)."""
    public = encoder.public
    return {
        "format": FORMAT,
        "source": source,
        "images": int(len(images)),
        "image_shape": list(images.shape[1:]),
        "image_dtype": images.dtype.name,
        "data_sha256": _sha256_arrays(images, labels),
        "epochs": int(epochs),
        "shard_size": int(shard_size),
        "k": encoder.k,
        "private_terms": encoder.private_terms,
        "upper": encoder.upper,
        "sign": encoder.sign,
        "pad": encoder.pad,
        "hflip": encoder.hflip,
        "distinct": encoder.distinct,
        "dom": encoder.dom,
        "mean": None if encoder.mean is None else encoder.mean.tolist(),
        "std": None if encoder.std is None else encoder.std.tolist(),
        "layout": encoder.out_layout,
        "out_dtype": encoder.out_dtype + (" (stored as uint16 bits)" if encoder.out_dtype == "bfloat16" else ""),
        "public_pool_sha256": None if public is None else _sha256_arrays(public.pixels, public.offsets, public.sizes),
        "key_fingerprint": key_fingerprint(encoder.key),
        "row_order": "keys.row_order(key, epoch, images): shards are consecutive slices of it; no row ids stored",
    }


def plan(images: int, epochs: int, shard_size: int) -> list[dict]:
    """Shards as (epoch, start, count) slices of each epoch's row order, in file order."""
    shards: list[dict] = []
    for epoch in range(epochs):
        for start in range(0, images, shard_size):
            shards.append({"file": f"shard-{len(shards):05d}.npz", "epoch": epoch, "start": start,
                           "count": min(shard_size, images - start), "sha256": None})
    return shards


def encode_to_shards(images, labels, encoder: Encoder, out, *, epochs: int = 1, shard_size: int = 10_000,
                     source: str = "", progress: bool = True) -> dict:
    """Encodes `images`/`labels` for `epochs` epochs into shards under `out` (resuming a run
    there with the same key, data and options); returns the manifest."""
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if epochs < 1 or shard_size < 1:
        raise ValueError("epochs and shard_size must be >= 1")
    out = Path(out)
    params = parameters(encoder, images, labels, epochs, shard_size, source)
    manifest = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            manifest = _start(out, params)
            _run(out, manifest, images, labels, encoder, progress)
    except OSError as error:
        if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            done = 0 if manifest is None else sum(s["sha256"] is not None for s in manifest["shards"])
            total = len(plan(len(images), epochs, shard_size))
            raise OutputError(f"no space left on the device of {out} ({done} of {total} shards written): free "
                              "space or choose another --out, then rerun the same command to resume") from error
        raise
    return manifest


@contextlib.contextmanager
def _exclusive(out: Path):
    """Holds a lock on `out` (POSIX): a second run there would race for the same shards and
    remove the first one's temporary files as stale."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another instahide encode is writing to {out}") from None
        yield


def _start(out: Path, params: dict) -> dict:
    """The manifest to continue: the one in `out` when it describes this run, else a new one."""
    for stale in out.glob(".*.tmp"):  # left by a killed run: never under a final name
        stale.unlink()
    path = out / MANIFEST
    if path.exists():
        manifest = _read_manifest(path)
        if manifest["parameters"] != params:
            changed = sorted(k for k in set(params) | set(manifest["parameters"])
                             if manifest["parameters"].get(k) != params.get(k))
            hint = " (another secret key: pass the run's --key-file)" if "key_fingerprint" in changed else ""
            raise OutputError(f"{out} holds the output of a different run: {', '.join(changed)} differ{hint}; "
                              "choose an empty --out")
        _check_shard_list(path, manifest)
        return manifest
    if any(out.glob("shard-*.npz")):
        raise OutputError(f"{out} holds shards but no {MANIFEST}; choose an empty --out")
    manifest = {"parameters": params, "complete": False,
                "shards": plan(params["images"], params["epochs"], params["shard_size"])}
    _save(out, manifest)
    return manifest


def _read_manifest(path: Path) -> dict:
    """The manifest at `path`, which must be a JSON object with parameters and shards (it is
    written whole, by a rename: damage comes from outside)."""
    with _files.parsing(f"{path}: truncated or damaged, not valid JSON"):
        manifest = json.loads(path.read_bytes())
    if not (isinstance(manifest, dict) and isinstance(manifest.get("parameters"), dict)
            and isinstance(manifest.get("complete"), bool) and isinstance(manifest.get("shards"), list)):
        raise ValueError(f"{path}: not a manifest of instahide encode (a JSON object of parameters, complete and "
                         "shards); choose an empty --out")
    return manifest


def _check_shard_list(path: Path, manifest: dict) -> None:
    """The shards a manifest lists are those its parameters plan, each with a SHA-256 or none
    yet: a rerun trusts the list to name the files it verifies and writes."""
    params = manifest["parameters"]
    planned = plan(params["images"], params["epochs"], params["shard_size"])
    for i, (shard, expected) in enumerate(itertools.zip_longest(manifest["shards"], planned)):
        digest = shard.get("sha256", "") if isinstance(shard, dict) else ""
        if not (isinstance(shard, dict) and {**shard, "sha256": None} == expected
                and (digest is None or (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)))):
            raise ValueError(f"{path}: damaged shard list (entry {i} does not match the plan of {len(planned)} "
                             "shards); choose an empty --out")


def _save(out: Path, manifest: dict) -> None:
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _run(out: Path, manifest: dict, images, labels, encoder: Encoder, progress: bool) -> None:
    shards = manifest["shards"]
    todo = []
    for shard in shards:
        path = out / shard["file"]
        if shard["sha256"] is not None and path.exists() and sha256_file(path) == shard["sha256"]:
            continue  # complete and verified
        if shard["sha256"] is not None:
            print(f"{path}: missing or altered; encoding it again", file=sys.stderr)
            shard["sha256"] = None
        todo.append(shard)
    bar = _Progress(sum(s["count"] for s in todo), len(shards) - len(todo), len(shards), progress)
    keys = None
    for shard in todo:
        if keys is None or keys[0] != shard["epoch"]:  # one derivation per epoch
            keys = (shard["epoch"], encoder.keys(len(images), shard["epoch"]),
                    row_order(encoder.key, shard["epoch"], len(images)))
        rows = keys[2][shard["start"]:shard["start"] + shard["count"]]
        encodings, soft = encoder.encode(images, labels, keys[1], rows=rows)
        data = npz_bytes({"encodings": encodings, "labels": soft})
        write_atomic(out / shard["file"], data)
        shard["sha256"] = hashlib.sha256(data).hexdigest()
        _save(out, manifest)
        bar.update(shard["count"])
    bar.close()
    if not manifest["complete"]:
        manifest["complete"] = True
        _save(out, manifest)


class _Progress:
    """tqdm over images when installed, else one line on stderr per shard."""

    def __init__(self, total: int, done_shards: int, shards: int, enabled: bool) -> None:
        self.enabled, self.done, self.shards, self.bar = enabled, done_shards, shards, None
        if not enabled:
            return
        if done_shards:
            print(f"resuming: {done_shards} of {shards} shards already complete and verified", file=sys.stderr)
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="img", desc="encode", file=sys.stderr)

    def update(self, images: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(images)
            self.bar.set_postfix(shards=f"{self.done}/{self.shards}")
        elif self.enabled:
            print(f"encode: {self.done}/{self.shards} shards", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
