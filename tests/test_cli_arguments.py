"""Command-line options are checked before any work: a bad value fails fast with the option's
name in the message, and an output path that cannot be written fails before the attack runs."""

import numpy as np
import pytest

from instahide import cli

# (options, the option named in the error): at or just past each bound of `instahide attack`
ATTACK_BAD = [
    (["--images", "1"], "--images"), (["--images", "10001"], "--images"),
    (["--k", "1"], "--k"), (["--k", "17"], "--k"),
    (["-T", "0"], "-T"), (["-T", "1001"], "-T"),
    (["--k", "6", "--cross", "0"], "--cross"), (["--k", "6", "--cross", "6"], "--cross"),
    (["--pad", "-1"], "--pad"), (["--pad", "17"], "--pad"),
    (["--rounds", "-1"], "--rounds"), (["--rounds", "21"], "--rounds"),
    (["--min-keypoints", "-1"], "--min-keypoints"),
    (["--train-seconds", "0"], "--train-seconds"),
    (["--tier", "1", "--k", "6", "--cross", "2", "--augment", "fast"], "--tier 1 --cross"),
    (["--tier", "1", "--k", "6", "--cross", "2", "--hflip"], "--tier 1 --cross"),
]


@pytest.fixture
def no_attack_runs(monkeypatch):
    """Any attack or data loading fails the test: the checks must come first."""
    from instahide import attacks, datasets

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    for module, name in ((attacks, "run_encodings_only"), (attacks, "run_known_mixing"), (attacks, "challenge_pool"),
                         (datasets, "load_cifar10")):
        monkeypatch.setattr(module, name, must_not_run)


@pytest.mark.parametrize(("options", "named"), ATTACK_BAD)
def test_attack_rejects_each_bad_option_by_name(options, named, capsys, no_attack_runs):
    tier = [] if "--tier" in options else ["--tier", "2"]
    assert cli.main(["attack", *tier, *options]) == 1
    error = capsys.readouterr().err
    assert named in error and "instahide attack: error:" in error


def test_attack_refuses_what_would_not_fit_in_memory(capsys):
    assert cli.main(["attack", "--tier", "2", "--images", "10000", "-T", "1000"]) == 1
    error = capsys.readouterr().err
    assert "GiB" in error and "--images 10000 x -T 1000" in error


@pytest.mark.parametrize("option", ["--json", "--grid", "--key-file"])
def test_attack_output_in_a_missing_folder_fails_before_any_work(option, tmp_path, capsys, no_attack_runs):
    assert cli.main(["attack", "--tier", "2", option, str(tmp_path / "missing" / "out")]) == 1
    assert option in capsys.readouterr().err


def test_attack_bounds_themselves_pass_the_check():
    from instahide.cli import attack

    parser, *_ = cli.build_parser()
    for options in (["--images", "2", "-T", "1", "--k", "2"], ["--k", "16", "--cross", "15", "--pad", "16"],
                    ["--rounds", "0"], ["--rounds", "20", "--augment", "paper"]):
        args = parser.parse_args(["attack", "--tier", "2", *options])
        attack.check_arguments(args)  # raises on a bad value


def test_attack_augment_follows_the_training_recipes():
    from instahide.cli import attack

    parser, *_ = cli.build_parser()
    assert attack._augmentation(parser.parse_args(["attack"])) == (0, False)
    assert attack._augmentation(parser.parse_args(["attack", "--augment", "paper"])) == (4, True)
    assert attack._augmentation(parser.parse_args(["attack", "--augment", "fast"])) == (2, True)
    assert attack._augmentation(parser.parse_args(["attack", "--augment", "fast", "--no-hflip"])) == (2, False)
    assert attack._augmentation(parser.parse_args(["attack", "--pad", "3"])) == (3, False)


def test_attack_key_file_is_written_then_reused(tmp_path):
    from instahide.cli import attack

    parser, *_ = cli.build_parser()
    path = tmp_path / "run.key"
    first = attack._attack_encoder(parser.parse_args(["attack", "--tier", "0", "--key-file", str(path)]))
    assert path.exists() and path.stat().st_mode & 0o077 == 0
    again = attack._attack_encoder(parser.parse_args(["attack", "--tier", "0", "--key-file", str(path)]))
    assert first.key == again.key == path.read_bytes()


def test_train_help_prints_no_default_for_switches(capsys):
    pytest.importorskip("torch")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "resolved from here" in text or "$INSTAHIDE_DATA" in text


