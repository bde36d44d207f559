"""Builds instahide._core with CMake (setuptools drives it, as pybind11's cmake_example does).

Environment: INSTAHIDE_CUDA=auto|on|off (CUDA kernels: when nvcc is found, required, skipped),
INSTAHIDE_BUILD_TYPE (CMake build type, Release by default), CMAKE_ARGS (extra CMake arguments,
space-separated, e.g. -DINSTAHIDE_CUDA_ARCHITECTURES=80-real;90-real;90-virtual),
CMAKE_GENERATOR (default: Ninja where it is installed, Visual Studio with MSVC), ARCHFLAGS
(macOS: "-arch arm64" etc., as cibuildwheel sets it).

The CMake build directory belongs to one toolchain: its name is a digest of the interpreter,
cmake, the make program and the arguments, so a second `pip install .` from the same checkout
(whose isolated build environment, with its own cmake and ninja, lives in a new temporary
folder) never reuses a CMake cache that points at programs of an environment that is gone.
Directories of other toolchains are removed first, so the checkout holds one cache at most;
a build with the same toolchain (`pip install --no-build-isolation -e .` again) reuses it."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = ".") -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(Path(source_dir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("INSTAHIDE_BUILD_TYPE", "Debug" if self.debug else "Release")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DINSTAHIDE_CUDA={os.environ.get('INSTAHIDE_CUDA', 'auto')}",
        ]
        cmake_args += [arg for arg in os.environ.get("CMAKE_ARGS", "").split(" ") if arg]  # e.g. GPU architectures
        build_args = ["--parallel", str(os.cpu_count() or 2)]
        if self.compiler.compiler_type == "msvc":
            # Visual Studio generators are multi-configuration: the module goes to a folder per
            # configuration unless told otherwise, and the configuration is picked at build time.
            cmake_args.append(f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{build_type.upper()}={ext_dir}{os.sep}")
            build_args += ["--config", build_type]
            platform = {"win32": "Win32", "win-amd64": "x64", "win-arm64": "ARM64"}.get(self.plat_name)
            if platform and "CMAKE_GENERATOR" not in os.environ and "-A" not in cmake_args:
                cmake_args += ["-A", platform]
        elif "CMAKE_GENERATOR" not in os.environ:
            ninja = ninja_program()
            if ninja:
                # The make program is named explicitly: it is part of the toolchain's digest.
                cmake_args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        if sys.platform.startswith("darwin"):
            archs = re.findall(r"-arch (\S+)", os.environ.get("ARCHFLAGS", ""))
            if archs:  # cross-compiling (cibuildwheel's x86_64 wheels on an arm64 runner)
                cmake_args.append(f"-DCMAKE_OSX_ARCHITECTURES={';'.join(archs)}")
        cmake = shutil.which("cmake") or "cmake"
        build_dir = private_build_dir(Path(self.build_temp) / "cmake", [
            cmake, ext.source_dir, *cmake_args, os.environ.get("CMAKE_GENERATOR", "")])
        subprocess.run([cmake, ext.source_dir, *cmake_args], cwd=build_dir, check=True)
        subprocess.run([cmake, "--build", ".", *build_args], cwd=build_dir, check=True)


def ninja_program() -> str | None:
    """The ninja of this build environment: the `ninja` package's, else one on PATH."""
    try:
        import ninja

        program = Path(ninja.BIN_DIR) / ("ninja.exe" if sys.platform == "win32" else "ninja")
        if program.is_file():
            return str(program)
    except (ImportError, AttributeError):
        pass
    return shutil.which("ninja")


def private_build_dir(parent: Path, toolchain: list[str]) -> Path:
    """parent/<digest of the toolchain>, created; other toolchains' directories are removed."""
    digest = hashlib.sha256("\0".join([sys.executable, *toolchain]).encode()).hexdigest()[:16]
    if parent.is_dir():
        for stale in parent.iterdir():
            if stale.name != digest:
                shutil.rmtree(stale, ignore_errors=True)
    build_dir = parent / digest
    build_dir.mkdir(parents=True, exist_ok=True)
    return build_dir


setup(ext_modules=[CMakeExtension("instahide._core")], cmdclass={"build_ext": CMakeBuild})
