"""Builds instahide._core with CMake (setuptools drives it, as pybind11's cmake_example does)."""

import os
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
        try:
            import ninja  # noqa: F401

            cmake_args.append("-GNinja")
        except ImportError:
            pass
        build_args = ["--parallel", str(os.cpu_count() or 2)]
        build_dir = Path(self.build_temp) / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.source_dir, *cmake_args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", *build_args], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("instahide._core")], cmdclass={"build_ext": CMakeBuild})
