"""The `instahide` command line: every command's help, info, bench, demo, and `encode`'s
shards: equal to the Encoder API's output, resumable after SIGKILL or SIGINT with identical
final bytes, no half-written file under a final name, a clear full-disk error, no key in any
output."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import instahide
from instahide import cli, shards
from instahide.keys import row_order

COMMANDS = ["demo", "encode", "train", "bench", "attack", "info"]
PACKAGE_ROOT = str(Path(instahide.__file__).resolve().parents[1])  # src/ or site-packages


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"instahide {command}" in text.split("examples:")[1]


def test_info_reports_version_cpu_threads_and_cuda(capsys):
    assert cli.main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == instahide.__version__
    assert report["cpu_threads"] == instahide.get_num_threads() >= 1
    assert isinstance(report["cpu_features"], list) and isinstance(report["cuda_compiled"], bool)
    assert report["cuda_usable"] == (report["cuda_devices"] > 0)


def test_bench_measures_fused_against_reference_and_copy(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--images", "2048", "--batch", "256", "--seconds", "0.2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    fused, ref = report["results"]
    assert (fused["impl"], ref["impl"]) == ("fused_cpu", "numpy_reference")
    assert report["copy_gbps"] > 0 and 0 < fused["fraction_of_copy"]
    assert fused["mb_per_s"] == pytest.approx(fused["images_per_s"] * report["bytes_per_image"] / 1e6)
    assert ref["fused_is"] > 3  # the one-pass core against the per-term numpy specification
    assert "numpy_reference" in capsys.readouterr().out


def test_bench_on_cuda_without_a_device_says_so(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is usable here")
    assert cli.main(["bench", "--device", "cuda"]) == 1
    assert "no usable CUDA device" in capsys.readouterr().err


# --- encode -----------------------------------------------------------------------------

@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), labels=rng.integers(0, 5, 40))
    return path


def encode_args(dataset, out, key_file, *extra):
    return ["encode", str(dataset), "--out", str(out), "--key-file", str(key_file), "--shard-size", "16",
            "--epochs", "2", "--quiet", *extra]


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_encode_equals_the_encoder_api(dataset, tmp_path, capsys):
    key_file = tmp_path / "secret.key"
    assert cli.main(encode_args(dataset, tmp_path / "out", key_file, "--pad", "1", "--hflip")) == 0
    key = key_file.read_bytes()
    assert len(key) == 32 and key_file.stat().st_mode & 0o777 == 0o600
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    params = manifest["parameters"]
    assert manifest["complete"] and [s["count"] for s in manifest["shards"]] == [16, 16, 8] * 2
    with np.load(dataset) as f:
        images, labels = f["images"], f["labels"]
    encoder = instahide.Encoder(k=4, key=key, mean=params["mean"], std=params["std"], pad=1, hflip=True)
    for epoch in range(2):
        expected_x, expected_y = encoder.encode(images, labels, encoder.keys(40, epoch), rows=row_order(key, epoch, 40))
        got = [np.load(tmp_path / "out" / s["file"]) for s in manifest["shards"] if s["epoch"] == epoch]
        assert np.array_equal(np.concatenate([g["encodings"] for g in got]), expected_x)
        assert np.array_equal(np.concatenate([g["labels"] for g in got]), expected_y)
        assert set(got[0].files) == {"encodings", "labels"}  # no row ids: they would name the images
    for shard in manifest["shards"]:
        assert shards.sha256_file(tmp_path / "out" / shard["file"]) == shard["sha256"]
    captured = capsys.readouterr()
    assert "secret key" in captured.err  # the key file was created, and said so
    for text in (captured.out, captured.err, (tmp_path / "out" / "manifest.json").read_text()):
        assert key.hex() not in text and key.hex().upper() not in text


def test_encode_rerun_verifies_and_repairs(dataset, tmp_path, capsys):
    key_file, out = tmp_path / "secret.key", tmp_path / "out"
    assert cli.main(encode_args(dataset, out, key_file)) == 0
    before = files(out)
    (out / "shard-00001.npz").write_bytes(b"damaged")
    (out / "shard-00004.npz").unlink()
    assert cli.main(encode_args(dataset, out, key_file)) == 0
    assert files(out) == before
    assert "missing or altered" in capsys.readouterr().err


def test_encode_refuses_another_key_or_other_options(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(encode_args(dataset, out, tmp_path / "a.key")) == 0
    before = files(out)
    assert cli.main(encode_args(dataset, out, tmp_path / "b.key")) == 1
    assert "another secret key" in capsys.readouterr().err
    assert cli.main(encode_args(dataset, out, tmp_path / "a.key", "--k", "3")) == 1
    assert "different run: k, private_terms differ" in capsys.readouterr().err
    assert files(out) == before


def test_encode_refuses_a_second_concurrent_run(dataset, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a") as lock:  # as a running encode holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert cli.main(encode_args(dataset, out, tmp_path / "secret.key")) == 1
    assert "another instahide encode is writing" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_encode_without_key_file_says_it_cannot_resume(dataset, tmp_path, capsys):
    assert cli.main(["encode", str(dataset), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "cannot be resumed" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"]


def test_encode_inputs_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8))  # NCHW
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 12))
    args = ["encode", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main(args) == 1
    assert "give the labels" in capsys.readouterr().err
    assert cli.main(args + ["--labels", str(tmp_path / "y.npy"), "--mode", "cross", "--k", "4"]) == 0
    with np.load(tmp_path / "out" / "shard-00000.npz") as f:
        assert f["encodings"].shape == (12, 3, 8, 8) and f["labels"].shape == (12, 3)
        private_weight = f["labels"].sum(axis=1)  # public patches carry no label; dom 0.3 bounds the rest
        assert (private_weight >= 0.3 - 1e-6).all() and (private_weight < 1 - 1e-3).all()
    assert cli.main(["encode", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o2")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_encode_full_disk_gives_a_clear_error_and_resumes(dataset, tmp_path, monkeypatch, capsys):
    key_file, out = tmp_path / "secret.key", tmp_path / "out"
    assert cli.main(encode_args(dataset, tmp_path / "full", key_file)) == 0
    real_fsync, calls = os.fsync, []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) > 6:  # the manifest and the first shards fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(shards.os, "fsync", fsync_until_full)
    assert cli.main(encode_args(dataset, out, key_file)) == 1
    err = capsys.readouterr().err
    assert "no space left" in err and str(out) in err and "rerun" in err
    assert not list(out.glob(".*.tmp"))  # the failed write's temporary file is gone
    monkeypatch.setattr(shards.os, "fsync", real_fsync)
    assert cli.main(encode_args(dataset, out, key_file)) == 0
    assert files(out) == files(tmp_path / "full")


# Runs `instahide encode` with every fsync slowed down, so that a signal lands mid-run. SIGINT
# gets Python's default handler: a shell that starts the suite in the background ignores SIGINT,
# children inherit that, and Python then never raises KeyboardInterrupt.
SLOW_ENCODE = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
real_fsync = os.fsync
os.fsync = lambda fd: (time.sleep(0.4), real_fsync(fd))[1]
from instahide.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_encode_interrupted_then_resumed_equals_an_uninterrupted_run(dataset, tmp_path, sig):
    key_file, out = tmp_path / "secret.key", tmp_path / "out"
    assert cli.main(encode_args(dataset, tmp_path / "full", key_file)) == 0
    key = key_file.read_bytes()
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    process = subprocess.Popen([sys.executable, "-c", SLOW_ENCODE, *encode_args(dataset, out, key_file)[:-1]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (out / "shard-00000.npz").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), stderr
    full = files(tmp_path / "full")
    for name, data in files(out).items():  # whatever carries a final name is complete
        if name.startswith("shard-"):
            assert data == full[name]
        elif name not in ("manifest.json", ".lock"):
            assert name.startswith(".") and name.endswith(".tmp")
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    if sig == signal.SIGINT:
        assert "interrupted" in stderr and "resume" in stderr
        assert not list(out.glob(".*.tmp"))
    assert key.hex() not in stdout + stderr
    assert cli.main(encode_args(dataset, out, key_file)) == 0
    assert files(out) == full


# --- demo -------------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(["dark", "bright"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(60 + 120 * label + rng.integers(-40, 40, (20 + i % 3, 24, 3)), 0, 255)  # sizes vary
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    return tmp_path / "images"


def test_demo_on_an_image_folder(image_folder, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from PIL import Image

    out = tmp_path / "demo"
    assert cli.main(["demo", "--data", str(image_folder), "--size", "16", "--seconds", "3", "--test-size", "10",
                     "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [r["mode"] for r in summary["results"]] == ["vanilla", "instahide", "cross"]
    assert (summary["train_images"], summary["test_images"], summary["classes"]) == (30, 10, 2)
    assert all(0 <= r["test_accuracy"] <= 1 and r["batches"] >= 1 for r in summary["results"])
    assert all(r["seconds"] < 3 for r in summary["results"])  # the budget is shared by the modes
    with Image.open(out / "encodings.png") as grid:
        assert grid.size[1] == 5 * (16 * 4 + 2)  # originals, then encodings and |encodings| of two modes
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "cross" in printed


def test_demo_on_digits_learns(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "demo"
    # a fixed amount of work (3 epochs; the time budget is far above it), whatever the machine's load
    assert cli.main(["demo", "--seconds", "300", "--epochs", "3", "--modes", "vanilla", "--train-size", "600",
                     "--test-size", "200", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["classes"] == 10 and summary["results"][0]["epochs"] == 3
    assert summary["results"][0]["test_accuracy"] > 0.5  # chance: 0.1


def test_demo_rejects_unknown_modes(capsys):
    pytest.importorskip("torch")
    assert cli.main(["demo", "--modes", "vanilla,bogus", "--quiet"]) == 1
    assert "--modes" in capsys.readouterr().err
