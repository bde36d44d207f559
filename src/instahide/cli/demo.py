"""`instahide demo`: the main job on data that ships inside pip packages, so it needs no
download and no files: scikit-learn's handwritten digits (upscaled) as the private set,
scikit-image's bundled photos as the public pool. It encodes, trains the same small CNN
plainly and on InstaHide encodings (inside-dataset and cross-dataset) for a time budget,
prints the test accuracy of each and writes a PNG of originals beside their encodings.
`--data cifar10` or `--data FOLDER` runs it on CIFAR-10 or on an image folder. Needs torch."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets import CIFAR10_MEAN, CIFAR10_STD, bundled_photos, load_cifar10, load_digits, load_image_folder
from ..encoder import Encoder
from ..pool import PublicPool
from ..torch import InstaHideLoader, soft_cross_entropy
from ..torch.models import SmallCNN
from ._checks import need, writable_folder
from .train import evaluate

MODES = ("vanilla", "instahide", "cross")


class AbsInput(torch.nn.Module):
    """Runs `model` on |x|. The sign mask is independent of the image, so |encoding| carries
    everything the encoding does; a small model learns from it in seconds where learning the
    sign invariance itself takes many epochs. Test images (plain) go through |x| as well."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.abs())


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits (scikit-learn's, upscaled), cifar10 (from $INSTAHIDE_DATA or ../shared/data), "
                             "or a folder of class subfolders of images")
    parser.add_argument("--seconds", type=float, default=60.0, help="training time for all modes together")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    parser.add_argument("--k", type=int, default=4, help="inside mode: images mixed per encoding")
    parser.add_argument("--cross-k", type=int, default=6, help="cross mode: terms per encoding (the paper: 6)")
    parser.add_argument("--private-terms", type=int, default=2, help="cross mode: private terms (the rest: photos)")
    parser.add_argument("--size", type=int, default=None,
                        help="images are size x size pixels (default: 16 for the 8x8 digits, else 32)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images (default: all of digits or a folder, 10000 of CIFAR-10)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test images (default: a quarter of digits or a folder, 2000 of CIFAR-10)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="stop each mode after this many epochs, even within the time budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, cosine-decayed over the budget")
    parser.add_argument("--width", type=int, default=16, help="channels of the CNN's first block")
    parser.add_argument("--raw-input", dest="abs_input", action="store_false",
                        help="InstaHide models read the signed encodings, not |encoding| (learns far slower)")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the train/test split and the model's initial weights; the InstaHide keys stay "
                             "secret (fresh from the OS every run)")
    parser.add_argument("--out", default="instahide-demo", help="folder for encodings.png and results.json")
    parser.add_argument("--quiet", action="store_true", help="only the results table")