TRAIN_BAD = [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--limit", "0"], "--limit"),
    (["--test-limit", "0"], "--test-limit"), (["--lr", "0"], "--lr"), (["--momentum", "1"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--workers", "-1"], "--workers"), (["--k", "1"], "--k"),
    (["--k", "17"], "--k"), (["--upper", "0"], "--upper"),
    (["--mode", "cross", "--k", "6", "--private-terms", "6"], "--private-terms"),
    (["--mode", "cross", "--dom", "1.5"], "--dom"),
    (["--recipe", "fast", "--epochs", "0"], "--epochs"),
]


@pytest.mark.parametrize(("options", "named"), TRAIN_BAD)
def test_train_rejects_each_bad_option_by_name(options, named, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from instahide.cli import train

    def must_not_run(*args, **kwargs):
        raise AssertionError("training data was read before the options were checked")

    monkeypatch.setattr(train, "load_split", must_not_run)
    assert cli.main(["train", "--out", str(tmp_path / "run"), *options]) == 1
    assert named in capsys.readouterr().err


def test_train_refuses_sets_that_cannot_be_decoded_into_memory(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from PIL import Image

    from instahide.cli import _checks, train
    from instahide.datasets import split_size

    for split, count in (("train", 6), ("test", 2)):
        for i in range(count):
            (tmp_path / split / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(tmp_path / split / f"class{i % 2}" / f"{i}.png")
    assert split_size(tmp_path / "train") == (6, (20, 30, 3))
    assert split_size(tmp_path / "nonesuch") is None
    # 8 images of 1,800 bytes, held twice while decoding: refused below 0.9 of what is available
    monkeypatch.setattr(train, "available_memory", lambda: 2 * 8 * 1800)
    monkeypatch.setattr(train, "load_split", lambda *a, **k: pytest.fail("data decoded before the memory check"))
    options = ["train", "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out",
               str(tmp_path / "run")]
    assert cli.main(options) == 1
    message = capsys.readouterr().err
    assert "--train" in message and "8 images" in message and "GiB are available" in message
    assert _checks.available_memory() is None or _checks.available_memory() > 0


def test_channel_statistics_match_numpy_in_chunks(rng):
    from instahide.cli.train import channel_statistics

    images = rng.integers(0, 256, (1000, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_statistics(images, chunk=64)
    values = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-9)


def test_train_refuses_an_output_it_cannot_write(tmp_path, capsys):
    pytest.importorskip("torch")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train", "--out", str(blocker / "run"), "--epochs", "1"]) == 1
    assert "--out" in capsys.readouterr().err


ENCODE_BAD = [
    (["--k", "1"], "--k"), (["--k", "17"], "--k"), (["--upper", "0"], "--upper"), (["--pad", "-1"], "--pad"),
    (["--pad", "65"], "--pad"), (["--size", "0"], "--size"), (["--epochs", "0"], "--epochs"),
    (["--shard-size", "0"], "--shard-size"), (["--threads", "-1"], "--threads"),
    (["--mode", "cross", "--k", "6", "--private-terms", "6"], "--private-terms"),
    (["--mode", "cross", "--dom", "-0.1"], "--dom"),
]


@pytest.mark.parametrize(("options", "named"), ENCODE_BAD)
def test_encode_rejects_each_bad_option_by_name(options, named, tmp_path, capsys, monkeypatch):
    from instahide import datasets

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: pytest.fail("data read before the options were checked"))
    assert cli.main(["encode", "digits", "--out", str(tmp_path / "out"), *options]) == 1
    assert named in capsys.readouterr().err


def test_encode_refuses_unwritable_outputs(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["encode", "digits", "--out", str(blocker / "out")]) == 1
    assert "--out" in capsys.readouterr().err
    assert cli.main(["encode", "digits", "--out", str(tmp_path / "out"), "--key-file", str(tmp_path / "no" / "k")]) == 1
    assert "--key-file" in capsys.readouterr().err


BENCH_BAD = [(["--batch", "0"], "--batch"), (["--images", "10", "--batch", "11"], "--images"), (["--k", "1"], "--k"),
             (["--seconds", "0"], "--seconds"), (["--threads", "-1"], "--threads")]


@pytest.mark.parametrize(("options", "named"), BENCH_BAD)
def test_bench_rejects_each_bad_option_by_name(options, named, tmp_path, capsys):
    assert cli.main(["bench", *options]) == 1
    assert named in capsys.readouterr().err


def test_bench_output_in_a_missing_folder_fails_before_timing(tmp_path, capsys, monkeypatch):
    from instahide.cli import bench

    monkeypatch.setattr(bench, "run", lambda **k: pytest.fail("timed before the output path was checked"))
    assert cli.main(["bench", "--json", str(tmp_path / "missing" / "b.json")]) == 1
    assert "--json" in capsys.readouterr().err


DEMO_BAD = [(["--seconds", "0"], "--seconds"), (["--k", "1"], "--k"), (["--cross-k", "17"], "--cross-k"),
            (["--private-terms", "6"], "--private-terms"), (["--train-size", "0"], "--train-size"),
            (["--batch-size", "0"], "--batch-size"), (["--epochs", "0"], "--epochs"), (["--lr", "0"], "--lr")]


@pytest.mark.parametrize(("options", "named"), DEMO_BAD)
def test_demo_rejects_each_bad_option_by_name(options, named, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from instahide.cli import demo

    monkeypatch.setattr(demo, "load_data", lambda *a, **k: pytest.fail("data read before the options were checked"))
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), *options]) == 1
    assert named in capsys.readouterr().err


BENCHMARK_BAD = [
    ("time_to_accuracy.py", ["--methods", "plain", "--epochs", "0"], "--epochs"),
    ("time_to_accuracy.py", ["--methods", "nonesuch"], "--methods"),
    ("time_to_accuracy.py", ["--methods", "plain", "--epochs", "1", "--widths", "64,256"], "--widths"),
    ("time_to_accuracy.py", ["--methods", "plain", "--epochs", "1", "--out", "/nonexistent-folder/x.json"], "--out"),
    ("time_to_accuracy.py", ["--methods", "plain,mixup4", "--epochs", "1", "--key-file", "k"], "--key-file"),
    ("time_to_accuracy.py", ["--methods", "dpsgd", "--epochs", "1", "--resume"], "--resume"),
    ("privacy_challenge.py", ["-T", "0"], "-T"),
    ("privacy_challenge.py", ["--keys", "0"], "--keys"),
    ("privacy_challenge.py", ["--settings", "inside k=5"], "--settings"),
    ("privacy_challenge.py", ["--augmentations", "rotate"], "--augmentations"),
    ("privacy_challenge.py", ["--out", "/nonexistent-folder/x.json"], "--out"),
    ("privacy_challenge.py", ["--windows-per-image", "0"], "--windows-per-image"),
    ("privacy_challenge.py", ["--pool", "crops"], "--pool"),
    ("privacy_challenge.py", ["--min-keypoints", "-1"], "--min-keypoints"),
    ("privacy_table.py", ["/nonexistent-folder/x.json"], "out"),
    ("sift_patches.py", ["--images", "0"], "--images"),
    ("encode_throughput.py", ["--k", "1"], "--k"),
    ("compare/run.py", ["--batch-size", "0"], "--batch-size"),
    ("compare/run.py", ["--rounds", "0"], "--rounds"),
    ("compare/run.py", ["--max-grad-norm", "0"], "--max-grad-norm"),
    ("compare/run.py", ["--synthetic", "16", "--batch-size", "32"], "--synthetic"),
    ("compare/run.py", ["--out", "/nonexistent-folder/x"], "--out"),
    ("ab_builds.py", ["/nonexistent/_core.so"], "builds"),
    ("ab_builds.py", ["x.so", "--rounds", "0"], "--rounds"),
    ("gpu_profile_target.py", ["--calls", "0"], "--calls"),
    ("gpu_throughput.py", ["--rounds", "0"], "--rounds"),
    ("gpu_throughput.py", ["--json", "/nonexistent-folder/x.json"], "--json"),
    ("airbench94.py", ["--limit", "100"], "--limit"),
    ("plot_training.py", ["/nonexistent-folder/x.png", "a=b.csv"], "out"),
    ("plot_training.py", ["x.png", "a=/nonexistent.csv"], "runs"),
    ("encode_interruptions.py", ["--rounds", "0"], "--rounds"),
    ("airbench94.py", ["--out", "/nonexistent-folder/x.json"], "--out"),
    ("recipe_ablation.py", ["--variants", "nonesuch"], "--variants"),
    ("recipe_ablation.py", ["--epochs", "0"], "--epochs"),
    ("encode_throughput.py", ["--repeats", "0"], "--repeats"),
    ("encode_throughput.py", ["--json", "/nonexistent-folder/x.json"], "--json"),
]


@pytest.mark.parametrize(("script", "options", "named"), BENCHMARK_BAD)
def test_benchmark_scripts_check_their_options_first(script, options, named):
    """The scripts users are told to run (docs/benchmarks.md) fail at parsing, exit status 2."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    result = subprocess.run([sys.executable, str(benchmarks / script), *options], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(("environment", "argument", "named"), [({"EPOCHS": "0"}, "runs/x", "EPOCHS"),
                                                                 ({"EPOCHS": "ten"}, "runs/x", "EPOCHS"),
                                                                 ({}, "/proc/no-such-folder", "OUT_DIR")])
def test_reproduce_training_checks_its_settings_first(environment, argument, named, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_training.sh"
    result = subprocess.run(["bash", str(script), argument if argument.startswith("/") else str(tmp_path / argument)],
                            capture_output=True, text=True, env={**os.environ, **environment}, timeout=60)
    assert result.returncode == 2 and named in result.stderr
