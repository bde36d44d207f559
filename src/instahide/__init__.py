"""instahide: fast InstaHide encoding (Huang, Song, Li, Arora, ICML 2020).

Published attacks recover images from InstaHide encodings; see docs/algorithm.md and the
README before relying on it for privacy.

The package is laid out by layer: the encoder core here (encoder, keys, pool, reference, the
random stream, array intake, the CUDA path, data sets, shards on disk), `instahide.torch`
(loader, loss, inference, models, the fast recipe; needs torch), `instahide.attacks` (Tier 0
to 2 and their metrics) and `instahide.cli` (the `instahide` command, a module per command).
Modules that moved keep their old names (`instahide.models`, `instahide.recipe`,
`instahide.train`, `instahide.demo`, `instahide.bench`): importing one gives the new module
itself, with a DeprecationWarning that names the new path.
"""

import importlib
import importlib.abc
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

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


# Old module names -> the modules they moved to when the package was laid out by layer.
_MOVED = {
    "instahide.models": "instahide.torch.models",
    "instahide.recipe": "instahide.torch.recipe",
    "instahide.demo": "instahide.cli.demo",
    "instahide.train": "instahide.cli.train",
    "instahide.bench": "instahide.cli.bench",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as its new module: the new module is imported only when the
    old name is (torch stays optional) and registered under the old name too (sys.modules and
    the package's attribute), so both names give one module object, and patching through
    either patches it. Each first import of an old name warns (DeprecationWarning)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        return ModuleSpec(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = _MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system gave the module the old name's spec: it keeps its own
        assert module.__spec__ is not None
        module.__spec__ = module.__spec__.loader_state


if not any(type(finder).__name__ == _MovedModules.__name__ for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
