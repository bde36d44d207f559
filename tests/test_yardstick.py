"""The benchmarks' access-pattern yardstick (instahide._yardstick, csrc/bindings/yardstick.cpp):
a module of its own that wheels do not carry, so this test compiles it from the source tree
(as the build does with the CMake option INSTAHIDE_BENCH=ON) and checks that it computes what
it claims, and that the shipped extension has no benchmark code."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import instahide

ROOT = Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def test_the_shipped_extension_has_no_benchmark_code():
    assert not hasattr(instahide._core, "gather_sum")


@pytest.fixture(scope="module")
def yardstick(tmp_path_factory):
    pybind11 = pytest.importorskip("pybind11", reason="pybind11 (the test extra) compiles the yardstick module")
    if CXX is None or sys.platform == "win32":
        pytest.skip("needs a Unix C++ compiler")
    if not (ROOT / "csrc" / "bindings" / "yardstick.cpp").exists():
        pytest.skip("needs the source tree")
    folder = tmp_path_factory.mktemp("yardstick")
    module = folder / ("_yardstick" + sysconfig.get_config_var("EXT_SUFFIX"))
    core = ROOT / "csrc" / "core"
    command = [CXX, "-std=c++17", "-O1", "-shared", "-fPIC", "-DINSTAHIDE_BENCH=1", "-DINSTAHIDE_NO_CLONES",
               "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"], "-I", str(core),
               str(ROOT / "csrc" / "bindings" / "yardstick.cpp"), str(core / "encode_cpu.cpp"),
               str(core / "encode_cpu_avx512.cpp"), str(core / "thread_pool.cpp"), "-o", str(module), "-lpthread"]
    build = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("_yardstick", module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_gather_sum_yardstick_equals_numpy(yardstick):
    rng = np.random.default_rng()
    images = rng.integers(0, 256, (30, 7, 5, 3), dtype=np.uint8)
    index = rng.integers(0, 30, (41, 4))
    out = yardstick.gather_sum(images, index, 2)
    expected = images.reshape(30, -1)[index].astype(np.float32).sum(axis=1)
    assert out.shape == (41, 105) and np.array_equal(out, expected)
    with pytest.raises(ValueError, match="out of range"):
        yardstick.gather_sum(images, np.full((2, 4), 30), 1)
