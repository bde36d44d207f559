"""The anchor row of the time-to-accuracy table: the published airbench94 recipe (Keller Jordan,
"94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498; code: the `airbench`
package on PyPI, version 0.1.8, MIT licence), trained on the same data and machine as our rows.

    python benchmarks/airbench94.py                      # a row in results/accuracy/cpu-2026-12-06.json
    python benchmarks/airbench94.py --limit 2048 --test-limit 500 --out /tmp/smoke.json

Ported from airbench's `lib_airbench94.py` and `utils.py` with the method unchanged: the network
(frozen 2x2 patch-whitening conv with its bias trained for 3 epochs, three conv groups with
identity-initialised convolutions, BatchNorm with frozen scale, momentum 0.6, and a 64x learning
rate on its bias, GELU), the decoupled hyperparameters (batch 1024, lr 11.5, momentum 0.85, wd
0.0153, label smoothing 0.2), the triangular schedule over 9.9 epochs, lookahead averaging every
5 steps, reflect-padded translate 2 with flips alternating across epochs, and multi-crop
test-time augmentation (mirror + translate) for the final figure. Adapted: the device (CPU
threads, bfloat16 autocast where the CPU has native bf16, fp32 otherwise, instead of fp16 on a
GPU), the data (the CIFAR-10 copy under ../shared/data via instahide.datasets, instead of
torchvision's download) and the timing (perf_counter instead of CUDA events). As in airbench,
the clock counts training and the whitening fit, not the per-epoch evaluations, and the final
multi-crop evaluation is added to the last point.

The row is labelled as the published recipe, not ours; the table's ratios stay against plain.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instahide.cli.train import random_subsets
from instahide.datasets import default_data_dir, load_cifar10
from instahide.torch.recipe import bf16_usable

from provenance import provenance
from time_to_accuracy import RESULTS, device_name, plot, reached, row_name, save

HYP = {"epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bias_scaler": 64.0,
       "label_smoothing": 0.2, "whiten_bias_epochs": 3, "translate": 2, "widths": (64, 256, 256),
       "batchnorm_momentum": 0.6, "scaling_factor": 1 / 9, "tta_level": 2}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # airbench's constants


# --- the network (lib_airbench94.py) -------------------------------------------------------

class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, momentum: float, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False  # frozen scale; the bias trains


class Conv(nn.Conv2d):
    def __init__(self, channels_in: int, channels_out: int, kernel_size: int = 3, padding="same", bias=False):
        super().__init__(channels_in, channels_out, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        weight = self.weight.data
        torch.nn.init.dirac_(weight[:weight.size(1)])  # identity init of the first in-channels filters


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, momentum: float):
        super().__init__()
        self.conv1, self.pool = Conv(channels_in, channels_out), nn.MaxPool2d(2)
        self.norm1, self.conv2 = BatchNorm(channels_out, momentum), Conv(channels_out, channels_out)
        self.norm2, self.activ = BatchNorm(channels_out, momentum), nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def make_net94() -> nn.Sequential:
    widths, momentum, whiten_width = HYP["widths"], HYP["batchnorm_momentum"], 2 * 3 * 2 ** 2
    net = nn.Sequential(Conv(3, whiten_width, 2, padding=0, bias=True), nn.GELU(),
                        ConvGroup(whiten_width, widths[0], momentum), ConvGroup(widths[0], widths[1], momentum),
                        ConvGroup(widths[1], widths[2], momentum), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(widths[2], 10, bias=False), Mul(HYP["scaling_factor"]))
    net[0].weight.requires_grad = False
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def init_whitening_conv(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """The uncentred whitening fit of airbench's utils.py: eigenvectors of the 2x2 patches'
    second moments, scaled by 1/sqrt(eigenvalue + eps), and their negatives."""
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.reshape(len(patches), -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    eigenvalues, eigenvectors = eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(-1, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


# --- the data (utils.py's CifarLoader) ------------------------------------------------------

class CifarLoader:
    """airbench's training loader: normalized images, flipped at random once, reflect-padded
    once; each epoch a random translate, every second epoch all images mirrored, shuffled."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.labels, self.batch_size, self.epoch = labels, batch_size, 0
        normalized = normalize(images)
        flip = (torch.rand(len(normalized)) < 0.5).view(-1, 1, 1, 1)
        flipped = torch.where(flip, normalized.flip(-1), normalized)
        pad = HYP["translate"]
        self.padded, self.size = F.pad(flipped, (pad,) * 4, "reflect"), images.shape[-1]

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size  # drop_last, as for training

    def __iter__(self):
        images = batch_crop(self.padded, self.size)
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images))
        for i in range(len(self)):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[rows].contiguous(memory_format=torch.channels_last), self.labels[rows]


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous(memory_format=torch.channels_last)


