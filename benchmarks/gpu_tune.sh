#!/usr/bin/env bash
# Kernel tuning on a GPU machine: builds the package once per variant of the kernel's tuning
# constants (this GPU's architecture only; all variants at once, each in its own build
# folder), then times the CIFAR batch-65,536 cases with each. Results go to
# ${OUT:-.}/gpu_tune/.
#
#   bash benchmarks/gpu_tune.sh [build|run]   (default: both; `build` can run beside
#                                              gpu_check.sh, `run` needs the GPU to itself)
# Variants "pixels terms min_blocks [word_loads]", comma-separated in GPU_TUNE_VARIANTS
# (word_loads: 1, the default, takes the word-wide path for uint8 images).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_tune"
work="${GPU_TUNE_DIR:-/tmp/instahide-gpu-tune}"
phase="${1:-all}"
mkdir -p "$out" "$work"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
export INSTAHIDE_CUDA=on PYTHONUNBUFFERED=1
IFS=, read -ra variants <<< "${GPU_TUNE_VARIANTS:-2 2 4 1,2 2 1 1,2 2 3 1}"

name_of() { echo "pix$1-group$2-minblocks$3-words${4:-1}"; }

if [ "$phase" != run ]; then
  for variant in "${variants[@]}"; do
    set -- $variant
    name=$(name_of "$@")
    flags="-DINSTAHIDE_CUDA_PIXELS_PER_LANE=$1;-DINSTAHIDE_CUDA_TERMS_PER_GROUP=$2;-DINSTAHIDE_CUDA_MIN_BLOCKS=$3"
    flags="$flags;-DINSTAHIDE_CUDA_WORD_LOADS=${4:-1}"
    rm -rf "${work:?}/$name" && mkdir -p "$work/$name" && cp -r src/instahide "$work/$name/"
    rm -f "$work/$name"/instahide/_core*.so  # an in-place build of the default, if any
    (CMAKE_ARGS="-DINSTAHIDE_CUDA_ARCHITECTURES=${arch}-real -DINSTAHIDE_CUDA_FLAGS=$flags" \
       CMAKE_BUILD_PARALLEL_LEVEL=4 python3 setup.py -q build_ext --build-temp "$work/$name/temp" \
       --build-lib "$work/$name/lib" > "$out/build-$name.txt" 2>&1 &&
       cp "$work/$name"/lib/instahide/_core*.so "$work/$name/instahide/") &
  done
  wait
fi

if [ "$phase" != build ]; then
  for variant in "${variants[@]}"; do
    set -- $variant
    name=$(name_of "$@")
    if ! ls "$work/$name"/instahide/_core*.so > /dev/null 2>&1; then
      echo "== $name: build failed"; tail -20 "$out/build-$name.txt"; continue
    fi
    echo "== $name"
    PYTHONPATH="$work/$name" python3 benchmarks/gpu_throughput.py --quick --json "$out/$name.json" 2>&1 |
      grep -E "fused|copy|call"
  done
fi
