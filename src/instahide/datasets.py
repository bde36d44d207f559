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
# The per-channel mean and std of the CIFAR-10 training set that the authors' code normalizes with.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
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
            data = tar.extractfile(m)
            assert data is not None  # a regular file (m.isfile())
            with Image.open(io.BytesIO(data.read())) as im:
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


def load_image_folder(folder):
    """Images in class subfolders (``<folder>/<class>/<image>``, classes in sorted order) as
    (images (N, H, W, 3) uint8, labels (N,), class names). All images must share one size."""
    from PIL import Image

    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder}: no class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    if not images:
        raise ValueError(f"{folder}: no images")
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"{folder}: images of several sizes")
    return np.stack(images), np.asarray(labels, np.int64), tuple(classes)


def load_pickle_batches(folder, split: str):
    """The original CIFAR-10 python batches (``data_batch_1`` .. ``5``, ``test_batch``) as
    (images (N, 32, 32, 3) uint8, labels (N,))."""
    import pickle

    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(Path(folder) / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_split(path, split: str):
    """(images, labels) of one split from a class tar file, a folder of class subfolders, or
    a folder of CIFAR-10 python batches."""
    path = Path(path)
    if path.is_file():
        return load_class_tar(path)
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return load_pickle_batches(path, split)
    if path.is_dir():
        images, labels, _ = load_image_folder(path)
        return images, labels
    raise FileNotFoundError(f"{path}: no such dataset file or folder")
