"""The public pool of cross-dataset InstaHide: images of a large public set (the paper:
ImageNet) whose random patches fill the public terms of every encoding.

Images are stored packed, as the core reads them: one uint8 buffer of channels-last images of
their own sizes, with per-image offsets and (H, W) sizes, so that patches are read straight
from the pool (no materialized crops). Build it once from an array, a folder or a tar file of
images, and save it to one file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _files

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_FORMAT = "instahide-pool-v1"
_MEMBERS = ("pixels", "offsets", "sizes", "channels", "mean", "std")


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img")


def _resize_short_side(image: np.ndarray, short_side: int | None) -> np.ndarray:
    """Scales an HWC uint8 image so that its short side is `short_side` (bilinear, as
    torchvision's Resize(size) on PIL images; the long side is truncated likewise)."""
    if short_side is None:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    if h <= w:
        size = (int(short_side * w / h), short_side)
    else:
        size = (short_side, int(short_side * h / w))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def sift_keypoints(image: np.ndarray) -> int:
    """OpenCV SIFT keypoints found in an (H, W, C) uint8 image (on its grayscale version).
    Needs ``opencv-python-headless`` (``pip install instahide[sift]``)."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[2] == 3 else np.ascontiguousarray(image[..., 0])
    return len(cv2.SIFT.create().detect(gray, None))


def tar_images(path, limit: int | None = None, progress: bool = True) -> list[np.ndarray]:
    """The first `limit` (None: every) image files of a tar archive, sorted by name, decoded."""
    images = []
    with _files.open_tar(path) as (tar, files):
        members = sorted((m for m in files if m.name.lower().endswith(_IMAGE_SUFFIXES)), key=lambda m: m.name)
        members = members[:limit]
        for m in _progress(members, len(members), "decode", progress and len(members) > 1000):
            images.append(_files.tar_image(tar, m, path))
    return images


class PublicPool:
    """Packed public images: ``pixels`` (total,) uint8, ``offsets`` (m,) int64 (first element of
    each image), ``sizes`` (m, 2) int32 (H, W); every image channels-last with ``channels``
    channels. ``mean``/``std`` (per channel, [0, 1] units) normalize the public terms; by
    default they are computed from the pool."""

    def __init__(self, pixels, offsets, sizes, channels: int = 3, mean=None, std=None) -> None:
        self.pixels = np.ascontiguousarray(pixels, np.uint8).reshape(-1)
        self.offsets = np.ascontiguousarray(offsets, np.int64).reshape(-1)
        self.sizes = np.ascontiguousarray(sizes, np.int32).reshape(-1, 2)
        self.channels = int(channels)
        if len(self.offsets) == 0:
            raise ValueError("the public pool is empty")
        if len(self.sizes) != len(self.offsets):
            raise ValueError("offsets and sizes must describe the same number of images")
        if not 1 <= self.channels <= 4:
            raise ValueError("pool images must have 1 to 4 channels")
        ends = self.offsets + self.sizes[:, 0].astype(np.int64) * self.sizes[:, 1] * self.channels
        if (self.sizes <= 0).any() or (self.offsets < 0).any() or ends.max() > len(self.pixels):
            raise ValueError("pool offsets and sizes do not fit the pixel buffer")
        self.build_report = {"images": len(self.offsets), "kept": len(self.offsets), "min_keypoints": None}
        if mean is None or std is None:
            computed_mean, computed_std = self._statistics()
            mean = computed_mean if mean is None else mean
            std = computed_std if std is None else std
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != (self.channels,) or self.std.shape != (self.channels,) or (self.std <= 0).any():
            raise ValueError(f"pool mean and std need {self.channels} values, std > 0")

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return (f"PublicPool({len(self)} images, sizes "
                f"{self.sizes.min(axis=0).tolist()}..{self.sizes.max(axis=0).tolist()}, "
                f"{self.pixels.nbytes / 2**20:.1f} MiB)")

    def image(self, i: int) -> np.ndarray:
        """Image i as an (H, W, C) view."""
        h, w = (int(v) for v in self.sizes[i])
        start = int(self.offsets[i])
        return self.pixels[start:start + h * w * self.channels].reshape(h, w, self.channels)

    def _statistics(self, chunk: int = 1 << 20):
        """Per-channel mean and std in [0, 1] units, in chunks (pools can be large)."""
        pixels = self.pixels.reshape(-1, self.channels)
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        for start in range(0, len(pixels), chunk):
            part = pixels[start:start + chunk].astype(np.float64) / 255
            total += part.sum(axis=0)
            squares += (part * part).sum(axis=0)
        mean = total / len(pixels)
        return mean, np.sqrt(np.maximum(squares / len(pixels) - mean * mean, 0.0))

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_images(cls, images, short_side: int | None = 40, progress: bool = True, min_keypoints: int | None = None,
                    keypoints=sift_keypoints, **stats) -> PublicPool:
        """From an iterable of (H, W, C) or (H, W) uint8 arrays of any sizes; grayscale becomes
        RGB, and each image is resized so that its short side is `short_side` (None: kept).

        `min_keypoints`: the paper's filter of flat images: keep only images in which
        `keypoints(image)` (default: OpenCV SIFT) finds more than that many keypoints (the
        paper: 40). It runs at the images' source resolution, before resizing: small images
        have far fewer keypoints (on the first 500 Tiny-ImageNet validation images: median 39 at
        64x64, where 45% have more than 40; median 20 at 40x40, where 0.8% have).
        ``pool.build_report`` says how many images were kept."""
        images = list(images)
        packed, offsets, sizes, position, channels = [], [], [], 0, None
        for image in _progress(images, len(images), "pool", progress and len(images) > 1000):
            image = np.asarray(image)
            if image.dtype != np.uint8:
                raise TypeError(f"pool images must be uint8, got {image.dtype}")
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3:
                raise ValueError(f"pool images must be (H, W, C), got shape {image.shape}")
            if min_keypoints is not None and keypoints(image) <= min_keypoints:
                continue
            image = _resize_short_side(image, short_side)
            if channels is None:
                channels = image.shape[2]
            elif image.shape[2] != channels:
                raise ValueError(f"pool images have {channels} and {image.shape[2]} channels")
            packed.append(np.ascontiguousarray(image).reshape(-1))
            offsets.append(position)
            sizes.append(image.shape[:2])
            position += image.size
        if not packed:
            raise ValueError("the public pool is empty" + (f" (no image has more than {min_keypoints} keypoints)"
                                                            if min_keypoints is not None and images else ""))
        assert channels is not None  # set by the first image packed
        pool = cls(np.concatenate(packed), offsets, sizes, channels, **stats)
        pool.build_report = {"images": len(images), "kept": len(packed), "min_keypoints": min_keypoints}
        if progress and min_keypoints is not None:
            print(f"public pool: kept {len(packed)} of {len(images)} images with more than {min_keypoints} keypoints")
        return pool

    @classmethod
    def from_patches(cls, images, window: int, size: int, per_image: int = 1, min_keypoints: int | None = 40,
                     keypoints=sift_keypoints, rng=None, progress: bool = True, **stats) -> PublicPool:
        """A pool of patches filtered one by one, as the InstaHide paper's challenge describes:
        from each (H, W, C) uint8 image, `per_image` random `window` x `window` windows; a window
        is kept when `keypoints(window)` finds more than `min_keypoints` (counted at the
        source's resolution, before any resizing), then scaled to `size` x `size`. Encoders cut
        their whole patch from each kept one (``patch_size=size``). Window positions come from
        `rng` (a numpy Generator; default: fresh OS entropy): the pool is public data.
        ``pool.build_report`` says how many windows were tried and kept."""
        if window < 1 or size < 1 or per_image < 1:
            raise ValueError(f"window, size and per_image must be positive, got {window}, {size}, {per_image}")
        rng = np.random.default_rng() if rng is None else rng
        images = list(images)
        kept, tried = [], 0
        for image in _progress(images, len(images), "patches", progress and len(images) > 1000):
            image = np.asarray(image)
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or min(image.shape[:2]) < window:
                raise ValueError(f"pool images must be (H, W, C) of at least {window}x{window}, got {image.shape}")
            for _ in range(per_image):
                y = int(rng.integers(0, image.shape[0] - window + 1))
                x = int(rng.integers(0, image.shape[1] - window + 1))
                patch = np.ascontiguousarray(image[y:y + window, x:x + window])
                tried += 1
                if min_keypoints is not None and keypoints(patch) <= min_keypoints:
                    continue
                kept.append(_resize_short_side(patch, size))  # square: size x size
        if not kept:
            raise ValueError(f"no patch kept: none of {tried} windows has more than {min_keypoints} keypoints")
        pool = cls.from_images(kept, short_side=None, progress=False, **stats)
        pool.build_report = {"images": len(images), "windows": tried, "kept": len(kept), "min_keypoints": min_keypoints,
                             "window": window, "size": size}
        if progress:
            print(f"public pool: kept {len(kept)} of {tried} {window}x{window} windows"
                  + (f" with more than {min_keypoints} keypoints" if min_keypoints is not None else ""))
        return pool

    @classmethod
    def from_array(cls, images, short_side: int | None = 40, **options) -> PublicPool:
        """From an (m, H, W, C) uint8 array."""
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"expected (m, H, W, C) images, got shape {images.shape}")
        return cls.from_images(list(images), short_side=short_side, **options)

    @classmethod
    def from_folder(cls, folder, short_side: int | None = 40, **options) -> PublicPool:
        """Every image file below `folder` (recursive, sorted by path)."""
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        images = (_files.decode_image(p, f"{folder}: image '{p.relative_to(folder)}'") for p in paths)
        return cls.from_images(images, short_side=short_side, **options)

    @classmethod
    def from_tar(cls, path, short_side: int | None = 40, limit: int | None = None, **options) -> PublicPool:
        """Every image file in a tar archive (sorted by name), e.g. tiny-imagenet-val.tar."""
        images = tar_images(path, limit, options.get("progress", True))
        return cls.from_images(images, short_side=short_side, **options)

    # --- one file -------------------------------------------------------------------------

    def save(self, path) -> None:
        np.savez(path, format=np.array(_FORMAT), pixels=self.pixels, offsets=self.offsets, sizes=self.sizes,
                 channels=np.array(self.channels), mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path) -> PublicPool:
        """A pool saved by `save`; a damaged file or one of another kind raises ValueError."""
        f = _files.read_npz(path, "an instahide public pool file", _MEMBERS, format=_FORMAT)
        with _files.about(path):
            return cls(f["pixels"], f["offsets"], f["sizes"], _files.integer(f, "channels"), f["mean"], f["std"])
