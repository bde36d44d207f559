#!/usr/bin/env bash
# Kernel tuning on a GPU machine, after benchmarks/gpu_check.sh has built the package: rebuilds
# the CUDA kernel (this GPU's architecture only) for each (pixels per lane, terms per group,
# min blocks per SM) and times the CIFAR batch-65,536 cases. Results go to ${OUT:-.}/gpu_tune/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_tune"
mkdir -p "$out"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
export INSTAHIDE_CUDA=on CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# Variants "pixels terms min_blocks [word_loads]", comma-separated (word_loads: 1, the default,
# takes the word-wide path for uint8 images; 0 loads bytes only).
IFS=, read -ra variants <<< "${GPU_TUNE_VARIANTS:-2 4 1 1,2 4 1 0,2 2 1 1,2 4 3 1}"
for variant in "${variants[@]}"; do
  set -- $variant
  words=${4:-1}
  name="pix$1-group$2-minblocks$3-words$words"
  flags="-DINSTAHIDE_CUDA_PIXELS_PER_LANE=$1;-DINSTAHIDE_CUDA_TERMS_PER_GROUP=$2;-DINSTAHIDE_CUDA_MIN_BLOCKS=$3"
  flags="$flags;-DINSTAHIDE_CUDA_WORD_LOADS=$words"
  CMAKE_ARGS="-DINSTAHIDE_CUDA_ARCHITECTURES=${arch}-real -DINSTAHIDE_CUDA_FLAGS=$flags" \
    python3 setup.py -q build_ext --inplace > "$out/build-$name.txt" 2>&1 || { tail -20 "$out/build-$name.txt"; continue; }
  echo "== $name"
  python3 benchmarks/gpu_throughput.py --quick --json "$out/$name.json" 2>&1 | grep -E "fused|copy"
done
