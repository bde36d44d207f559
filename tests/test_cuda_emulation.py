"""The CUDA kernel's per-warp code, emulated on the host (a warp's lanes as fibers that switch
at each warp sync) against the CPU core on thousands of random cases
(csrc/tests/emulate_cuda.cu): compiled with nvcc where it is found, so the kernel's index
arithmetic and its warp synchronization are checked on machines without a GPU (CI has nvcc and
no GPU)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


@pytest.mark.skipif(NVCC is None, reason="no nvcc on this machine")
@pytest.mark.skipif(not (ROOT / "csrc" / "tests" / "emulate_cuda.cu").exists(), reason="needs the source tree")
def test_cuda_kernel_emulated_on_the_host_matches_the_cpu_core(tmp_path):
    core = ROOT / "csrc" / "core"
    program = tmp_path / "emulate_cuda"
    build = subprocess.run([NVCC, "-std=c++17", "-O1", "-I", str(core),
                            str(ROOT / "csrc" / "tests" / "emulate_cuda.cu"), str(core / "encode_cpu.cpp"),
                            str(core / "encode_cpu_avx512.cpp"), str(core / "thread_pool.cpp"), "-o", str(program)],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    summary = re.search(r"(\d+) cases \((\d+) on the word-wide path\), (\d+) failed", run.stdout)
    assert summary, run.stdout[-3000:]
    cases, word_cases, failed = map(int, summary.groups())
    assert failed == 0 and cases >= 3000
    assert cases // 10 <= word_cases < cases  # both paths of the kernel were exercised
