import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=60, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DATA_DIR = Path(os.environ.get("INSTAHIDE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@pytest.fixture(scope="session")
def cifar_test():
    """The first 200 CIFAR-10 test images of each class (JPEG copy), NHWC uint8, with labels."""
    if not (DATA_DIR / "cifar10-test.tar").exists():
        pytest.skip(f"no CIFAR-10 copy under {DATA_DIR}")
    pytest.importorskip("PIL")
    from instahide.datasets import load_cifar10

    images, labels = load_cifar10("test", data_dir=DATA_DIR)
    keep = np.concatenate([np.flatnonzero(labels == c)[:200] for c in range(10)])
    return images[keep], labels[keep]


@pytest.fixture
def rng():
    return np.random.default_rng()


def pytest_terminal_summary(terminalreporter):
    """The number of property-test cases actually run (tests/test_fuzz.py)."""
    from helpers import FUZZ_CASES

    if FUZZ_CASES:
        detail = ", ".join(f"{name} {count}" for name, count in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(FUZZ_CASES.values())} ({detail})")
