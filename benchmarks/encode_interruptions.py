"""Interrupts `instahide encode` at random moments (SIGKILL or SIGINT), resumes it each time,
and checks that every interrupted-then-resumed run ends byte-identical to an uninterrupted one
and that no file under a final name was ever incomplete. Prints the tally (docs/robustness.md).

    python benchmarks/encode_interruptions.py [--rounds 20] [--images 3000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("shard-")}


def encode_command(data: Path, out: Path, key: Path) -> list:
    return [sys.executable, "-m", "instahide", "encode", str(data), "--out", str(out), "--key-file", str(key),
            "--shard-size", "200", "--quiet"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if args.images < 200:
        parser.error(f"--images {args.images}: at least 200 (one shard; interruptions need several)")
    rng = np.random.default_rng()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, key = tmp / "data.npz", tmp / "secret.key"
        np.savez(data, images=rng.integers(0, 256, (args.images, 32, 32, 3), np.uint8),
                 labels=rng.integers(0, 10, args.images))
        start = time.monotonic()
        subprocess.run(encode_command(data, tmp / "full", key), check=True)
        full_seconds = time.monotonic() - start
        full = files(tmp / "full")
        tally = {"rounds": 0, "interrupted": 0, "identical_after_resume": 0, "incomplete_final_files": 0}
        for round_ in range(args.rounds):
            out = tmp / f"run{round_}"
            sig = random.choice([signal.SIGKILL, signal.SIGINT])
            process = subprocess.Popen(encode_command(data, out, key), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(random.uniform(0.05, 0.7) * full_seconds)  # mostly before the run ends
            process.send_signal(sig)
            process.wait(timeout=120)
            tally["rounds"] += 1
            tally["interrupted"] += process.returncode != 0
            if out.exists():  # a run killed before it made the folder left nothing
                tally["incomplete_final_files"] += sum(data != full.get(name) for name, data in files(out).items())
            subprocess.run(encode_command(data, out, key), check=True, stderr=subprocess.DEVNULL)
            tally["identical_after_resume"] += files(out) == full
        print(tally, f"(an uninterrupted run: {full_seconds:.1f} s, {len(full)} shards)")
        ok = tally["identical_after_resume"] == tally["rounds"] and tally["incomplete_final_files"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
