"""Time to accuracy on CIFAR-10: the fast recipe (instahide.torch.recipe) trained plainly and on
InstaHide encodings, test accuracy on the plain test images after every epoch.

Writes benchmarks/results/accuracy/<device>-<date>.json (one entry per method: method, model,
device, epochs, seconds, best_accuracy, curve, reached, privacy, settings, load) after every
epoch, so an interrupted run keeps what it measured, and a plot of test accuracy against
wall-clock training seconds (log scale) beside it. Rows already in the file for other methods
are kept, so methods may be run in separate invocations (and sessions); `--label` names a
row, so that one method's runs with different schedules (36 and 200 epochs) sit side by side.

    python benchmarks/time_to_accuracy.py --methods plain,inside4-abs --epochs 16,40
    python benchmarks/time_to_accuracy.py --methods plain --epochs 2 --limit 2000 --out /tmp/smoke.json
    python benchmarks/time_to_accuracy.py --methods inside4-abs --epochs 120 --widths 64,256,256 --resume

`--resume` keeps each row's checkpoint (written after every epoch) and secret key in
$XDG_CACHE_HOME/instahide/time-to-accuracy/ (outside the repository; never commit it): the same
command, run again after a kill or a restart, continues the row from its last completed epoch
with the same epoch keys, and the row's seconds count training time across resumptions
(`resumptions` says how many). The checkpoint is removed when the row completes; its key is kept.

Methods: plain; inside4-abs and inside4-signed (InstaHide inside k = 4, the net reads |x| or
the signed encoding); cross-abs (2 private + 4 Tiny-ImageNet patches); mixup4 (sign="none");
dpsgd (Opacus, the same net with GroupNorm, epsilon 8 at delta 1e-5 over its epochs, its
whitening layer fitted to public Tiny-ImageNet images, not to the private set); mpc (CrypTen,
extrapolated, not trained: plain's curve with every second multiplied by the slowdown of
CrypTen's 2-party training step against plain steps, as measured by benchmarks/compare on the
closest network CrypTen trains here, with the published MPC figures beside it; needs the plain
row in the file).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import instahide
from instahide.cli.train import random_subsets
from instahide.datasets import CIFAR10_MEAN, CIFAR10_STD, default_data_dir, load_cifar10
from instahide.shards import key_from_file
from instahide.torch.recipe import FastRecipe, train_fast

from provenance import provenance

TARGETS = (50, 70, 80, 85, 90, 93, 94)
RESULTS = Path(__file__).resolve().parent / "results" / "accuracy"
CHECKPOINTS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instahide" / "time-to-accuracy"

PRIVACY = {
    "plain": "none",
    "inside4-abs": "InstaHide inside k=4: obfuscation, no formal guarantee; broken by published attacks "
                   "(docs/privacy.md)",
    "inside4-signed": "InstaHide inside k=4: obfuscation, no formal guarantee; broken by published attacks "
                      "(docs/privacy.md)",
    "cross-abs": "InstaHide cross 2+4: obfuscation, no formal guarantee; broken by published attacks "
                 "(docs/privacy.md)",
    "mixup4": "none (k-way mixup, no mask: the mixture is published)",
    "dpsgd": "differential privacy, epsilon {epsilon:.2f} at delta 1e-5 (Opacus RDP accountant)",
}
DP_EPSILON, DP_DELTA, DP_CLIP = 8.0, 1e-5, 1.0


def make_encoder(method: str, recipe: FastRecipe, data_dir: Path, key: bytes | None = None) -> instahide.Encoder:
    options = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=recipe.translate, hflip=True, layout="NHWC", key=key)
    if method == "plain":
        return instahide.Encoder(k=1, sign="none", **options)
    if method in ("inside4-abs", "inside4-signed"):
        return instahide.Encoder(k=4, **options)
    if method == "mixup4":
        return instahide.Encoder(k=4, sign="none", **options)
    if method == "cross-abs":
        pool = instahide.PublicPool.from_tar(data_dir / "tiny-imagenet-val.tar", progress=False)
        return instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3, **options)
    raise ValueError(f"unknown method {method!r}")


def method_recipe(base: FastRecipe, method: str, epochs: int) -> FastRecipe:
    """`base` for `method`'s row: mixtures (all but plain) are divided by their RMS
    (FastNet.transform); the net reads |x| where a mask flips signs, except for the signed-input row."""
    return base.replace(epochs=epochs, abs_input=method in ("inside4-abs", "cross-abs"),
                        rms_input=method not in ("plain", "dpsgd"))


def checkpoint_folder(out: Path, name: str) -> Path:
    """Where --resume keeps a row's checkpoint and key: per results file and row, outside the
    repository."""
    where = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    return CHECKPOINTS / f"{out.stem}-{where}-{''.join(c if c.isalnum() else '-' for c in name)}"


def public_images(data_dir: Path, count: int = 2000) -> np.ndarray:
    """`count` Tiny-ImageNet images shrunk to 32x32 (2x2 means), NHWC uint8: public data."""
    pool = instahide.PublicPool.from_tar(data_dir / "tiny-imagenet-val.tar", short_side=64, limit=count,
                                         progress=False)
    images = [pool.image(i)[:64, :64].reshape(32, 2, 32, 2, -1).mean(axis=(1, 3)) for i in range(len(pool))]
    return np.stack(images).round().astype(np.uint8)


def train_dpsgd(train_x, train_y, test_x, test_y, recipe: FastRecipe, data_dir: Path, seed: int, on_epoch):
    """DP-SGD with Opacus on FastNet with GroupNorm: Poisson-sampled batches (expected size
    recipe.batch_size), per-sample gradients clipped to DP_CLIP, noise for DP_EPSILON at DP_DELTA
    over recipe.epochs; crop and flip by the fused encoder (k = 1, no mask) on the sampled rows.
    Returns epsilon as spent."""
    import warnings

    from opacus import PrivacyEngine

    from instahide.torch.models import FastNet, group_norm
    from instahide.torch.recipe import accuracy_on, learning_rate_factor, plain_inputs

    torch.manual_seed(seed)
    augment = instahide.Encoder(k=1, sign="none", mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=recipe.translate,
                                hflip=True, layout="NHWC")
    model = FastNet(10, 3, recipe.widths, norm=group_norm)
    model.init_whitening(torch.from_numpy(plain_inputs(public_images(data_dir), augment)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                momentum=recipe.momentum, nesterov=True)
    rows = torch.utils.data.TensorDataset(torch.arange(len(train_x)), torch.from_numpy(train_y))
    loader = torch.utils.data.DataLoader(rows, batch_size=recipe.batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus' notice that its secure RNG is off (we measure, not deploy)
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=DP_EPSILON, target_delta=DP_DELTA,
            epochs=recipe.epochs, max_grad_norm=DP_CLIP)
    test_inputs = torch.from_numpy(plain_inputs(test_x, augment))
    total, step, seconds = recipe.epochs * len(loader), 0, 0.0
    for epoch in range(recipe.epochs):
        model.train()
        keys = augment.keys(len(train_x), epoch)
        started, losses = time.perf_counter(), []
        for index, y in loader:
            if len(index) == 0:
                continue  # Poisson sampling may draw an empty batch
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * learning_rate_factor(step, total, recipe)
            x, _ = augment.encode(train_x, train_y, keys, rows=index.numpy())
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
        seconds += time.perf_counter() - started
        on_epoch({"epoch": epoch + 1, "seconds": seconds, "train_loss": float(np.mean(losses)),
                  "test_accuracy": accuracy_on(model, test_inputs, torch.from_numpy(test_y), recipe.flip_tta)})
    return float(engine.get_epsilon(DP_DELTA)), float(optimizer.noise_multiplier)


MPC_LITERATURE = [
    "Piranha (USENIX Security 2022): VGG-16 on CIFAR-10, 3 GPU parties, 10 epochs in about 33 hours, 54.3% accuracy",
    "CryptGPU (IEEE S&P 2021): about 12 s per training iteration of VGG-16 at batch 32 on GPUs",
]


def mpc_entry(plain: dict, compare_path: Path) -> dict:
    """The extrapolated MPC row: plain's curve, each second times CrypTen's measured slowdown."""
    compare = json.loads(compare_path.read_text())
    row = next(r for r in compare["results"] if r["method"] == "crypten_2party" and r["status"] == "ok")
    slowdown = float(row["slowdown_vs_plain"])
    curve = [{**r, "seconds": round(r["seconds"] * slowdown, 1)} for r in plain["curve"]]
    return {"method": "mpc", "model": plain["model"], "device": plain["device"], "date": plain["date"],
            "commit": plain.get("commit"), "dirty": plain.get("dirty", []),
            "epochs": plain["epochs"], "seconds": curve[-1]["seconds"] if curve else 0.0,
            "best_accuracy": plain["best_accuracy"], "curve": curve, "reached": reached(curve),
            "privacy": "MPC, 2 parties (CrypTen): cryptographic, semi-honest parties", "extrapolated": True,
            "settings": {"slowdown_vs_plain": slowdown, "measured": f"{compare_path.name}: {row['note']}",
                         "measured_model": compare["model"], "measured_machine": compare["machine"],
                         "batch_size": compare["settings"]["batch_size"]},
            "literature": MPC_LITERATURE, "load": []}


def instahide_inference(model, encoder: instahide.Encoder, test_x, test_y, repeats: int) -> dict:
    """The paper's InstaHide inference (section 3.3, instahide.torch.predict) of the final
    model: each test image mixed with other test images (or public patches) as in training,
    no crop or flip, its own coefficient at least 0.5, fresh keys, `repeats` softmaxes averaged."""
    from instahide.torch import predict

    options = dict(k=encoder.k, sign=encoder.sign, mean=CIFAR10_MEAN, std=CIFAR10_STD, layout="NHWC")
    if encoder.public is not None:
        options.update(private_terms=encoder.private_terms, public=encoder.public, patch_size=32, dom=0.3)
    model.eval()
    probabilities = predict(model, test_x, instahide.Encoder(**options), 10, repeats=repeats, own_at_least=0.5)
    accuracy = float((probabilities.argmax(dim=1).cpu().numpy() == np.asarray(test_y)).mean())
    return {"accuracy": accuracy, "repeats": repeats, "own_at_least": 0.5}


def reached(curve: list[dict]) -> dict:
    """For each target (percent): the first epoch and training second at which it was reached."""
    out = {}
    for target in TARGETS:
        hit = next((row for row in curve if row["test_accuracy"] * 100 >= target), None)
        out[str(target)] = None if hit is None else {"epoch": hit["epoch"], "seconds": round(hit["seconds"], 1)}
    return out


def row_name(entry: dict) -> str:
    """A row's name in the file, the table and the plot: its label, else its method."""
    return entry.get("label", entry["method"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def save(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"methods": list(entries.values())}, indent=1) + "\n")
    os.replace(temporary, path)


