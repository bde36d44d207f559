"""How much the headline Tier 2 row of docs/privacy.md (inside k=4, T=50, 100 CIFAR-10 test
images, hand-made similarity) varies from key to key: the same attack on two more keys.

    python benchmarks/privacy_key_spread.py [OUT.json]    (about 5 minutes on 2 cores)
"""
import hashlib
import json
import sys

import numpy as np
import torch

import instahide
from instahide import attacks
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, load_cifar10

torch.set_num_threads(1)  # see privacy_table.py
x, y = load_cifar10("test")
keep = np.random.default_rng(0).permutation(len(x))[:100]
rows = []
for name in ("second key", "third key"):
    encoder = instahide.Encoder(k=4, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                key=hashlib.sha256(name.encode()).digest())
    row = dict(key=name, setting="inside k=4", T=50, images=100, similarity="handmade",
               **attacks.run_encodings_only(x[keep], y[keep], encoder, 50).summary())
    rows.append(row)
    print(json.dumps(row), flush=True)
with open(sys.argv[1] if len(sys.argv) > 1 else "privacy_key_spread.json", "w") as f:
    json.dump(rows, f, indent=1)
