#!/usr/bin/env bash
# Time to accuracy on a GPU (under 8 minutes on an H100): build the package with the CUDA kernels,
# then train the full-width fast recipe (FastNet 64/256/256, bf16 autocast, channels-last) with
# CIFAR-10 resident on the GPU and encoded there: plain, InstaHide inside k = 4 (|x| input) and
# cross 2+4. Installs and downloads nothing: needs python3 with torch (CUDA), pybind11, numpy,
# matplotlib, pillow, cmake and ninja, and the data in $INSTAHIDE_DATA (default ../shared/data or
# ./shared/data). Writes ${OUT:-.}/gpu_train/: the JSON and plot of benchmarks/time_to_accuracy.py,
# the build log and the device. EPOCHS="10,40,40" sets the epochs of the three methods.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_train"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
if [ -z "${INSTAHIDE_DATA:-}" ]; then
  for candidate in ../shared/data shared/data; do
    [ -f "$candidate/cifar10-train.tar" ] && export INSTAHIDE_DATA="$PWD/$candidate" && break
  done
fi
[ -f "${INSTAHIDE_DATA:-}/cifar10-train.tar" ] || { echo "no CIFAR-10 tars: set INSTAHIDE_DATA"; exit 1; }

export INSTAHIDE_CUDA=on CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" PYTHONUNBUFFERED=1
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
start=$(date +%s)
CMAKE_ARGS="-DINSTAHIDE_CUDA_ARCHITECTURES=${arch:-90}-real" python3 setup.py -q build_ext --inplace \
  > "$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import instahide, json; print(json.dumps(instahide.build_info()))" | tee "$out/build_info.json"

python3 benchmarks/time_to_accuracy.py --device cuda --size full --methods plain,inside4-abs,cross-abs \
  --epochs "${EPOCHS:-10,40,40}" --out "$out/accuracy-$(date +%F).json" 2>&1 | tee "$out/time_to_accuracy.txt"
