"""benchmarks/time_to_accuracy.py --resume: a row killed mid-run and resumed gives the curve of
the uninterrupted run (same key file, same seed: identical accuracies and losses)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA_DIR

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "time_to_accuracy.py"


def command(out: Path, key: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--methods", "inside4-abs", "--epochs", "4", "--widths", "8,16,16",
            "--limit", "1024", "--test-limit", "200", "--predict-repeats", "0", "--data", str(DATA_DIR),
            "--out", str(out), "--key-file", str(key), "--quiet", *extra]


def test_a_killed_row_resumes_to_the_uninterrupted_curve(tmp_path):
    pytest.importorskip("torch")
    if not (DATA_DIR / "cifar10-train.tar").exists():
        pytest.skip(f"no CIFAR-10 copy under {DATA_DIR}")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    key = tmp_path / "row.key"
    whole = tmp_path / "whole.json"
    subprocess.run(command(whole, key), check=True, env=env, capture_output=True, timeout=300)

    resumed = tmp_path / "resumed.json"
    run = subprocess.Popen(command(resumed, key, "--resume"), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "cache").rglob("checkpoint.pt")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)  # as a machine restart would, between epochs or in one
    run.wait()
    assert run.returncode == -signal.SIGKILL
    partial = json.loads(resumed.read_text())["methods"][0]
    assert 1 <= partial["epochs"] < 4
    again = subprocess.run(command(resumed, key, "--resume"), check=True, env=env, capture_output=True, text=True,
                           timeout=300)
    assert "resuming from" in again.stdout

    def curve(path):
        (entry,) = json.loads(path.read_text())["methods"]
        return entry, [(r["epoch"], r["train_loss"], r["test_accuracy"]) for r in entry["curve"]]

    (whole_entry, whole_curve), (resumed_entry, resumed_curve) = curve(whole), curve(resumed)
    assert resumed_curve == whole_curve and len(whole_curve) == 4
    assert resumed_entry["resumptions"] == 1 and "resumptions" not in whole_entry
    seconds = [r["seconds"] for r in resumed_entry["curve"]]
    assert seconds == sorted(seconds) and len(resumed_entry["load"]) == 4
    assert not list((tmp_path / "cache").rglob("checkpoint.pt"))  # removed once the row completed
