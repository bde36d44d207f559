#!/usr/bin/env bash
# One script for a GPU session (under 8 minutes on an H100): build the package with the CUDA
# kernels, run the CUDA tests, time the GPU path. Needs python3 with torch, pybind11, numpy,
# cmake and ninja; downloads nothing. Results go to ${OUT:-.}/gpu_check/.
set -euo pipefail
script_start=$(date +%s)
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"

# Build in place for this machine's GPU (plus the portable sm_80/sm_90 set).
export INSTAHIDE_CUDA=on
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
cmake_args="-DINSTAHIDE_CUDA_ARCHITECTURES=80-real;90-real;90-virtual -DINSTAHIDE_CUDA_FLAGS="
[ -n "$arch" ] && [ "$arch" != 80 ] && [ "$arch" != 90 ] && cmake_args="-DINSTAHIDE_CUDA_ARCHITECTURES=80-real;90-real;${arch}-real;90-virtual -DINSTAHIDE_CUDA_FLAGS="
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" PYTHONUNBUFFERED=1
start=$(date +%s)
CMAKE_ARGS="$cmake_args" python3 setup.py -q build_ext --inplace > "$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import instahide, json; print(json.dumps(instahide.build_info(), indent=1))" | tee "$out/build_info.json"

# Correctness first: CUDA vs CPU vs reference. Timing runs even if a test fails, so that one
# session gets both answers; the test log says which failed.
python3 -m pytest -q -p no:cacheprovider -rfE --timeout=300 tests/test_cuda.py tests/test_chacha20.py tests/test_encode.py \
    tests/test_torch.py > "$out/tests.txt" 2>&1 || echo "TESTS FAILED (see tests.txt)"
tail -25 "$out/tests.txt"

# Then throughput.
python3 benchmarks/gpu_throughput.py --json "$out/gpu_throughput.json" --host-profile "$out/host_profile.txt" 2>&1 | tee "$out/gpu_throughput.txt"

# Where Nsight Compute is installed: why the kernel runs at the speed it does (DRAM and L2
# throughput against their peaks, L1/L2 hit rates, warp stall reasons, occupancy). A diagnostic
# only: it may be refused (ERR_NVGPUCTRPERM, no counter access), and it gets what is left of 7.5
# minutes since the script started (90 s at most).
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2> /dev/null || true)
if [ -n "$ncu_bin" ] && [ $(( $(date +%s) - script_start )) -lt 420 ]; then
  sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
  deadline=$(( script_start + 450 < $(date +%s) + 90 ? script_start + 450 : $(date +%s) + 90 ))
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -gt 10 ]; then
    timeout "$left" "$ncu_bin" -k regex:encode_kernel --launch-skip 3 --launch-count 1 $sections \
        python3 benchmarks/gpu_profile_target.py > "$out/ncu.txt" 2>&1 || echo "ncu failed or timed out: see ncu.txt"
    { grep -m 8 -E "DRAM Throughput|L1/TEX Hit Rate|L2 Hit Rate|Memory Throughput|Achieved Occupancy|Duration" \
        "$out/ncu.txt" || true; } | sed "s/^/ncu: /"
  else
    echo "ncu: out of time"
  fi
else
  echo "no kernel profile: ncu not found, or no time left"
fi
