"""What one encode call does, decided once: the Encoder validates its options, the keys and
the images' geometry against each other and writes the outcome into a Plan; a backend
(`_cpu` on the host, `_cuda` on a GPU) executes the plan on the arrays it took in. Neither
backend reads the Encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .keys import Keys

SIGN_CODES = {"flip": 0, "abs": 1, "none": 2}  # the core's SignMode
OUT_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}  # the core's OutType


@dataclass(frozen=True)
class Images:
    """The private images as a backend read them off the caller's array: N images of C
    channels, H x W pixels, uint8 or float32, channels last or first."""

    n: int
    channels: int
    height: int
    width: int
    channels_last: bool
    dtype: np.dtype


@dataclass(frozen=True)
class Plan:
    """One encode call: the images' geometry, each source's normalization (v * scale - shift
    per channel), the epoch's keys, the public pool of cross mode (None inside the data set),
    the sign and output codes, and how labels are mixed (class count when labels are class
    ids and num_classes is given, renormalization)."""

    images: Images
    keys: Keys
    scale: tuple[float, ...]
    shift: tuple[float, ...]
    public: Any  # PublicPool | None
    public_scale: tuple[float, ...]
    public_shift: tuple[float, ...]
    sign: int
    out_dtype: str
    out_channels_last: bool
    num_classes: int | None
    renormalize_labels: bool
    num_threads: int
    cpu_kernel: str

    @property
    def out_code(self) -> int:
        return OUT_CODES[self.out_dtype]

    def out_shape(self, rows: int) -> tuple[int, int, int, int]:
        im = self.images
        return ((rows, im.height, im.width, im.channels) if self.out_channels_last
                else (rows, im.channels, im.height, im.width))
