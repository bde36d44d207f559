"""Type stubs of the compiled core (private: use the instahide package); csrc/bindings/module.cpp."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# A host image source: (images (N, C, H, W) or (N, H, W, C) uint8/float32, channels_last,
# scale[C], shift[C]), or packed images of their own sizes: (pixels (total,) uint8/float32,
# channels, offsets (m,) int64, sizes (m, 2) int32, scale[C], shift[C]).
_Source = tuple[np.ndarray, bool, Sequence[float], Sequence[float]]
_PackedSource = tuple[np.ndarray, int, np.ndarray, np.ndarray, Sequence[float], Sequence[float]]
# A device image source: (pointer, pixel type 0 uint8 / 1 float32, (N, C, H, W), element
# strides, scale[C], shift[C]), or packed: (pointer, pixel type, channels, count, offsets
# pointer, sizes pointer, buffer length, scale[C], shift[C]).
_DeviceSource = tuple[int, int, tuple[int, int, int, int], tuple[int, int, int, int], Sequence[float], Sequence[float]]
_PackedDeviceSource = tuple[int, int, int, int, int, int, int, Sequence[float], Sequence[float]]

def encode(sources: list[_Source | _PackedSource], private_terms: int, index: np.ndarray, lam: np.ndarray,
           offset: np.ndarray, flip: np.ndarray, row_id: np.ndarray, mask_key: bytes, epoch: int, sign: int,
           out: np.ndarray, out_type: int, out_channels_last: bool, num_threads: int,
           tables_by_row_id: bool = False, patches_inside: bool = False, labels: np.ndarray | None = None,
           classes: int = 0, renormalize: bool = False,
           cpu_kernel: str = "auto") -> npt.NDArray[np.float32] | None: ...
def mix_labels(index: np.ndarray, lam: np.ndarray, row_id: np.ndarray, private_terms: int, labels: np.ndarray,
               classes: int, renormalize: bool = False) -> npt.NDArray[np.float32]: ...
def encode_cuda(sources: list[_DeviceSource | _PackedDeviceSource], private_terms: int, rows: int, k: int, index: int,
                lam: int, offset: int, flip: int, row_id: int, mask_key: bytes, epoch: int, sign: int, out: int,
                out_type: int, out_channels_last: bool, out_height: int, out_width: int, device: int, stream: int,
                tables_by_row_id: bool = False, labels: tuple[int, int, int, bool, bool] | None = None,
                soft: int = 0) -> None: ...
def gather_sum(images: np.ndarray, index: np.ndarray, num_threads: int = 0) -> npt.NDArray[np.float32]: ...
def mask(key: bytes, epoch: int, row_id: np.ndarray, elements: int, num_threads: int = 0) -> npt.NDArray[np.int8]: ...
def chacha20(key: bytes, nonce: bytes, counter: int, blocks: int) -> npt.NDArray[np.uint8]: ...
def available_cores() -> int: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def build_info() -> dict[str, Any]: ...
def pointer_device(pointer: int) -> int: ...
