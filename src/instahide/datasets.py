"""Image datasets as uint8 arrays: class-folder tar files such as the CIFAR-10 copies in
``../shared/data`` (``<split>/<class>/<n>.jpg``). Decoding needs Pillow (``pip install
instahide[data]``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _files

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
    class_id = {name: i for i, name in enumerate(classes)}
    members = []
    with _files.open_tar(path) as (tar, files):
        for m in files:
            parts = Path(m.name).parts
            if len(parts) >= 2 and parts[-2] in class_id and m.name.lower().endswith(_IMAGE_SUFFIXES):
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
            images.append(_files.tar_image(tar, m, path))
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
            try:
                cached = _files.read_npz(cache_file, "a decoded CIFAR-10 cache", ("images", "labels"))
            except ValueError:  # a damaged cache (a full disk, say) is decoded again and replaced
                pass
            else:
                return cached["images"], cached["labels"]
    images, labels = load_class_tar(path, limit=limit)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache_file)
    return images, labels


def load_image_folder(folder, size: int | None = None):
    """Images in class subfolders (``<folder>/<class>/<image>``, classes in sorted order) as
    (images (N, H, W, 3) uint8, labels (N,), class names). All images must share one size,
    unless `size` is given: then each is resized to size x size (bilinear)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder}: no class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            images.append(_files.decode_image(path, f"{folder}: image '{path.relative_to(folder)}'", size))
            labels.append(label)
    if not images:
        raise ValueError(f"{folder}: no images")
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"{folder}: images of several sizes (give a size to resize them)")
    return np.stack(images), np.asarray(labels, np.int64), tuple(classes)


def load_digits(size: int = 32):
    """scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes), shipped
    inside its wheel: no download. Scaled to 0..255 and resized to size x size (bilinear),
    gray replicated into 3 channels so that they mix with RGB public patches. Returns
    (images (N, size, size, 3) uint8, labels (N,) int64)."""
    import importlib

    from PIL import Image

    digits = importlib.import_module("sklearn.datasets").load_digits()  # scikit-learn ships no type stubs
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # the set's values are 0..16
    images = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BILINEAR)) for p in pixels])
    return np.repeat(images[..., None], 3, axis=3), digits.target.astype(np.int64)


# Photos inside scikit-image's wheel (skimage/data/*.png|jpg): readable with no download.
BUNDLED_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")


def bundled_photos():
    """scikit-image's bundled photos as a list of (H, W, 3) uint8 arrays (grayscale ones
    replicated into 3 channels): the demo's public images."""
    import skimage.data

    photos = []
    for name in BUNDLED_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        photos.append(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3])
    return photos


def load_pickle_batches(folder, split: str):
    """The original CIFAR-10 python batches (``data_batch_1`` .. ``5``, ``test_batch``) as
    (images (N, 32, 32, 3) uint8, labels (N,))."""
    import pickle

    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = Path(folder) / name
        with open(path, "rb") as f, _files.parsing(f"{path}: truncated or damaged CIFAR-10 python batch"):
            batch = pickle.load(f, encoding="bytes")
        # a dict of b"data" (N, 3072) uint8 and b"labels" (N,): anything else is another kind of file
        with _files.parsing(f"{path}: not a CIFAR-10 python batch, a dict of b'data' (N, 3072) uint8 and b'labels'"):
            data, ids = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or ids.shape != data.shape[:1]:
                raise ValueError(f"b'data' is {data.dtype} {data.shape}, b'labels' {ids.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(ids.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def split_size(path) -> tuple[int, tuple[int, ...]] | None:
    """(images, shape of the first) of a class tar file or a folder of class subfolders, from
    its listing and one decoded image (what `load_split` would hold, before decoding it all);
    None for CIFAR-10 python batches (a known, small size) or a path that is neither."""
    path = Path(path)
    if path.is_file():
        with _files.open_tar(path) as (tar, files):
            members = [m for m in files if len(Path(m.name).parts) >= 2 and m.name.lower().endswith(_IMAGE_SUFFIXES)]
            return (len(members), _files.tar_image(tar, members[0], path).shape) if members else None
    if path.is_dir() and not ((path / "data_batch_1").exists() or (path / "test_batch").exists()):
        files = [p for p in path.glob("*/**/*") if p.suffix.lower() in _IMAGE_SUFFIXES]
        return (len(files), _files.decode_image(files[0], str(files[0])).shape) if files else None
    return None


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


def load_dataset(spec: str, split: str = "train", size: int | None = None, labels_path=None):
    """(images uint8 (N, H, W, C) or (N, C, H, W), labels (N,), description) from a spec:
    ``digits`` (scikit-learn's, resized to `size`, default 32), ``cifar10`` (`split` of the
    copy in default_data_dir()), an .npz holding ``images`` and ``labels``, an .npy of images
    with labels in `labels_path`, a class tar file, CIFAR-10 python batches, or a folder of
    class subfolders (images resized to `size` when given)."""
    if spec == "digits":
        images, labels = load_digits(size or 32)
        return images, labels, f"scikit-learn digits ({images.shape[1]}x{images.shape[2]})"
    if spec == "cifar10":
        images, labels = load_cifar10(split)
        return images, labels, f"CIFAR-10 {split} (JPEG copy)"
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or folder (or give digits, cifar10)")
    if path.suffix == ".npz":
        arrays = _files.read_npz(path, "an .npz data set", ("images", "labels"))
        images, labels = arrays["images"], arrays["labels"]
    elif path.suffix == ".npy":
        if labels_path is None:
            raise ValueError(f"{path}: an .npy holds images only; give the labels (an .npy of class ids)")
        images, labels = _files.read_npy(path, "an .npy of images"), _files.read_npy(labels_path, "an .npy of labels")
    elif path.is_dir() and size is not None and not (path / "data_batch_1").exists():
        images, labels, _ = load_image_folder(path, size=size)
    else:
        images, labels = load_split(path, split)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{spec}: expected uint8 images (N, H, W, C) or (N, C, H, W), got {images.dtype} "
                         f"{images.shape}")
    class_ids = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    soft = labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating)
    if labels.shape[:1] != images.shape[:1] or not (class_ids or soft):
        raise ValueError(f"{spec}: {len(images)} images need class ids ({len(images)},) or soft labels "
                         f"({len(images)}, classes) as labels, got {labels.dtype} {labels.shape}")
    return images, labels, str(spec)

