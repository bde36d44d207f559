"""The fast training recipe (instahide.torch.recipe, `instahide train --recipe fast`): its parts, and a
smoke run on scikit-learn's digits that checks learning happens (no accuracy target)."""

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import instahide  # noqa: E402
import instahide.torch  # noqa: E402
from instahide import cli  # noqa: E402
from instahide.torch.models import FastNet  # noqa: E402
from instahide.torch.recipe import FastRecipe, learning_rate_factor, plain_inputs, smoothed, train_fast  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_schedule_rises_to_the_peak_then_falls_to_zero():
    recipe = FastRecipe(warmup=0.25, start=0.2)
    factors = [learning_rate_factor(step, 100, recipe) for step in range(101)]
    assert factors[0] == pytest.approx(0.2) and factors[25] == pytest.approx(1.0) and factors[100] == 0.0
    assert max(factors) == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:25], factors[1:26], strict=True))  # rising
    assert all(a > b for a, b in zip(factors[25:100], factors[26:], strict=True))  # falling


def test_label_smoothing_keeps_mixed_labels_distributions():
    targets = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = smoothed(targets, 0.2)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(out[0], torch.tensor([0.53, 0.37, 0.05, 0.05]))
    torch.testing.assert_close(smoothed(targets, 0.0), targets)


def test_fast_net_shapes_for_cifar_and_small_images():
    for size, channels in ((32, 3), (16, 1)):
        net = FastNet(num_classes=7, channels=channels, widths=(8, 16, 16)).eval()
        assert net(torch.randn(5, channels, size, size)).shape == (5, 7)
        assert not net.whiten.weight.requires_grad


