"""`instahide train`: train a model on InstaHide encodings (or plainly, or with k-way mixup)
with the authors' settings as defaults. Needs torch."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import _files
from ..datasets import default_data_dir, load_split, split_size
from ..encoder import Encoder
from ..keys import new_secret_key
from ..pool import PublicPool
from ..shards import read_key_file
from ..torch import InstaHideLoader, soft_cross_entropy
from ..torch._progress import _progress
from ..torch.models import MODELS
from ._checks import available_memory, need, writable_folder

LOG_FIELDS = ["epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "encode_seconds", "lr"]


def add_arguments(parser) -> None:
    data = default_data_dir()
    # the defaults print resolved: $INSTAHIDE_DATA, else ../shared/data of the working folder or the checkout
    where = "$INSTAHIDE_DATA" if "INSTAHIDE_DATA" in os.environ else "../shared/data, resolved from here"
    parser.add_argument("--train", default=str(data.resolve() / "cifar10-train.tar"),
                        help="training set: a class tar file, a folder of class subfolders, or CIFAR-10 python batches "
                             f"(default from {where})")
    parser.add_argument("--test", default=str(data.resolve() / "cifar10-test.tar"), help="test set, in the same forms")
    parser.add_argument("--limit", type=int, help="train on this many images (a random subset), for quick runs")
    parser.add_argument("--test-limit", type=int, help="test on this many images (a random subset)")
    parser.add_argument("--recipe", choices=["paper", "fast"], default="paper",
                        help="paper: the authors' protocol (--model, step decay, 200 epochs); fast: FastNet with "
                             "the fast schedule of instahide.torch.recipe (--width, --raw-input; 10 epochs by default)")
    parser.add_argument("--model", choices=sorted(MODELS), default="preact_resnet18", help="paper recipe's network")
    parser.add_argument("--width", choices=["cpu", "full"],
                        help="fast recipe: FastNet widths, full (64/256/256) or cpu (32/128/128); default: full on "
                             "a GPU, cpu on a CPU")
    parser.add_argument("--raw-input", action="store_true",
                        help="fast recipe: the net reads the signed encoding (default: |encoding|)")
    parser.add_argument("--mode", choices=["vanilla", "mixup", "instahide", "cross"], default="instahide",
                        help="vanilla: plain training; mixup: k terms, no mask; instahide: inside-dataset; "
                             "cross: private + public terms")
    parser.add_argument("--k", type=int, default=4, help="terms per encoding (cross: 6 in the paper)")
    parser.add_argument("--private-terms", type=int, default=2, help="cross mode: private terms per encoding")
    parser.add_argument("--public", default=str(data.resolve() / "tiny-imagenet-val.tar"),
                        help="cross mode: public images (tar, folder, or a saved PublicPool .npz)")
    parser.add_argument("--dom", type=float, default=0.3, help="cross mode: least total weight of private terms")
    parser.add_argument("--upper", type=float, default=0.65, help="largest coefficient")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no crop and flip fused into the encoder (paper recipe: pad 4 + flip; fast: translate 2 + "
                             "flip)")
    parser.add_argument("--epochs", type=int, help="default: 200 (paper), 10 (fast)")
    parser.add_argument("--batch-size", type=int, help="default: 128 (paper), 512 or 256 on a CPU (fast)")
    parser.add_argument("--lr", type=float, help="peak learning rate; default: 0.1 (paper), 0.4 (fast)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--out", default="runs/instahide", help="folder for log.csv and checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--seed", type=int, help="seeds model initialization and the data subset (keys stay secret)")
    parser.add_argument("--key-file", help="32-byte secret key file (default: a fresh key from the OS)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def learning_rate(args, epoch: int) -> float:
    """The authors' step decay: /10 at half and at three quarters of the epochs."""
    return args.lr * 0.1 ** sum(epoch >= m for m in (args.epochs // 2, 3 * args.epochs // 4))


def make_encoder(args, images: np.ndarray, key: bytes, mean, std, pad: int = 4) -> Encoder:
    """The encoder of --mode; crop (pad `pad`) and flip with --augment."""
    options = dict(mean=mean, std=std, pad=pad if args.augment else 0, hflip=args.augment, key=key, upper=args.upper,
                   layout="NHWC")
    if args.mode == "vanilla":
        return Encoder(k=1, sign="none", **options)
    if args.mode == "mixup":
        return Encoder(k=args.k, sign="none", **options)
    if args.mode == "instahide":
        return Encoder(k=args.k, **options)
    public = Path(args.public)
    pool = PublicPool.load(public) if public.suffix == ".npz" else (
        PublicPool.from_tar(public, progress=not args.quiet) if public.is_file() else
        PublicPool.from_folder(public, progress=not args.quiet))
    return Encoder(k=args.k, private_terms=args.private_terms, public=pool, patch_size=images.shape[1:3],
                   dom=args.dom, **options)


def evaluate(model, images, labels, mean, std, device, batch_size=500):
    """Test loss and accuracy on plain normalized images."""
    plain = Encoder(k=1, sign="none", mean=mean, std=std, layout="NHWC")
    keys = plain.keys(len(images), 0)
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            rows = np.arange(start, min(len(images), start + batch_size))
            x, _ = plain.encode(images, labels, keys, rows=rows)
            logits = model(torch.from_numpy(x).to(device))
            y = torch.from_numpy(labels[rows]).to(device)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
    return loss / len(images), correct / len(images)


def _load_data(args):
    """(train images, labels, test images, labels): --train and --test, with random subsets of
    --limit and --test-limit images (seeded by --seed)."""
    return random_subsets(load_split(args.train, "train"), load_split(args.test, "test"), args.limit,
                          args.test_limit, args.seed)


def random_subsets(train, test, limit: int | None, test_limit: int | None, seed: int | None):
    """(train images, labels, test images, labels) from the (images, labels) pairs `train` and
    `test`, each cut to a random subset of `limit` / `test_limit` images (in their order) when given."""
    pick = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = train, test
    if limit:
        keep = np.sort(pick.permutation(len(train_x))[:limit])
        train_x, train_y = train_x[keep], train_y[keep]
    if test_limit:
        keep = np.sort(pick.permutation(len(test_x))[:test_limit])
        test_x, test_y = test_x[keep], test_y[keep]
    return train_x, train_y, test_x, test_y


def _join_process_group(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process. Under torchrun (WORLD_SIZE > 1) it joins
    torch.distributed's process group (nccl on GPUs, gloo on CPUs), one GPU per local rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def _shared_secret(key: bytes | None, world_size: int) -> bytes | None:
    """Rank 0's secret key on every rank, so that all ranks derive the same epoch keys (it
    travels over the process group; pass --key-file on every node instead to avoid that)."""
    if world_size == 1:
        return key
    box = [key]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_arguments(args) -> None:
    """Every numeric option in range and the output folder writable, before any data is read:
    a ValueError names the option, its value and what it may be."""
    for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--limit", args.limit),
                          ("--test-limit", args.test_limit)):
        need(value is None or value >= 1, option, value, "at least 1")
    need(args.lr is None or args.lr > 0, "--lr", args.lr, "above 0")
    need(0 <= args.momentum < 1, "--momentum", args.momentum, "in [0, 1)")
    need(args.weight_decay >= 0, "--weight-decay", args.weight_decay, "0 or more")
    need(args.workers >= 0, "--workers", args.workers, "0 or more")
    if args.mode != "vanilla":
        need(2 <= args.k <= 16, "--k", args.k, "2 to 16")
        need(0 < args.upper <= 1, "--upper", args.upper, "in (0, 1]")
    if args.mode == "cross":
        need(1 <= args.private_terms < args.k, "--private-terms", args.private_terms, f"1 to k - 1 = {args.k - 1}")
        need(0 <= args.dom <= 1, "--dom", args.dom, "in [0, 1]")
    writable_folder("--out", args.out)


def check_memory(args) -> None:
    """Refuses, before decoding anything, training and test sets that cannot be held: their
    images (counted from the listing, sized by the first) are decoded into a list and then
    stacked, so about twice their bytes, against the memory available."""
    available = available_memory()
    if available is None:
        return
    count = held = 0
    for path in (args.train, args.test):
        size = split_size(path)
        if size is not None:
            count, held = count + size[0], held + size[0] * int(np.prod(size[1]))
    if 2 * held > 0.9 * available:
        raise ValueError(f"--train {args.train} and --test {args.test}: {count:,} images; decoding them needs about "
                         f"{2 * held / 2**30:.1f} GiB, {available / 2**30:.1f} GiB are available (--limit subsets "
                         "after decoding): use smaller sets or a machine with more memory")


def channel_statistics(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1] units, in chunks of
    images (a float copy of the whole set would take 8 times its bytes)."""
    channels = images.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255
        total, squares, count = total + part.sum(axis=0), squares + (part * part).sum(axis=0), count + len(part)
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def run(args) -> list[dict]:
    """Trains; returns the rows of the log (rank 0's; other ranks return [])."""
    check_arguments(args)
    check_memory(args)
    if args.recipe == "fast":
        return _train_fast(args)
    args.epochs = 200 if args.epochs is None else args.epochs
    args.batch_size = 128 if args.batch_size is None else args.batch_size
    args.lr = 0.1 if args.lr is None else args.lr
    rank, world_size, device = _join_process_group(torch.device(args.device))
    rows = _train(args, rank, world_size, device)
    # Only after success: a rank that failed leaves its group to the process's exit, since
    # tearing it down could wait on peers stuck in a collective.
    if world_size > 1:
        # Rank 0 evaluates and checkpoints after the others finished the last epoch; gloo aborts
        # a rank whose peer is still connected when it tears down (std::terminate), so all
        # ranks leave together.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return rows


def _train(args, rank: int, world_size: int, device: torch.device) -> list[dict]:
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = _load_data(args)
    classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = channel_statistics(train_x)

    model = MODELS[args.model](num_classes=classes, channels=train_x.shape[-1]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    checkpoint_path, log_path = out / "checkpoint.pt", out / "log.csv"
    start_epoch, key = 0, None
    if args.resume and checkpoint_path.exists():
        with _files.parsing(f"{checkpoint_path}: cannot resume from it (damaged, or written for other options: "
                            "remove it to start over)"):
            state = torch.load(checkpoint_path, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, key = state["epoch"] + 1, state["secret_key"]
    if key is None and args.key_file:
        key = read_key_file(args.key_file)
    if key is None and rank == 0:
        key = new_secret_key()
    key = _shared_secret(key, world_size)
    assert key is not None  # rank 0 made one, and _shared_secret gave it to every rank
    encoder = make_encoder(args, train_x, key, mean, std)
    # DDP averages the ranks' gradients and starts every rank from rank 0's parameters; each
    # rank encodes only its share of every epoch's batches (EncodedBatches reads the group).
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    images = torch.from_numpy(train_x).to(device) if device.type == "cuda" else train_x
    loader = InstaHideLoader(images, train_y, encoder, batch_size=args.batch_size, num_workers=args.workers,
                             start_epoch=start_epoch)
    if rank == 0 and not (args.resume and log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writeheader()

    rows = []
    for epoch in range(start_epoch, args.epochs):
        lr = learning_rate(args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started, encode_seconds, total_loss, batches = time.perf_counter(), 0.0, 0.0, 0
        iterator = iter(loader)
        progress = _progress(len(loader), f"epoch {epoch}", args.quiet or rank != 0)
        # ranks may hold one batch more than others: join() lets the short ones shadow the rest
        with trained.join() if world_size > 1 else contextlib.nullcontext():
            while True:
                fetch = time.perf_counter()
                try:
                    x, y = next(iterator)
                except StopIteration:
                    break
                encode_seconds += time.perf_counter() - fetch
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss = soft_cross_entropy(trained(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss, batches = total_loss + loss.item(), batches + 1
                if progress:
                    progress.update(1)
                    progress.set_postfix(loss=f"{total_loss / batches:.3f}")
        if progress:
            progress.close()
        if world_size > 1:  # the mean training loss over all ranks' batches
            totals = torch.tensor([total_loss, batches], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(totals)
            total_loss, batches = totals[0].item(), int(totals[1].item())
        seconds = time.perf_counter() - started
        if rank != 0:
            continue  # rank 0 evaluates, logs and checkpoints; the others go on to the next epoch
        test_loss, accuracy = evaluate(model, test_x, test_y, mean, std, device)
        row = {"epoch": epoch, "train_loss": total_loss / max(batches, 1), "test_loss": test_loss,
               "test_accuracy": accuracy, "seconds": seconds, "encode_seconds": encode_seconds, "lr": lr}
        rows.append(row)
        with open(log_path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        # the checkpoint holds the secret key (to resume the same key stream): keep it private
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "secret_key": key, "args": vars(args)}, checkpoint_path.with_suffix(".tmp"))
        os.replace(checkpoint_path.with_suffix(".tmp"), checkpoint_path)
        if not args.quiet:
            print(f"epoch {epoch}: train loss {row['train_loss']:.3f}, test loss {test_loss:.3f}, "
                  f"accuracy {accuracy:.2%}, {seconds:.1f} s ({encode_seconds:.1f} s encoding)")
    if not math.isfinite(rows[-1]["train_loss"] if rows else 0.0):
        raise RuntimeError("training diverged (loss is not finite)")
    return rows


def _train_fast(args) -> list[dict]:
    """The fast recipe (instahide.torch.recipe) on one device: the log as the paper recipe's, the
    model (the weight average) in model.pt, no checkpoints to resume from."""
    from ..datasets import CIFAR10_MEAN, CIFAR10_STD
    from ..torch.recipe import FastRecipe, train_fast

    if args.resume:
        raise ValueError("--resume: the fast recipe keeps no checkpoint (its runs take minutes); rerun instead")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the fast recipe runs on one device; use --recipe paper under torchrun")
    device = torch.device(args.device)
    width = args.width or ("full" if device.type == "cuda" else "cpu")
    recipe = FastRecipe() if width == "full" else FastRecipe.cpu()
    changes = {name: value for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                               ("lr", args.lr)) if value is not None}
    recipe = recipe.replace(**changes, translate=2 if args.augment else 0,
                            abs_input=args.mode in ("instahide", "cross") and not args.raw_input,
                            rms_input=args.mode != "vanilla")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = _load_data(args)
    classes = int(max(train_y.max(), test_y.max())) + 1
    key = read_key_file(args.key_file) if args.key_file else new_secret_key()
    # public per-channel statistics (CIFAR-10's) for 3-channel data, as the authors' code uses
    channels = train_x.shape[-1]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if channels == 3 else ((0.5,) * channels, (0.25,) * channels)
    encoder = make_encoder(args, train_x, key, mean, std, pad=recipe.translate)
    images = torch.from_numpy(train_x).to(device) if device.type == "cuda" else train_x
    labels = torch.from_numpy(train_y).to(device) if device.type == "cuda" else train_y
    log_path = out / "log.csv"
    fields = ["epoch", "seconds", "train_loss", "test_accuracy"]
    with open(log_path, "w", newline="") as f:
        csv.DictWriter(f, fields).writeheader()

    def log(row: dict) -> None:
        with open(log_path, "a", newline="") as f:
            csv.DictWriter(f, fields).writerow(row)
        if not args.quiet:
            print(f"epoch {row['epoch']}: train loss {row['train_loss']:.3f}, accuracy {row['test_accuracy']:.2%}, "
                  f"{row['seconds']:.1f} s of training")

    model, rows = train_fast(images, labels, encoder, test_x, test_y, recipe, device=device, num_classes=classes,
                             seed=args.seed, on_epoch=log, progress=not args.quiet)
    torch.save({"model": model.state_dict(), "recipe": vars(recipe), "classes": classes}, out / "model.pt")
    return rows
