"""The C++ core under AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer:
csrc/tests/core_sanitize.cpp (Python-free) runs random encode calls of every layout, type and
mode on buffers of their exact extent, against a reference, plus invalid arguments and
concurrent callers; any sanitizer report fails the test.

The sanitizer builds leave out the per-ISA clones of the hot loops (INSTAHIDE_NO_CLONES): the
same source, compiled once instead of three times, keeps the build within CI's budget."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "csrc" / "tests" / "core_sanitize.cpp"
CXX = os.environ.get("CXX") or shutil.which("g++")
CASES = int(os.environ.get("INSTAHIDE_SANITIZE_CASES", "3000"))

BUILDS = {
    "address,undefined": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "thread": ["-fsanitize=thread"],
}
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer")

pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"),
              pytest.mark.skipif(not DRIVER.exists(), reason="needs the source tree")]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Both sanitizer builds, compiled side by side."""
    folder = tmp_path_factory.mktemp("sanitize")
    core = ROOT / "csrc" / "core"
    jobs = {}
    for name, flags in BUILDS.items():
        program = folder / ("core_" + name.replace(",", "_"))
        command = [CXX, "-std=c++17", "-O1", "-g", *flags, "-DINSTAHIDE_NO_CLONES", "-I", str(core), str(DRIVER),
                   str(core / "encode_cpu.cpp"), str(core / "encode_cpu_avx512.cpp"),
                   str(core / "thread_pool.cpp"), "-o", str(program), "-pthread"]
        jobs[name] = (program, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    built = {}
    for name, (program, job) in jobs.items():
        output, _ = job.communicate(timeout=900)
        missing = "cannot find" in output or "unrecognized" in output or "No such file" in output
        runtime = any(lib in output.lower() for lib in ("asan", "tsan", "ubsan", "sanitize"))
        if job.returncode != 0 and missing and runtime:
            built[name] = None  # this toolchain lacks the sanitizer's runtime
        else:
            assert job.returncode == 0, output[-3000:]
            built[name] = program
    return built


def run_driver(program, *args):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1", "TSAN_OPTIONS": "halt_on_error=1"}
    run = subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert not any(report in output for report in REPORTS), output[-4000:]
    return run.stdout


def test_core_under_address_and_undefined_behavior_sanitizers(programs):
    program = programs["address,undefined"]
    if program is None:
        pytest.skip("the compiler lacks ASan/UBSan runtimes")
    out = run_driver(program, CASES)
    assert f"{CASES} cases, " in out and " 0 failed" in out


def test_thread_pool_under_thread_sanitizer(programs):
    program = programs["thread"]
    if program is None:
        pytest.skip("the compiler lacks the TSan runtime")
    out = run_driver(program, 200)  # a few random cases, then concurrent callers and thread-count changes
    assert "200 cases, " in out and " 0 failed" in out
