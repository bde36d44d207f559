"""instahide: fast InstaHide encoding (Huang, Song, Li, Arora, ICML 2020).

Published attacks recover images from InstaHide encodings; see docs/algorithm.md and the
README before relying on it for privacy.
"""

from . import reference
from ._arrays import bfloat16_to_float32
from ._core import available_cores, get_num_threads, set_num_threads
from .encoder import Encoder, mask
from .keys import Keys, derive_keys, mask_key_of, new_secret_key
from .pool import PublicPool

__version__ = "0.1.0"

__all__ = [
    "Encoder", "Keys", "PublicPool", "mask", "reference", "derive_keys", "mask_key_of", "new_secret_key",
    "bfloat16_to_float32", "available_cores", "get_num_threads", "set_num_threads", "build_info",
]


def build_info() -> dict:
    """How the compiled core was built (CUDA compiled in, for which architectures), whether a
    CUDA device is usable now, and the CPU threads in use."""
    from . import _core

    return {"version": __version__, **_core.build_info(), "cpu_threads": get_num_threads()}