def plot(path: Path, entries: dict) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no plot written: matplotlib is not installed (pip install matplotlib for {path.name})")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    # one colour per row: the default cycle of 10 repeats on files with more rows
    colors = plt.get_cmap("tab10" if len(entries) <= 10 else "tab20").colors
    for index, entry in enumerate(entries.values()):
        color = colors[index % len(colors)]
        curve = entry["curve"]
        extrapolated = entry.get("extrapolated", False)
        axes.plot([row["seconds"] for row in curve], [100 * row["test_accuracy"] for row in curve], marker=".",
                  color=color, linestyle="--" if extrapolated else "-",
                  label=f"{row_name(entry)}{' (extrapolated)' if extrapolated else ''} "
                        f"(best {100 * entry['best_accuracy']:.1f}%)")
    for target in (85, 90, 94):
        axes.axhline(target, color="gray", linewidth=0.5, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("training wall-clock seconds (evaluation excluded)")
    axes.set_ylabel("CIFAR-10 test accuracy, plain test images (%)")
    device = next(iter(entries.values()))["device"] if entries else ""
    axes.set_title(f"Time to accuracy, fast recipe, {device}")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="plain,inside4-abs")
    parser.add_argument("--epochs", default="16,40", help="epochs per method (one number, or one per method)")
    parser.add_argument("--size", choices=["cpu", "full"], default=None,
                        help="network width: cpu (half widths) or full (default: full on a GPU, cpu on a CPU)")
    parser.add_argument("--widths", help="the conv groups' widths, e.g. 64,256,256 (the full widths) with the "
                                         "size's batch and schedule (default: the size's widths)")
    parser.add_argument("--save-model", help="write the evaluated model's state_dict here (one method only)")
    parser.add_argument("--limit", type=int, help="train on this many images (a smoke run)")
    parser.add_argument("--test-limit", type=int, help="test on this many images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--seed", type=int, default=0, help="model initialization only (keys come from the OS)")
    parser.add_argument("--out", help="the JSON file (default: results/accuracy/<device>-<date>.json)")
    parser.add_argument("--mpc-from", default=str(RESULTS.parent / "compare" / "results.json"),
                        help="mpc: the benchmarks/compare results with CrypTen's measured slowdown")
    parser.add_argument("--predict-repeats", type=int, default=4,
                        help="InstaHide methods: also the accuracy of the paper's inference with this many "
                             "encodings per test image (0: skip)")
    parser.add_argument("--label", help="the row's name in the file (default: the method), so that runs of one "
                                        "method with other schedules sit side by side; one method only")
    parser.add_argument("--resume", action="store_true",
                        help=f"checkpoint every epoch under {CHECKPOINTS} and continue a killed row from its last "
                             "completed epoch (run the same command again)")
    parser.add_argument("--key-file", help="the secret key's file (read, or written with a fresh OS key when it does "
                                           "not exist; one method only; default: fresh keys, or with --resume a "
                                           "key file beside the checkpoint)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    methods = args.methods.split(",")
    known = [*PRIVACY, "mpc"]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    try:
        epochs = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        parser.error(f"--epochs {args.epochs!r}: whole numbers, comma-separated")
    epochs = epochs * len(methods) if len(epochs) == 1 else epochs
    if len(epochs) != len(methods):
        parser.error("--epochs: one number, or one per method")
    if any(e < 1 for e, m in zip(epochs, methods, strict=True) if m != "mpc"):
        parser.error(f"--epochs {args.epochs}: each at least 1 (0 only for mpc, which trains nothing)")
    for option, value in (("--limit", args.limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            parser.error(f"{option} {value}: must be at least 1")
    if args.predict_repeats < 0:
        parser.error(f"--predict-repeats {args.predict_repeats}: must be 0 or more")
    if args.widths:
        try:
            widths = [int(w) for w in args.widths.split(",")]
        except ValueError:
            widths = []
        if len(widths) != 3 or min(widths) < 1:
            parser.error(f"--widths {args.widths!r}: three positive whole numbers, e.g. 64,256,256")
    for option, path in (("--out", args.out), ("--save-model", args.save_model)):
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"{option} {path}: its folder does not exist")
    if args.label and len(methods) != 1:
        parser.error("--label names the row of one method")
    if args.save_model and len(methods) != 1:
        parser.error("--save-model writes the model of one method")
    if args.key_file and len(methods) != 1:
        parser.error("--key-file holds the key of one method's row")
    if args.key_file and not Path(args.key_file).resolve().parent.is_dir():
        parser.error(f"--key-file {args.key_file}: its folder does not exist")
    if args.resume and "dpsgd" in methods:
        parser.error("--resume: dpsgd rows (Opacus) cannot be resumed; run them without --resume")
    size = args.size or ("full" if device.type == "cuda" else "cpu")
    data_dir = Path(args.data)
    train_x, train_y, test_x, test_y = random_subsets(load_cifar10("train", data_dir=data_dir),
                                                      load_cifar10("test", data_dir=data_dir), args.limit,
                                                      args.test_limit, args.seed)
    if device.type == "cuda":  # the whole set resident on the GPU, encoded there
        train_x, train_y = torch.from_numpy(train_x).to(device), torch.from_numpy(train_y).to(device)

    name = device_name(device)
    date = datetime.date.today().isoformat()
    slug = "".join(c if c.isalnum() else "-" for c in (name.split(",")[0] if device.type == "cuda" else "cpu"))
    out = Path(args.out) if args.out else RESULTS / f"{slug.lower()}-{date}.json"
    entries = {}
    if out.exists():
        entries = {row_name(e): e for e in json.loads(out.read_text())["methods"]}
    for method, method_epochs in zip(methods, epochs, strict=True):
        if method == "mpc":
            if "plain" not in entries:
                parser.error("mpc extrapolates plain's curve: run plain first (into the same file)")
            entries["mpc"] = mpc_entry(entries["plain"], Path(args.mpc_from))
            save(out, entries)
            continue
        base = FastRecipe() if size == "full" else FastRecipe.cpu()
        if args.widths:
            base = base.replace(widths=tuple(int(w) for w in args.widths.split(",")))
        recipe = method_recipe(base, method, method_epochs)
        if method == "dpsgd":  # larger batches, no label smoothing, no BatchNorm statistics to average
            recipe = recipe.replace(batch_size=1024, lr=0.5, label_smoothing=0.0, ema=0.0, bf16=False)
        name = args.label or method
        folder = checkpoint_folder(out, name) if args.resume else None
        checkpoint = folder / "checkpoint.pt" if folder else None
        key_path = Path(args.key_file) if args.key_file else (folder / "key" if folder else None)
        key = None
        if key_path:
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
            key, _ = key_from_file(key_path)
        encoder = make_encoder("plain" if method == "dpsgd" else method, recipe, data_dir, key)
        previous = entries.get(name) if checkpoint and checkpoint.exists() else None
        entry = {"method": method, "model": f"FastNet widths {list(recipe.widths)}", "device": name,
                 "date": date, "epochs": 0, "seconds": 0.0, "best_accuracy": 0.0, "curve": [],
                 "reached": reached([]), "privacy": PRIVACY[method].format(epsilon=DP_EPSILON),
                 "settings": {**{k: v for k, v in vars(recipe).items()}, "encoder": repr(encoder),
                              "train_images": len(train_x), "test_images": len(test_x),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "data": "CIFAR-10 (JPEG q75 copy)"},
                 "load": [], **provenance()}
        if args.label:
            entry["label"] = args.label
        if previous is not None:  # the row so far, continued from its checkpoint
            entry.update({field: previous[field] for field in ("curve", "load", "epochs", "seconds", "best_accuracy",
                                                               "reached", "date", "wall_seconds") if field in previous})
            entry["resumptions"] = previous.get("resumptions", 0) + 1
            if previous.get("commit"):  # the earliest code the row ran: staleness judges from there
                entry["commit"] = previous["commit"]
                entry["dirty"] = sorted(set(previous.get("dirty", [])) | set(entry["dirty"]))
            print(f"{name}: resuming from {checkpoint} (epochs so far in {out}: {entry['epochs']})", flush=True)
        entries[row_name(entry)] = entry

        def on_epoch(row, entry=entry):
            row = {**row, "seconds": round(row["seconds"], 2), "train_loss": round(row["train_loss"], 4)}
            # an epoch trained again (killed before its checkpoint) replaces its row
            kept = sum(1 for r in entry["curve"] if r["epoch"] < row["epoch"])
            entry["curve"], entry["load"] = entry["curve"][:kept] + [row], entry["load"][:kept]
            entry["load"].append(round(os.getloadavg()[0], 2))  # the machine's 1-minute load at each epoch
            entry["epochs"], entry["seconds"] = row["epoch"], row["seconds"]
            entry["best_accuracy"] = max(entry["best_accuracy"], row["test_accuracy"])
            entry["reached"] = reached(entry["curve"])
            save(out, entries)
            if not args.quiet:
                print(f"{entry['method']} epoch {row['epoch']}: {100 * row['test_accuracy']:.2f}% after "
                      f"{row['seconds']:.0f} s (train loss {row['train_loss']:.3f}, load {entry['load'][-1]})",
                      flush=True)

        started = time.perf_counter()
        if method == "dpsgd":
            epsilon, sigma = train_dpsgd(train_x, train_y, test_x, test_y, recipe, data_dir, args.seed, on_epoch)
            entry["privacy"] = PRIVACY[method].format(epsilon=epsilon)
            entry["model"] = f"FastNet widths {list(recipe.widths)}, GroupNorm"
            entry["settings"].update(noise_multiplier=sigma, max_grad_norm=DP_CLIP, target_epsilon=DP_EPSILON,
                                     delta=DP_DELTA, sampling="Poisson", whitening="Tiny-ImageNet (public)")
        else:
            model, _ = train_fast(train_x, train_y, encoder, test_x, test_y, recipe, device=device, num_classes=10,
                                  seed=args.seed, on_epoch=on_epoch, progress=not args.quiet and sys.stderr.isatty(),
                                  checkpoint=checkpoint)
            if args.save_model:
                torch.save(model.state_dict(), args.save_model)
            if encoder.k > 1 and args.predict_repeats > 0:
                entry["predict"] = instahide_inference(model, encoder, test_x, test_y, args.predict_repeats)
        # with evaluation and setup, summed over resumptions
        entry["wall_seconds"] = round(entry.get("wall_seconds", 0.0) + time.perf_counter() - started, 1)
        save(out, entries)
        if checkpoint and checkpoint.exists():
            checkpoint.unlink()  # the row is complete; its key stays in the folder
    plot(out.with_suffix(".png"), entries)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
