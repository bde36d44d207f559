"""Tier 1 table of docs/privacy.md: known-mixing recovery on 50 CIFAR-10 test images, inside k = 4
and 6, T encodings per image.

    python benchmarks/privacy_table.py [OUT.json]   (default: privacy_table.json)
"""
import json
import sys

import numpy as np

import instahide
from instahide.datasets import load_cifar10
from instahide import attacks
x, y = load_cifar10("test")
idx = np.random.default_rng(0).permutation(len(x))[:50]
x, y = x[idx], y[idx]
rows = []
for k in (4, 6):
    for T in (1, 3, 5, 10, 20):
        enc = instahide.Encoder(k=k, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
        s = attacks.run_known_mixing(x, y, enc, T).summary()
        s.update(k=k, T=T); rows.append(s); print(json.dumps(s), flush=True)
with open(sys.argv[1] if len(sys.argv) > 1 else "privacy_table.json", "w") as f:
    json.dump(rows, f, indent=1)