def test_input_transforms_ignore_the_mask_and_the_contrast():
    """|x| input: random sign flips (any mask) change nothing; RMS input: neither does a scale."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    signs = torch.where(torch.rand_like(x) < 0.5, -1.0, 1.0)
    net = FastNet(widths=(8, 16, 16), abs_input=True, rms_input=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x * signs), net(x))
        torch.testing.assert_close(net(3.0 * x), net(x), rtol=1e-4, atol=1e-5)
    signed = FastNet(widths=(8, 16, 16)).eval()
    with torch.no_grad():
        assert not torch.allclose(signed(x * signs), signed(x))


def test_whitening_layer_whitens_the_patches_it_was_fitted_to():
    torch.manual_seed(1)
    mixing = torch.randn(12, 12)
    # correlated 2x2 patches: random fields smoothed by a random channel mix
    x = torch.nn.functional.avg_pool2d(torch.randn(64, 3, 34, 34), 3, stride=1)
    x = (x.permute(0, 2, 3, 1) @ mixing[:3, :3]).permute(0, 3, 1, 2)
    net = FastNet(widths=(8, 16, 16), abs_input=False)
    net.init_whitening(x, eps=1e-9)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, net.whiten.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = torch.cov(out.T)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_test_inputs_are_the_normalized_plain_images(rng):
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    encoder = instahide.Encoder(k=4, mean=MEAN, std=STD, pad=2, hflip=True, layout="NHWC")
    expected = ((images / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(plain_inputs(images, encoder), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    from instahide.datasets import load_digits

    images, labels = load_digits(16)
    order = np.random.default_rng(0).permutation(len(images))
    return images[order[:1200]], labels[order[:1200]], images[order[1200:]], labels[order[1200:]]


TINY = FastRecipe(widths=(16, 32, 32), epochs=3, batch_size=64, lr=0.2, whiten_samples=500, bf16=False)


def test_training_on_encodings_learns(digits):
    """The smoke run: InstaHide inside k = 4 on digits, |x| input, three epochs: the loss falls
    and the plain test images are classified far above chance (10%)."""
    train_x, train_y, test_x, test_y = digits
    encoder = instahide.Encoder(k=4, mean=(0.5,) * 3, std=(0.25,) * 3, pad=2, hflip=False, layout="NHWC")
    _, rows = train_fast(train_x, train_y, encoder, test_x, test_y, TINY.replace(rms_input=True), seed=0)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_accuracy"] > 0.3
    assert all(b["seconds"] > a["seconds"] for a, b in zip(rows, rows[1:], strict=False))


def test_same_key_and_seed_give_the_same_run_and_epochs_are_rekeyed(digits):
    train_x, train_y, test_x, test_y = digits
    key = instahide.new_secret_key()
    recipe = TINY.replace(epochs=2)

    def run(key):
        encoder = instahide.Encoder(k=4, mean=(0.5,) * 3, std=(0.25,) * 3, layout="NHWC", key=key)
        model, rows = train_fast(train_x[:256], train_y[:256], encoder, test_x[:100], test_y[:100], recipe, seed=3)
        return [(row["train_loss"], row["test_accuracy"]) for row in rows], model.head.weight

    first, weights = run(key)
    again, weights_again = run(key)
    assert first == again and torch.equal(weights, weights_again)
    other, _ = run(instahide.new_secret_key())
    assert other != first
    # the loader re-keys every epoch: epoch 0 and epoch 1 encode the same rows differently
    encoder = instahide.Encoder(k=4, mean=(0.5,) * 3, std=(0.25,) * 3, layout="NHWC", key=key)
    loader = instahide.torch.InstaHideLoader(train_x[:64], train_y[:64], encoder, batch_size=64, shuffle=False)
    (x0, _), (x1, _) = next(iter(loader)), next(iter(loader))
    assert not torch.equal(x0, x1)


def test_a_run_killed_and_resumed_from_its_checkpoint_is_the_uninterrupted_run(digits, tmp_path):
    train_x, train_y, test_x, test_y = digits
    key, recipe = instahide.new_secret_key(), TINY.replace(epochs=3)

    def run(checkpoint=None, on_epoch=None, key=key, recipe=recipe):
        encoder = instahide.Encoder(k=4, mean=(0.5,) * 3, std=(0.25,) * 3, pad=2, hflip=True, layout="NHWC", key=key)
        return train_fast(train_x[:256], train_y[:256], encoder, test_x[:100], test_y[:100], recipe, seed=3,
                          checkpoint=checkpoint, on_epoch=on_epoch)

    model, rows = run()
    checkpoint = tmp_path / "run.pt"

    class Killed(Exception):
        pass

    def kill_at_epoch_2(row):
        if row["epoch"] == 2:  # after epoch 2's row, before its checkpoint: epoch 2 is trained again
            raise Killed

    with pytest.raises(Killed):
        run(checkpoint, kill_at_epoch_2)
    seen = []
    resumed_model, resumed = run(checkpoint, seen.append)
    assert [r["epoch"] for r in seen] == [2, 3]  # epoch 1 came from the checkpoint
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip
    assert torch.equal(resumed_model.head.weight, model.head.weight)
    assert resumed[0]["seconds"] < resumed[1]["seconds"] < resumed[2]["seconds"]  # across the resumption
    for other in (dict(key=instahide.new_secret_key()), dict(recipe=recipe.replace(lr=0.1))):
        with pytest.raises(ValueError, match="other settings, data or key"):
            run(checkpoint, **other)
    assert b"".join(checkpoint.read_bytes().split(key)) == checkpoint.read_bytes()  # the key is not in it


def test_airbench_ingredients_do_what_they_say(digits):
    train_x, train_y, test_x, test_y = digits
    key = instahide.new_secret_key()

    def run(**changes):
        encoder = instahide.Encoder(k=4, mean=(0.5,) * 3, std=(0.25,) * 3, layout="NHWC", key=key)
        return train_fast(train_x[:256], train_y[:256], encoder, test_x[:100], test_y[:100],
                          TINY.replace(epochs=2, ema=0.0, **changes), seed=3)

    base_model, base = run()
    model, _ = run(dirac_init=True, bn_frozen_scale=True, bn_bias_lr=64.0, bn_momentum=0.4, whiten_bias_epochs=0)
    norms = [m for m in model.groups.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)  # frozen scales
    assert all(m.momentum == 0.4 for m in norms)
    assert torch.equal(model.whiten.bias, torch.zeros_like(model.whiten.bias))  # never trained
    assert not torch.equal(base_model.whiten.bias, torch.zeros_like(base_model.whiten.bias))
    fresh = FastNet(10, 3, (16, 32, 32))
    from instahide.torch.recipe import _apply_ingredients

    _apply_ingredients(fresh, TINY.replace(dirac_init=True))
    first = fresh.groups[0][0].weight  # its first in-channels filters pass their channel through
    assert torch.equal(first[:, :, 1, 1], torch.eye(*first.shape[:2])) and not first[:, :, 0].any()
    # lookahead and the uncentred whitening change the run; multi-crop TTA changes only the scoring
    for changes in (dict(lookahead=True), dict(whiten_uncentred=True)):
        _, rows = run(**changes)
        assert [r["train_loss"] for r in rows] != [r["train_loss"] for r in base]
    _, rows = run(multi_crop_tta=True)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in base]
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)


def test_train_command_with_the_fast_recipe(tmp_path, digits, capsys):
    from PIL import Image

    train_x, train_y, _, _ = digits
    for i, (image, label) in enumerate(zip(train_x[:300], train_y[:300], strict=True)):
        (tmp_path / "images" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "images" / str(label) / f"{i}.png")
    out = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--mode", "instahide", "--train", str(tmp_path / "images"),
                     "--test", str(tmp_path / "images"), "--epochs", "2", "--batch-size", "32", "--width", "cpu",
                     "--device", "cpu", "--out", str(out), "--quiet", "--seed", "0"]) == 0
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"] and all(np.isfinite(float(r["train_loss"])) for r in rows)
    state = torch.load(out / "model.pt", weights_only=False)
    assert state["recipe"]["abs_input"] and state["recipe"]["epochs"] == 2
    assert cli.main(["train", "--recipe", "fast", "--train", str(tmp_path / "images"), "--resume", "--out",
                     str(out), "--quiet"]) == 1
    assert "--resume" in capsys.readouterr().err