def batch_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    r = (images.size(-1) - crop) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2))
    out = torch.empty((len(images), images.shape[1], crop, crop), dtype=images.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = images[mask, :, r + sy:r + sy + crop, r + sx:r + sx + crop]
    return out


# --- training and evaluation (utils.py's train, infer) --------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta_level: int, bf16: bool) -> float:
    def mirror(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    def mirror_translate(x):
        padded = F.pad(x, (1,) * 4, "reflect")
        translated = torch.stack([mirror(padded[:, :, 0:32, 0:32]), mirror(padded[:, :, 2:34, 2:34])]).mean(0)
        return 0.5 * mirror(x) + 0.5 * translated

    infer = [model, mirror, mirror_translate][tta_level]
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = torch.cat([infer(x.contiguous(memory_format=torch.channels_last)).float() for x in images.split(2000)])
    return float((logits.argmax(1) == labels).float().mean())


def triangle(steps: int, start: float, end: float, peak: float) -> torch.Tensor:
    xp, fp = torch.tensor([0, int(peak * steps), steps]), torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    indices = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    return m[indices] * x + b[indices]


def train94(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, bf16: bool,
            on_epoch) -> tuple[float, float]:
    """airbench's train() with train94's hyperparameters; calls on_epoch(row) after every epoch
    (the last one with the final multi-crop accuracy). Returns (final accuracy with TTA, without)."""
    loader = CifarLoader(train_x, train_y, HYP["batch_size"])
    momentum, batch = HYP["momentum"], HYP["batch_size"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = HYP["lr"] / kilostep_scale, HYP["weight_decay"] * batch / kilostep_scale
    lr_biases = lr * HYP["bias_scaler"]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")
    total_steps = math.ceil(len(loader) * HYP["epochs"])
    model = make_net94()
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    schedule = triangle(total_steps, start=0.2, end=0.07, peak=0.23)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: float(schedule[i]))
    alpha = 0.95 ** 5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    lookahead = {k: v.clone() for k, v in model.state_dict().items()}

    def lookahead_update(decay: float) -> None:
        for average, current in zip(lookahead.values(), model.state_dict().values(), strict=True):
            if current.is_floating_point():
                average.lerp_(current, 1 - decay)
                current.copy_(average)

    started = time.perf_counter()
    init_whitening_conv(model[0], normalize(train_x[:5000]))
    seconds, steps, epochs = time.perf_counter() - started, 0, math.ceil(HYP["epochs"])
    without_tta = 0.0
    for epoch in range(epochs):
        model[0].bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        model.train()
        for inputs, labels in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outputs = model(inputs)
            loss = loss_fn(outputs.float(), labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps, total_loss, seen = steps + 1, total_loss + loss.item(), seen + len(labels)
            if steps % 5 == 0:
                lookahead_update(float(alpha[steps]))
            if steps >= total_steps:
                lookahead_update(1.0)
                break
        seconds += time.perf_counter() - started
        row = {"epoch": epoch + 1, "seconds": seconds, "train_loss": total_loss / max(seen, 1)}
        without_tta = evaluate(model, test_x, test_y, 0, bf16)
        if epoch + 1 == epochs:  # the published figure: multi-crop TTA, its time counted
            started = time.perf_counter()
            row["test_accuracy"] = evaluate(model, test_x, test_y, HYP["tta_level"], bf16)
            seconds += time.perf_counter() - started
            row.update(seconds=seconds, tta_level=HYP["tta_level"], accuracy_without_tta=without_tta)
        else:
            row["test_accuracy"] = without_tta
        on_epoch(row)
    return row["test_accuracy"], without_tta


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(labels.astype(np.int64))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()), help="the folder of cifar10-train.tar and "
                                                                        "cifar10-test.tar")
    parser.add_argument("--limit", type=int, help="train on this many images (a smoke run; at least 1024)")
    parser.add_argument("--test-limit", type=int, help="test on this many images")
    parser.add_argument("--seed", type=int, default=0, help="torch's seed (init, flips, crops, order) and the subsets")
    parser.add_argument("--out", help="the time-to-accuracy JSON to add the row to (default: "
                                      "results/accuracy/cpu-2026-12-06.json)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < HYP["batch_size"]:
        parser.error(f"--limit {args.limit}: at least one batch, {HYP['batch_size']}")
    if args.test_limit is not None and args.test_limit < 1:
        parser.error(f"--test-limit {args.test_limit}: must be at least 1")
    out = Path(args.out) if args.out else RESULTS / "cpu-2026-12-06.json"
    if not out.resolve().parent.is_dir():
        parser.error(f"--out {out}: its folder does not exist")
    data = Path(args.data)
    for name in ("cifar10-train.tar", "cifar10-test.tar"):
        if not (data / name).exists():
            parser.error(f"--data {data}: no {name} there")

    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = random_subsets(load_cifar10("train", data_dir=data),
                                                      load_cifar10("test", data_dir=data), args.limit,
                                                      args.test_limit, args.seed)
    (train_x, train_y), (test_x, test_y) = as_tensors(train_x, train_y), as_tensors(test_x, test_y)
    test_x = normalize(test_x)
    bf16 = bf16_usable(torch.device("cpu"))
    entries = {row_name(e): e for e in json.loads(out.read_text())["methods"]} if out.exists() else {}
    entry = {"method": "airbench94", "model": "airbench94 net (widths 64, 256, 256), the published recipe",
             "device": device_name(torch.device("cpu")), "date": datetime.date.today().isoformat(),
             "epochs": 0, "seconds": 0.0, "best_accuracy": 0.0, "curve": [], "reached": reached([]),
             "privacy": "none (the published recipe, for reference)",
             "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in HYP.items()},
                          "bf16_autocast": bf16, "train_images": len(train_x), "test_images": len(test_x),
                          "threads": torch.get_num_threads(), "torch": torch.__version__, "seed": args.seed,
                          "data": "CIFAR-10 (JPEG q75 copy)", "source": "airbench 0.1.8 (PyPI), lib_airbench94.py"},
             "load": [], **provenance()}
    entries[row_name(entry)] = entry

    def on_epoch(row: dict) -> None:
        row = {**row, "seconds": round(row["seconds"], 2), "train_loss": round(row["train_loss"], 4)}
        entry["curve"].append(row)
        entry["load"].append(round(os.getloadavg()[0], 2))
        entry["epochs"], entry["seconds"] = row["epoch"], row["seconds"]
        entry["best_accuracy"] = max(entry["best_accuracy"], row["test_accuracy"])
        entry["reached"] = reached(entry["curve"])
        save(out, entries)
        print(f"airbench94 epoch {row['epoch']}: {100 * row['test_accuracy']:.2f}%"
              + (" (multi-crop TTA)" if "tta_level" in row else "")
              + f" after {row['seconds']:.0f} s (load {entry['load'][-1]})", flush=True)

    with_tta, without = train94(train_x, train_y, test_x, test_y, bf16, on_epoch)
    entry["final_accuracy"], entry["final_accuracy_without_tta"] = with_tta, without
    save(out, entries)
    plot(out.with_suffix(".png"), entries)
    print(f"airbench94: {100 * with_tta:.2f}% with TTA ({100 * without:.2f}% without) after {entry['seconds']:.0f} s; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
