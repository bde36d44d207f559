"""The encoders the benchmarks compare, on one shared workload (CIFAR shape, k terms, batches
of rows from one epoch's keys). Each `make_*` returns a function encoding one batch of rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import instahide
from instahide import reference
from instahide.cli.bench import copy_bandwidth  # noqa: F401  (shared with `instahide bench`)
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD

CIFAR_MEAN = np.array(CIFAR10_MEAN, np.float32)
CIFAR_STD = np.array(CIFAR10_STD, np.float32)


@dataclass
class Workload:
    images: np.ndarray  # (n, H, W, C) uint8, as stored
    labels: np.ndarray
    k: int
    batch: int
    source: str

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def bytes_per_image(self) -> int:
        """Every source window read once at its dtype + the float32 output written once."""
        n, h, w, c = self.images.shape
        return self.k * h * w * c * self.images.itemsize + h * w * c * 4


def load_workload(k: int = 4, batch: int = 512, synthetic: bool = False, n: int = 50_000) -> Workload:
    if not synthetic:
        try:
            from instahide.datasets import load_cifar10

            images, labels = load_cifar10("train")
            return Workload(images[:n], labels[:n], k, batch, "CIFAR-10 training images (JPEG copy)")
        except (FileNotFoundError, ImportError) as error:
            print(f"CIFAR-10 unavailable ({error}); using random images")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Workload(images, rng.integers(0, 10, n), k, batch, "random uint8 images")


def make_fused_cpu(w: Workload, threads: int = 0, **options):
    encoder = instahide.Encoder(k=w.k, mean=CIFAR_MEAN, std=CIFAR_STD, num_threads=threads, **options)
    keys = encoder.keys(w.n, 0)
    return lambda rows: encoder.encode(w.images, w.labels, keys, rows=rows)


def make_gather_sum_bound(w: Workload, threads: int = 0):
    """Not an encoder: the encoder's memory traffic alone (each row sums k whole images picked
    by the same keys, prefetched the same way, float32 streamed out), in the compiled core's
    benchmark module. What this access pattern reaches on the machine, a tighter yardstick than
    a copy. The module is not shipped: build it with CMAKE_ARGS=-DINSTAHIDE_BENCH=ON."""
    try:
        from instahide import _yardstick
    except ImportError as error:
        raise ImportError("no instahide._yardstick: build it with CMAKE_ARGS=-DINSTAHIDE_BENCH=ON pip install -e . "
                          "(or python setup.py build_ext --inplace)") from error

    index = instahide.Encoder(k=w.k).keys(w.n, 0).index
    return lambda rows: _yardstick.gather_sum(w.images, index[rows], threads)


def load_public_pool(synthetic: bool = False):
    """The public pool: Tiny-ImageNet validation images from ../shared/data (short side 40),
    or random 40x40 images where absent."""
    if not synthetic:
        try:
            from instahide.datasets import default_data_dir

            path = default_data_dir() / "tiny-imagenet-val.tar"
            if path.exists():
                return instahide.PublicPool.from_tar(path), "Tiny-ImageNet validation images"
        except ImportError as error:
            print(f"Tiny-ImageNet unavailable ({error}); using random images")
    rng = np.random.default_rng(1)
    return instahide.PublicPool.from_array(rng.integers(0, 256, (10_000, 40, 40, 3), dtype=np.uint8)), "random images"


def make_fused_cpu_cross(w: Workload, pool, threads: int = 0):
    """The paper's cross-dataset setting: k=6, 2 private + 4 public patches, dom 0.3."""
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=w.images.shape[1:3], dom=0.3,
                                mean=CIFAR_MEAN, std=CIFAR_STD, num_threads=threads)
    keys = encoder.keys(w.n, 0)
    return lambda rows: encoder.encode(w.images, w.labels, keys, rows=rows)


def make_numpy_reference(w: Workload):
    keys = instahide.Encoder(k=w.k).keys(w.n, 0)
    return lambda rows: reference.encode(w.images, w.labels, keys, rows=rows, mean=CIFAR_MEAN, std=CIFAR_STD)


def make_numpy_vectorized(w: Workload):
    """numpy written for speed: float32, a 256-entry lookup per channel for the normalization,
    one gather per term, the sign from numpy's (non-cryptographic) generator."""
    keys = instahide.Encoder(k=w.k).keys(w.n, 0)
    rng = np.random.default_rng()
    lut = (np.arange(256, dtype=np.float32)[:, None] / 255 - CIFAR_MEAN) / CIFAR_STD  # (256, C)
    lut_planar = np.ascontiguousarray(lut.T)  # (C, 256)
    planar = np.ascontiguousarray(w.images.transpose(0, 3, 1, 2))  # NCHW once, outside the timing
    classes = int(w.labels.max()) + 1

    def encode(rows):
        index, lam = keys.index[rows], keys.lam[rows]
        mixed = np.zeros((len(rows), *planar.shape[1:]), np.float32)
        for t in range(w.k):
            pixels = planar[index[:, t]]  # (B, C, H, W) uint8
            for c in range(planar.shape[1]):
                mixed[:, c] += lam[:, t, None, None] * lut_planar[c][pixels[:, c]]
        mixed *= rng.integers(0, 2, mixed.shape, dtype=np.int8) * np.float32(2) - np.float32(1)
        soft = np.zeros((len(rows), classes), np.float32)
        for t in range(w.k):
            soft[np.arange(len(rows)), w.labels[index[:, t]]] += lam[:, t]
        return mixed, soft

    return encode


def make_torch_ops(w: Workload, threads: int = 0):
    """The authors' PyTorch-op encoding (train_inside.py): the set as float tensors after
    ToTensor + Normalize (prepared once, outside the timing), coefficients scaled per row,
    `randperm` partner gathers, a `randint` sign mask."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    x = torch.from_numpy(w.images).permute(0, 3, 1, 2).float().div_(255)
    x = ((x - torch.from_numpy(CIFAR_MEAN)[:, None, None]) / torch.from_numpy(CIFAR_STD)[:, None, None]).contiguous()
    y = torch.from_numpy(w.labels)
    keys = instahide.Encoder(k=w.k).keys(w.n, 0)  # the same coefficients and partners
    lams = torch.from_numpy(keys.lam)
    perms = [torch.from_numpy(keys.index[:, t]) for t in range(w.k)]

    def vec_mul_ten(vec, tensor):
        return vec.reshape(-1, *([1] * (tensor.dim() - 1))) * tensor

    def encode(rows):
        rows = torch.from_numpy(rows)
        lam = lams[rows]
        mixed = vec_mul_ten(lam[:, 0], x[rows])
        ys = [y[rows]]
        for t in range(1, w.k):
            index = perms[t][rows]
            mixed += vec_mul_ten(lam[:, t], x[index])
            ys.append(y[index])
        sign = torch.randint(2, size=list(mixed.shape)) * 2.0 - 1
        mixed *= sign
        return mixed, ys, lam

    return encode
