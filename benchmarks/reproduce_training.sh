#!/usr/bin/env bash
# The CPU reproduction of the training issue: small CNN on the CIFAR-10 JPEG copy, vanilla vs
# InstaHide inside k=4 vs cross 2+4 (Tiny-ImageNet patches), EPOCHS each (default 10, about
# 20 minutes on 2 cores), then the accuracy plot (needs matplotlib) and a table.
#   bash benchmarks/reproduce_training.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/reproduce}"
epochs="${EPOCHS:-10}"
if ! [[ "$epochs" =~ ^[1-9][0-9]*$ ]]; then
  echo "reproduce_training.sh: EPOCHS=$epochs: must be a whole number of at least 1" >&2; exit 2
fi
mkdir -p "$out" 2>/dev/null || { echo "reproduce_training.sh: OUT_DIR $out: cannot be created" >&2; exit 2; }
for mode in vanilla instahide cross; do
  python -m instahide train --model small_cnn --mode "$mode" --epochs "$epochs" --out "$out/$mode" --quiet --seed 0
done
python benchmarks/plot_training.py "$out/accuracy.png" "vanilla=$out/vanilla/log.csv" \
  "InstaHide inside k=4=$out/instahide/log.csv" "InstaHide cross 2+4=$out/cross/log.csv" \
  --title "small CNN, CIFAR-10, $epochs epochs on the CPU" || echo "no plot (matplotlib missing)"
python - "$out" <<'PY'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| mode | final test accuracy | best | seconds per epoch | encoding share of epoch time |")
print("|---|---:|---:|---:|---:|")
for mode in ("vanilla", "instahide", "cross"):
    rows = list(csv.DictReader(open(out / mode / "log.csv")))
    later = rows[1:] or rows  # epoch 0 includes warm-up
    seconds = sum(float(r["seconds"]) for r in later) / len(later)
    encode = sum(float(r["encode_seconds"]) for r in later) / len(later)
    print(f"| {mode} | {100 * float(rows[-1]['test_accuracy']):.1f}% | "
          f"{100 * max(float(r['test_accuracy']) for r in rows):.1f}% | {seconds:.1f} | {100 * encode / seconds:.1f}% |")
PY