def load_data(args):
    """(train images, train labels, test images, test labels, description, augmentation)."""
    rng = np.random.default_rng(args.seed)
    if args.size is None:
        args.size = 16 if args.data == "digits" else 32
    if args.data == "cifar10":
        train_x, train_y = load_cifar10("train")
        test_x, test_y = load_cifar10("test")
        if args.size != 32:
            raise ValueError("CIFAR-10 images are 32x32: leave --size at 32")
        train_keep = rng.permutation(len(train_x))[:args.train_size or 10_000]
        test_keep = rng.permutation(len(test_x))[:args.test_size or 2_000]
        return (train_x[train_keep], train_y[train_keep], test_x[test_keep], test_y[test_keep],
                "CIFAR-10 (JPEG copy)", dict(pad=4, hflip=True))
    if args.data == "digits":
        images, labels = load_digits(args.size)
        description, augment = f"scikit-learn digits, 8x8 upscaled to {args.size}x{args.size}", dict(pad=2)
    else:
        images, labels, _ = load_image_folder(args.data, size=args.size)
        description, augment = f"image folder {args.data}", dict(pad=args.size // 8, hflip=True)
    order = rng.permutation(len(images))
    test_count = args.test_size or len(images) // 4
    if test_count >= len(images):
        raise ValueError(f"--test-size {test_count} leaves no training images of {len(images)}")
    test, train = order[:test_count], order[test_count:]
    if args.train_size:
        train = train[:args.train_size]
    return images[train], labels[train], images[test], labels[test], description, augment


def make_encoders(args, mean, std, augment, modes) -> dict:
    """One encoder per mode, each with a fresh secret key from the OS."""
    options = dict(mean=mean, std=std, layout="NHWC", **augment)
    encoders = {}
    if "vanilla" in modes:  # one term, no mask: plain (augmented, normalized) images
        encoders["vanilla"] = Encoder(k=1, sign="none", **options)
    if "instahide" in modes:
        encoders["instahide"] = Encoder(k=args.k, **options)
    if "cross" in modes:
        # public patches of size x size from the photos, shrunk so that patches show whole objects
        pool = PublicPool.from_images(bundled_photos(), short_side=3 * args.size, progress=False)
        encoders["cross"] = Encoder(k=args.cross_k, private_terms=args.private_terms, public=pool,
                                    patch_size=args.size, dom=0.3, **options)
    return encoders


def fit(model, loader, seconds: float, lr: float, say, max_epochs: float | None = None) -> dict:
    """SGD (momentum 0.9, weight decay 5e-4) for `seconds` of wall time or `max_epochs`,
    whichever ends first, the learning rate cosine-decayed over the progress; stops between
    batches."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    started, epochs, batches, last_said = time.perf_counter(), 0, 0, 0.0  # epochs: complete ones
    max_batches = math.inf if max_epochs is None else max(1, round(max_epochs * len(loader)))
    done = False
    while not done:
        model.train()
        total, count = 0.0, 0
        for x, y in loader:  # one epoch, freshly keyed
            progress = max((time.perf_counter() - started) / seconds, batches / max_batches)
            done = progress >= 1
            if done:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
            loss = soft_cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count, batches = total + loss.item(), count + 1, batches + 1
        else:
            epochs += 1
            now = time.perf_counter() - started
            if now - last_said >= 5:
                say(f"  epoch {epochs}: train loss {total / max(count, 1):.3f}, {now:.0f} of {seconds:.0f} s")
                last_said = now
    return {"epochs": round(batches / max(len(loader), 1), 1), "batches": batches,
            "seconds": time.perf_counter() - started}


def run(args) -> dict:
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise ValueError(f"--modes takes {', '.join(MODES)}; got {args.modes!r}")
    need(args.seconds > 0, "--seconds", args.seconds, "above 0")
    need(2 <= args.k <= 16, "--k", args.k, "2 to 16")
    need(2 <= args.cross_k <= 16, "--cross-k", args.cross_k, "2 to 16")
    need(1 <= args.private_terms < args.cross_k, "--private-terms", args.private_terms,
         f"1 to --cross-k - 1 = {args.cross_k - 1}")
    for option, value in (("--size", args.size), ("--train-size", args.train_size), ("--test-size", args.test_size),
                          ("--batch-size", args.batch_size), ("--width", args.width)):
        need(value is None or value >= 1, option, value, "at least 1")
    need(args.epochs is None or args.epochs > 0, "--epochs", args.epochs, "above 0")
    need(args.lr > 0, "--lr", args.lr, "above 0")
    writable_folder("--out", args.out)
    wall = time.perf_counter()
    say(f"loading {args.data} ...")
    train_x, train_y, test_x, test_y, description, augment = load_data(args)
    classes = int(max(train_y.max(), test_y.max())) + 1
    if args.data == "cifar10":
        mean, std = np.asarray(CIFAR10_MEAN, np.float32), np.asarray(CIFAR10_STD, np.float32)
    else:
        values = train_x.reshape(-1, 3) / 255.0
        mean, std = values.mean(axis=0), np.maximum(values.std(axis=0), 1e-3)
    say(f"{description}: {len(train_x)} training and {len(test_x)} test images, {classes} classes")
    encoders = make_encoders(args, mean, std, augment, modes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = out / "encodings.png"
    save_grid(grid, train_x, train_y, encoders)
    say(f"wrote {grid}: originals beside their encodings")

    results = []
    for mode, encoder in encoders.items():
        budget = args.seconds / len(encoders)
        terms = "1 (plain)" if mode == "vanilla" else (
            f"{encoder.k} ({encoder.private_terms} private + {encoder.k - encoder.private_terms} photo patches)"
            if mode == "cross" else f"{encoder.k}")
        say(f"training {mode} (k = {terms}) for {budget:.0f} s ...")
        torch.manual_seed(args.seed)  # the same initial weights for every mode
        model: torch.nn.Module = SmallCNN(num_classes=classes, channels=3, width=args.width)
        if mode != "vanilla" and args.abs_input:
            model = AbsInput(model)
        loader = InstaHideLoader(train_x, train_y, encoder, batch_size=args.batch_size, drop_last=len(train_x) >
                                 args.batch_size)
        trained = fit(model, loader, budget, args.lr, say, args.epochs)
        _, accuracy = evaluate(model, test_x, test_y, mean, std, "cpu")
        results.append({"mode": mode, "k": terms, "test_accuracy": accuracy, **trained})
    summary = {"data": description, "train_images": len(train_x), "test_images": len(test_x), "classes": classes,
               "results": results, "grid": str(grid), "wall_seconds": time.perf_counter() - wall}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{description}: {len(train_x)} train / {len(test_x)} test images, chance {1 / classes:.0%}")
    print(f"{'mode':<11}{'k':<32}{'test accuracy':>14}{'epochs':>8}{'seconds':>9}")
    for r in results:
        print(f"{r['mode']:<11}{r['k']:<32}{r['test_accuracy']:>14.1%}{r['epochs']:>8.1f}{r['seconds']:>9.1f}")
    print(f"\n{grid}: originals beside their encodings; total {summary['wall_seconds']:.0f} s. InstaHide hides "
          "less than it seems: see docs/privacy.md.")
    return summary


def save_grid(path, images, labels, encoders: dict, count: int = 8) -> None:
    """A PNG: a row of originals, then for each InstaHide mode a row of the encodings of the
    same rows (term 0 of row i is image i; the others are partners or photo patches) and a
    row of their absolute values, which the sign mask does not hide."""
    from PIL import Image, ImageDraw

    rows = np.arange(min(count, len(images)))
    lines = [("original", [np.asarray(images[i]) for i in rows])]
    for mode, encoder in encoders.items():
        if mode == "vanilla":
            continue
        keys = encoder.keys(len(images), 0)
        encoded, _ = encoder.encode(images, labels, keys, rows=rows)
        encoded = encoded.transpose(0, 2, 3, 1)  # NHWC for display
        lines.append((f"{mode} encoding", [_to_pixels(e / 3 + 0.5) for e in encoded]))
        lines.append((f"|{mode}|", [_to_pixels(np.abs(e) / 2.5) for e in encoded]))
    h, w = images.shape[1:3]
    label_width, gap, zoom = 120, 2, max(2, 64 // w)
    canvas = Image.new("RGB", (label_width + len(rows) * (w * zoom + gap), len(lines) * (h * zoom + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, tiles) in enumerate(lines):
        top = r * (h * zoom + gap)
        draw.text((4, top + h * zoom // 2 - 5), name, fill="black")
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile).resize((w * zoom, h * zoom), Image.Resampling.NEAREST),
                         (label_width + c * (w * zoom + gap), top))
    canvas.save(path)


def _to_pixels(unit: np.ndarray) -> np.ndarray:
    return (np.clip(unit, 0, 1) * 255).round().astype(np.uint8)
