"""Image datasets as uint8 arrays: class-folder tar files such as the CIFAR-10 copies in
``../shared/data`` (``<split>/<class>/<n>.jpg``). Decoding needs Pillow (``pip install
instahide[data]``)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def default_data_dir() -> Path:
    """$INSTAHIDE_DATA, else ``../shared/data`` seen from the working directory or from a
    source checkout of this package."""
    if "INSTAHIDE_DATA" in os.environ:
        return Path(os.environ["INSTAHIDE_DATA"])
    candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def load_class_tar(path, classes=CIFAR10_CLASSES, limit: int | None = None):
    """Decodes a tar of ``<split>/<class>/<file>`` images into (images (N, H, W, 3) uint8,
    labels (N,) int64), in class order then file name order; `limit` keeps the first images
    of each class. All images must share one size."""
    from PIL import Image

    class_id = {name: i for i, name in enumerate(classes)}
    members = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 2 and parts[-2] in class_id and m.name.lower().endswith(_IMAGE_SUFFIXES):
                members.append((class_id[parts[-2]], parts[-1], m))
        if not members:
            raise ValueError(f"{path}: no images in class folders {classes}")
        members.sort(key=lambda e: (e[0], e[1]))
        if limit is not None:
            seen: dict[int, int] = {}
            kept = []
            for e in members:
                seen[e[0]] = seen.get(e[0], 0) + 1
                if seen[e[0]] <= limit:
                    kept.append(e)
            members = kept
        images, labels = [], []
        for label, _, m in members:
            with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images of several sizes {sorted(shapes)[:3]}")
    return np.stack(images), np.asarray(labels, np.int64)


def load_cifar10(split: str = "test", data_dir=None, limit: int | None = None, cache: bool = True):
    """CIFAR-10 (the JPEG copy) as (images (N, 32, 32, 3) uint8, labels (N,)). Decoded once
    and cached as .npz under $XDG_CACHE_HOME/instahide (or ~/.cache/instahide)."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    path = Path(data_dir or default_data_dir()) / f"cifar10-{split}.tar"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set INSTAHIDE_DATA to the folder holding cifar10-{split}.tar)")
    cache_file = None
    if cache and limit is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instahide"
        stat = path.stat()
        cache_file = root / f"cifar10-{split}-{stat.st_size}-{int(stat.st_mtime)}.npz"
        if cache_file.exists():
            with np.load(cache_file) as f:
                return f["images"], f["labels"]
    images, labels = load_class_tar(path, limit=limit)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache_file)
    return images, labels
