"""The fast training recipe (`instahide train --recipe fast`, benchmarks/time_to_accuracy.py).

Our own network and schedule after the published fast CIFAR-10 recipes (Jordan, "94% on
CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498; Page, "How to train your ResNet"):
FastNet (a frozen patch-whitening layer, three conv groups, BatchNorm, GELU), label smoothing,
Nesterov SGD with a triangular learning-rate schedule, an exponential moving average of the
weights for evaluation, flip test-time augmentation. The training data are InstaHide encodings
from the fused encoder, re-keyed every epoch, with the crop (translate) and flip fused into the
encoder; plain training is the same recipe with a one-term, unmasked encoder.

InstaHide-specific choices, each an option so that benchmarks/time_to_accuracy.py measures it:
- `abs_input`: the net reads |x| (the sign mask is independent of the image) or the signed
  encoding (the paper);
- the whitening layer is fitted to encodings as the net reads them, never to private images;
- mixed soft labels with label smoothing on top (`label_smoothing`);
- evaluation on plain test images through the same input transform (the net's own |x|), and,
  separately, the paper's InstaHide inference (`instahide.torch.predict`).
Needs torch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..encoder import Encoder
from ._progress import _progress
from .loader import InstaHideLoader
from .loss import soft_cross_entropy
from .models import FastNet

__all__ = ["FastRecipe", "learning_rate_factor", "smoothed", "train_fast", "plain_inputs"]


@dataclass(frozen=True)
class FastRecipe:
    """Settings of the fast recipe. `lr` is the peak learning rate for `batch_size`; the schedule
    rises linearly from `lr * start` to `lr` over the first `warmup` of the steps, then falls
    linearly to 0. `ema`: per-step decay of the evaluated weight average (0: none)."""

    widths: tuple[int, int, int] = (64, 256, 256)
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.4
    start: float = 0.2
    warmup: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    ema: float = 0.99
    translate: int = 2
    flip_tta: bool = True
    abs_input: bool = True
    rms_input: bool = False
    whiten: bool = True
    whiten_samples: int = 5000
    bf16: bool = True
    # Ingredients of airbench94 (arXiv 2404.00498) that the recipe lacks, off by default; the
    # ablation (benchmarks/recipe_ablation.py) measures each:
    dirac_init: bool = False          # identity init of the first in-channels filters of each conv
    bn_frozen_scale: bool = False     # BatchNorm scales fixed at 1 (the biases train)
    bn_bias_lr: float = 1.0           # learning-rate factor of BatchNorm biases (airbench: 64)
    bn_momentum: float = 0.1          # torch's BatchNorm momentum (airbench: 0.4, its "0.6" in torch terms)
    lookahead: bool = False           # every 5 steps the net is pulled to a slow average of itself
    multi_crop_tta: bool = False      # evaluation: mirror and 1-pixel translates (with flip_tta)
    whiten_uncentred: bool = False    # fit the whitening layer to uncentred patches
    whiten_bias_epochs: int | None = None  # train the whitening bias this many epochs (None: all)

    @classmethod
    def cpu(cls, **changes) -> FastRecipe:
        """The CPU size: half the widths (a quarter of the arithmetic), batches of 256."""
        return dataclasses.replace(cls(widths=(32, 128, 128), batch_size=256), **changes)

    def replace(self, **changes) -> FastRecipe:
        return dataclasses.replace(self, **changes)


def learning_rate_factor(step: int, total: int, recipe: FastRecipe) -> float:
    """The triangular schedule at `step` of `total`, as a fraction of the peak."""
    progress = step / max(total, 1)
    if progress < recipe.warmup:
        return recipe.start + (1 - recipe.start) * progress / recipe.warmup
    return max(0.0, (1 - progress) / (1 - recipe.warmup))


def smoothed(targets: torch.Tensor, amount: float) -> torch.Tensor:
    """Soft (mixed) labels with label smoothing: (1 - amount) * targets + amount / classes."""
    return targets * (1 - amount) + amount / targets.shape[-1]


def plain_inputs(images, encoder: Encoder) -> np.ndarray | torch.Tensor:
    """Test inputs: `images` normalized as `encoder` normalizes its terms, one term, no mask, no
    crop or flip (the net applies its own input transform, e.g. |x|)."""
    plain = Encoder(k=1, sign="none", mean=encoder.mean, std=encoder.std, layout=encoder.layout)
    x, _ = plain.encode(images, np.zeros(len(images), np.int64), plain.keys(len(images), 0))
    return x


def bf16_usable(device: torch.device) -> bool:
    """bfloat16 autocast pays off: on a GPU, and on a CPU with native bf16 arithmetic."""
    if device.type == "cuda":
        return True
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def train_fast(images, labels, encoder: Encoder, test_images, test_labels, recipe: FastRecipe,
               device: torch.device | str = "cpu", num_classes: int | None = None, seed: int | None = None,
               on_epoch: Callable[[dict], None] | None = None, progress: bool = False,
               checkpoint: str | Path | None = None):
    """Trains FastNet on `encoder`'s encodings of (`images`, `labels`) for `recipe.epochs`,
    re-keyed every epoch, and evaluates on the plain test images after every epoch. Returns
    (the evaluated model, the rows: epoch, seconds (training time so far, evaluation excluded),
    train_loss, test_accuracy). `seed` seeds the model's initialization only: the keys come
    from the encoder's secret key. Images already on a GPU are encoded there.

    `checkpoint`: a file written after every epoch (model, weight average, optimizer, schedule
    position, rows) and read at the start, so that a run killed mid-way continues from its last
    completed epoch when called again with the same arguments and the same encoder key (the
    same epoch keys as an uninterrupted run; a checkpoint of other settings is refused). Rows'
    seconds count training time across resumptions; `on_epoch` sees only the new epochs' rows
    (an epoch whose checkpoint a kill prevented is trained and reported again). The file holds
    a digest of the key, never the key."""
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    labels_np = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    classes = int(num_classes or int(labels_np.max()) + 1)
    loader = InstaHideLoader(images, labels, encoder, batch_size=recipe.batch_size, drop_last=True)
    sample = _sample_encodings(loader, recipe.whiten_samples).to(device)
    norm = functools.partial(torch.nn.BatchNorm2d, momentum=recipe.bn_momentum)
    model = FastNet(classes, sample.shape[1], recipe.widths, abs_input=recipe.abs_input,
                    rms_input=recipe.rms_input, norm=norm).to(device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
    if recipe.whiten:
        model.init_whitening(sample, centred=not recipe.whiten_uncentred)
    else:
        torch.nn.init.kaiming_normal_(model.whiten.weight)
    _apply_ingredients(model, recipe)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1
                and (recipe.bn_bias_lr == 1.0 or id(p) not in norm_biases)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay, "lr_factor": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_factor": 1.0}]
    if recipe.bn_bias_lr != 1.0:  # as airbench: a faster bias, its decay per step kept at the others'
        groups.append({"params": [p for p in model.parameters() if id(p) in norm_biases],
                       "weight_decay": recipe.weight_decay / recipe.bn_bias_lr, "lr_factor": recipe.bn_bias_lr})
    optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    total_steps = recipe.epochs * len(loader)
    averaged = copy.deepcopy(model) if recipe.ema > 0 else None
    slow = copy.deepcopy(model.state_dict()) if recipe.lookahead else None
    test_x = torch.as_tensor(plain_inputs(test_images, encoder)).to(device)
    test_y = torch.as_tensor(np.asarray(test_labels.cpu() if torch.is_tensor(test_labels) else test_labels))
    use_bf16 = recipe.bf16 and bf16_usable(device)

    rows, step, trained_seconds, first_epoch = [], 0, 0.0, 0
    identity = _run_identity(recipe, encoder, loader.batches.n, classes, seed)
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("identity") != identity:
            raise ValueError(f"{checkpoint} was written by a run with other settings, data or key: delete it "
                             "to start over")
        model.load_state_dict(state["model"])
        if averaged is not None:
            averaged.load_state_dict(state["averaged"])
        optimizer.load_state_dict(state["optimizer"])
        if slow is not None:
            slow = state["slow"]
        rows, step, trained_seconds = state["rows"], state["step"], state["trained_seconds"]
        first_epoch = len(rows)
        torch.set_rng_state(state["rng"])
        loader.epoch = first_epoch  # the epoch keys of an uninterrupted run
    for epoch in range(first_epoch, recipe.epochs):
        if recipe.whiten_bias_epochs is not None:
            model.whiten.bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        model.train()
        started, total_loss, batches = time.perf_counter(), 0.0, 0
        bar = _progress(len(loader), f"epoch {epoch}", quiet=not progress)
        for x, y in loader:  # a freshly keyed epoch
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * group["lr_factor"] * learning_rate_factor(step, total_steps, recipe)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = smoothed(y.to(device, non_blocking=True).float(), recipe.label_smoothing)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = soft_cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if slow is not None and (step + 1) % 5 == 0:  # airbench's lookahead schedule
                _lookahead(slow, model, 1.0 if step + 1 >= total_steps else 0.95 ** 5 * ((step + 1) / total_steps) ** 3)
            if averaged is not None:
                update_average(averaged, model, min(recipe.ema, (1 + step) / (10 + step)))
            step, batches, total_loss = step + 1, batches + 1, total_loss + loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / batches:.3f}")
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trained_seconds += time.perf_counter() - started
        evaluated = averaged if averaged is not None else model
        accuracy = accuracy_on(evaluated, test_x, test_y, recipe.flip_tta, use_bf16, multi_crop=recipe.multi_crop_tta)
        row = {"epoch": epoch + 1, "seconds": trained_seconds, "train_loss": total_loss / max(batches, 1),
               "test_accuracy": accuracy}
        if not math.isfinite(row["train_loss"]):
            raise RuntimeError(f"training diverged at epoch {epoch + 1} (loss is not finite)")
        rows.append(row)
        if on_epoch is not None:  # first: a kill between the two redoes this epoch, never skips its row
            on_epoch(row)
        if checkpoint is not None:
            _save_atomically({"identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "averaged": None if averaged is None else averaged.state_dict(), "slow": slow,
                              "rows": rows,
                              "step": step, "trained_seconds": trained_seconds, "rng": torch.get_rng_state()},
                             Path(checkpoint))
    return (averaged if averaged is not None else model), rows


def _run_identity(recipe: FastRecipe, encoder: Encoder, n: int, classes: int, seed: int | None) -> dict:
    """What a checkpoint must match to be resumed: the settings, the data's size and a digest of
    the encoder (its key included: other keys would train on other encodings)."""
    key_digest = hashlib.sha256(encoder.key + repr(encoder).encode()).hexdigest()
    return {"recipe": dataclasses.asdict(recipe), "images": n, "classes": classes, "seed": seed, "encoder": key_digest}


def _save_atomically(state: dict, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then a rename: a kill never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


@torch.no_grad()
def _apply_ingredients(model: FastNet, recipe: FastRecipe) -> None:
    """The airbench ingredients that act on the fresh model (FastRecipe's options)."""
    for module in model.groups.modules():
        if recipe.dirac_init and isinstance(module, torch.nn.Conv2d):
            weight = module.weight
            torch.nn.init.dirac_(weight[:weight.size(1)])
        if recipe.bn_frozen_scale and isinstance(module, torch.nn.BatchNorm2d):
            module.weight.requires_grad_(False)


@torch.no_grad()
def _lookahead(slow: dict, model: torch.nn.Module, decay: float) -> None:
    """slow <- decay * slow + (1 - decay) * model, then model <- slow (airbench's LookaheadState)."""
    for average, current in zip(slow.values(), model.state_dict().values(), strict=True):
        if current.is_floating_point():
            average.lerp_(current, 1 - decay)
            current.copy_(average)


@torch.no_grad()
def update_average(averaged: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """averaged <- decay * averaged + (1 - decay) * model, parameters and BatchNorm statistics
    alike (the decay starts small, so that early evaluations are not held near the init)."""
    for mean, current in zip(averaged.state_dict().values(), model.state_dict().values(), strict=True):
        if mean.is_floating_point():
            mean.lerp_(current, 1 - decay)
        else:
            mean.copy_(current)


@torch.no_grad()
def accuracy_on(model, inputs: torch.Tensor, labels: torch.Tensor, flip_tta: bool = True, bf16: bool = False,
                batch_size: int = 1000, multi_crop: bool = False) -> float:
    """Test accuracy on prepared inputs (N, C, H, W); with `flip_tta` the logits of each image
    and its mirror image are summed; `multi_crop` adds, at half the weight, the mean of the
    (mirrored) images translated by one pixel up-left and down-right (airbench's TTA level 2)."""
    model.eval()
    correct = 0

    def views(x):
        logits = model(x).float()
        return logits + model(x.flip(-1)).float() if flip_tta else logits

    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = views(x)
            if multi_crop:
                padded = F.pad(x, (1,) * 4, "reflect")
                h, w = x.shape[-2:]
                translated = views(padded[..., :h, :w]) + views(padded[..., 2:, 2:])
                logits = logits + translated / 2
        correct += int((logits.argmax(dim=1).cpu() == labels[start:start + batch_size]).sum())
    return correct / len(inputs)


def _sample_encodings(loader: InstaHideLoader, count: int) -> torch.Tensor:
    """About `count` encodings of the first epoch's keys (the whitening layer's statistics)."""
    batches = loader.batches
    batches.set_epoch(loader.epoch)
    sample, have = [], 0
    for i in range(len(batches)):
        x, _ = batches[i]
        sample.append(x.float())
        have += len(x)
        if have >= count:
            break
    return torch.cat(sample)[:count]

