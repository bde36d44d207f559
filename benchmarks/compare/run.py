"""InstaHide against plain training, DP-SGD (Opacus), MPC (CrypTen) and HE (TenSEAL CKKS):
throughput and accuracy of each on the same small CNN, CIFAR-10 and batch size, in one run.

    python benchmarks/compare/run.py --out benchmarks/results/compare

Installs nothing: methods whose packages are missing (opacus, crypten, tenseal; matplotlib
for the plot) are reported as skipped, with the reason, in the output and in results.json.
Writes results.json, results.md and slowdown.png (log-scale bars) to --out.

Throughput: every training method warms up, then the fast ones (plain, InstaHide, DP-SGD)
take turns in `--rounds` rounds of `--steps` steps in this process (median rates; slowdowns
are medians of per-round ratios to plain); CrypTen trains `--crypten-steps` steps after one
warm-up step in processes of its own, against plain steps timed just before and after;
TenSEAL encrypts and classifies `--tenseal-images` test images one at a time. Accuracy: the fast methods each train
a fresh model for `--epochs` epochs and are tested on plain test images; TenSEAL reports its
accuracy on the images it classified.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # methods, crypten_compat and report sit beside this file
sys.path.insert(1, str(HERE.parent))  # provenance

import numpy as np  # noqa: E402
import torch  # noqa: E402

import instahide  # noqa: E402

import methods  # noqa: E402
import report  # noqa: E402
from provenance import provenance  # noqa: E402

FAST = ["plain", "instahide_inside_k4", "instahide_cross_2+4", "instahide_torch_ops_k4", "dpsgd_opacus"]
SLOW = ["crypten_1process", "crypten_2party", "plain_infer_he_model", "tenseal_ckks_infer"]
ALL = FAST + SLOW
NEEDS = {"dpsgd_opacus": "opacus", "crypten_1process": "crypten", "crypten_2party": "crypten",
         "tenseal_ckks_infer": "tenseal"}
INSTALL = {"opacus": "pip install opacus==1.6.0", "tenseal": "pip install tenseal==0.3.18",
           "crypten": "pip install --no-deps crypten==0.4.1 omegaconf pyyaml onnx",
           "matplotlib": "pip install matplotlib"}
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/compare", help="folder for results.json, .md, .png")
    parser.add_argument("--methods", nargs="+", choices=ALL, default=ALL, help="methods to run (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (fast methods)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; medians are reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the rounds")
    parser.add_argument("--epochs", type=int, default=1, help="accuracy budget of the fast methods (0: no accuracy)")
    parser.add_argument("--crypten-steps", type=int, default=2, help="timed CrypTen steps (after one warm-up step)")
    parser.add_argument("--tenseal-images", type=int, default=10, help="test images classified under CKKS")
    parser.add_argument("--he-epochs", type=int, default=1, help="plaintext training epochs of the CKKS network")
    parser.add_argument("--noise-multiplier", type=float, default=1.0, help="DP-SGD noise, in units of the clip norm")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-sample clip norm")
    parser.add_argument("--train-limit", type=int, help="train on a random subset of this many images")
    parser.add_argument("--test-limit", type=int, help="test on a random subset of this many images")
    parser.add_argument("--data", help="folder with cifar10-train.tar, cifar10-test.tar, tiny-imagenet-val.tar "
                                       "(default: instahide's default data folder, ../shared/data)")
    parser.add_argument("--pool-cache", help="saved public pool (.npz), built from tiny-imagenet-val.tar the first "
                                             "time (default: under $TMPDIR/instahide-compare)")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="N random training images (N/4 test) and a random public pool, for tests")
    parser.add_argument("--threads", type=int, default=0, help="torch and encoder threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", dest="plot", action="store_false")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def _at_least(low):
    return (lambda value: value >= low), f"at least {low}"


# Each number's allowed values, in words for the message: checked before any work.
BOUNDS = {"batch_size": _at_least(1), "steps": _at_least(1), "rounds": _at_least(1), "warmup": _at_least(0),
          "epochs": _at_least(0), "crypten_steps": _at_least(1), "tenseal_images": _at_least(1),
          "he_epochs": _at_least(0), "noise_multiplier": _at_least(0.0),
          "max_grad_norm": ((lambda value: value > 0), "above 0"), "train_limit": _at_least(1),
          "test_limit": _at_least(1), "synthetic": _at_least(4),
          "threads": ((lambda value: 0 <= value <= 1024), "0 to 1024")}


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Every option in its range and every output writable, or exit 2 naming the option."""
    for name, (allowed, words) in BOUNDS.items():
        value = getattr(args, name)
        if value is not None and not allowed(value):
            parser.error(f"--{name.replace('_', '-')} {value}: must be {words}")
    for option, size in (("--synthetic", args.synthetic), ("--train-limit", args.train_limit)):
        if size is not None and size < args.batch_size:
            parser.error(f"{option} {size}: at least one batch (--batch-size {args.batch_size})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: not a folder")
    if not (out if out.is_dir() else out.resolve().parent).is_dir():
        parser.error(f"--out {out}: its parent folder does not exist")
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such folder")
    if args.pool_cache is not None and not Path(args.pool_cache).resolve().parent.is_dir():
        parser.error(f"--pool-cache {args.pool_cache}: its folder does not exist")


def check_packages() -> tuple[dict, dict]:
    """(versions of the optional packages found, reasons for those missing)."""
    found, missing = {}, {}
    for name in ("opacus", "crypten", "tenseal", "matplotlib"):
        try:
            if name == "crypten":
                from crypten_compat import import_crypten

                module = import_crypten()
            else:
                module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "installed")
        except ImportError as error:
            missing[name] = f"{name} is not importable ({error}); install: {INSTALL[name]}"
        except Exception as error:  # a broken install: skip its methods, say why
            missing[name] = f"{name} failed to import: {type(error).__name__}: {error}"
    return found, missing


def load_data(args) -> methods.Data:
    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        n = args.synthetic
        labels = rng.integers(0, 10, n + n // 4)
        # learnable: class c brightens channel c % 3
        images = rng.integers(0, 200, (n + n // 4, 32, 32, 3)).astype(np.uint8)
        images[np.arange(len(labels)), :, :, labels % 3] += (labels[:, None, None] * 5).astype(np.uint8)
        train = (images[:n], labels[:n])
        test = (images[n:], labels[n:])
        source = f"synthetic ({n} random training images)"
    else:
        from instahide.datasets import load_cifar10

        train = load_cifar10("train", data_dir=args.data)
        test = load_cifar10("test", data_dir=args.data)
        source = "CIFAR-10 (JPEG copy)"
    if args.train_limit:
        keep = np.sort(rng.permutation(len(train[0]))[:args.train_limit])
        train = (train[0][keep], train[1][keep])
    if args.test_limit:
        keep = np.sort(rng.permutation(len(test[0]))[:args.test_limit])
        test = (test[0][keep], test[1][keep])
    values = train[0].reshape(-1, 3) / 255.0
    return methods.Data(train[0], train[1], test[0], test[1], values.mean(axis=0).astype(np.float32),
                        values.std(axis=0).astype(np.float32), source)


def load_pool(args):
    """The Tiny-ImageNet public pool of cross mode, built once and cached (it takes a while)."""
    if args.synthetic:
        rng = np.random.default_rng(1)
        return instahide.PublicPool.from_array(rng.integers(0, 256, (64, 40, 40, 3), dtype=np.uint8), progress=False)
    from instahide.datasets import default_data_dir

    tar = Path(args.data or default_data_dir()) / "tiny-imagenet-val.tar"
    if args.pool_cache:
        cache = Path(args.pool_cache)
    else:
        stat = tar.stat()
        name = f"pool-{stat.st_size}-{int(stat.st_mtime)}.npz"
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / "instahide-compare" / name
    if cache.exists():
        log(f"public pool: loading {cache}")
        return instahide.PublicPool.load(cache)
    log(f"public pool: building from {tar} (once; cached to {cache})")
    pool = instahide.PublicPool.from_tar(tar, progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pool.save(cache)
    return pool


def make_trainer(name: str, data, args, pool):
    options = dict(data=data, batch_size=args.batch_size, seed=args.seed)
    if name == "plain":
        return methods.Plain(**options)
    if name == "instahide_inside_k4":
        return methods.InstaHideFused(**options)
    if name == "instahide_cross_2+4":
        return methods.InstaHideFused(**options, pool=pool)
    if name == "instahide_torch_ops_k4":
        return methods.InstaHideTorchOps(**options)
    if name == "dpsgd_opacus":
        return methods.DPSGD(**options, noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm)
    raise ValueError(name)


def entry(method, kind, privacy, **fields) -> dict:
    row = {"method": method, "kind": kind, "status": "ok", "samples_per_s": None, "slowdown_vs_plain": None,
           "accuracy": None, "epochs": None, "steps": None, "privacy": privacy, "note": ""}
    row.update(fields)
    return row


def failed(method, kind, privacy, error: BaseException) -> dict:
    log(f"{method}: FAILED: {type(error).__name__}: {error}")
    traceback.print_exc()
    return entry(method, kind, privacy, status="failed", note=f"{type(error).__name__}: {error}")


def run_fast(args, data, wanted, pool) -> tuple[list[dict], float]:
    names = [m for m in FAST if m in wanted]
    if "plain" not in names:
        names.insert(0, "plain")  # the baseline of every slowdown
    trainers, rows = [], []
    for name in names:
        try:
            trainers.append(make_trainer(name, data, args, pool))
        except Exception as error:
            rows.append(failed(name, "train", "", error))
    log(f"throughput: {', '.join(t.name for t in trainers)}; batch {args.batch_size}, {args.warmup} warm-up steps, "
        f"{args.rounds} rounds of {args.steps} steps, taking turns")
    rates, batch_share = methods.time_rounds(trainers, args.steps, args.rounds, args.warmup, progress=log)
    accuracy, epoch_seconds, privacy = {}, {}, {t.name: t.describe_privacy() for t in trainers}
    if args.epochs > 0:
        for name in [t.name for t in trainers]:
            log(f"accuracy: {name}, {args.epochs} epoch(s) on {len(data.train_x)} images")
            trainer = make_trainer(name, data, args, pool)
            start = time.perf_counter()
            trainer.train_epochs(args.epochs)
            epoch_seconds[name] = (time.perf_counter() - start) / args.epochs
            accuracy[name] = data.test_accuracy(trainer.model)
            privacy[name] = trainer.describe_privacy()
            log(f"  {name}: test accuracy {accuracy[name]:.2%}, {epoch_seconds[name]:.1f} s per epoch, {privacy[name]}")
    for t in trainers:
        note = f"batch preparation{' (encoding)' if t.name.startswith('instahide') else ''} " \
               f"{batch_share[t.name]:.1%} of the timed step time"
        if t.name in epoch_seconds:
            note += f"; {epoch_seconds[t.name]:.1f} s per training epoch (accuracy run)"
        if t.name == "dpsgd_opacus":
            note += f"; Poisson sampling, expected batch size {args.batch_size}"
        # the slowdown is the median of the per-round ratios: the machine's load changes between
        # rounds far more than within one (a shared machine), and the ratio cancels it
        ratios = [p / r for p, r in zip(rates["plain"], rates[t.name], strict=True)]
        rows.append(entry(t.name, "train", privacy[t.name], samples_per_s=median(rates[t.name]),
                          slowdown_vs_plain=median(ratios), accuracy=accuracy.get(t.name),
                          epochs=args.epochs if args.epochs > 0 else None, steps=args.rounds * args.steps,
                          note=note, per_round_samples_per_s=rates[t.name]))
    plain_trainer = next(t for t in trainers if t.name == "plain")
    return rows, plain_trainer


def median(values) -> float:
    return float(np.median(values))


def run_crypten(args, data, wanted, plain_trainer) -> list[dict]:
    rows = []
    for name, parties in (("crypten_1process", 1), ("crypten_2party", 2)):
        if name not in wanted:
            continue
        privacy = "MPC, 1-process simulation" if parties == 1 else "MPC 2-party (gloo, loopback)"
        log(f"{name}: encrypted training, batch {args.batch_size}, 1 warm-up + {args.crypten_steps} timed steps")
        # plain steps right before and after, as the baseline of this slowdown (the load drifts)
        before = methods.steps_rate(plain_trainer, args.steps)
        try:
            result = methods.crypten_training(data, args.batch_size, parties, args.crypten_steps)
        except Exception as error:
            rows.append(failed(name, "train", privacy, error))
            continue
        plain_rate = (before + methods.steps_rate(plain_trainer, args.steps)) / 2
        rows.append(entry(name, "train", privacy, samples_per_s=result["samples_per_s"],
                          slowdown_vs_plain=plain_rate / result["samples_per_s"], steps=args.crypten_steps,
                          plain_reference_samples_per_s=plain_rate,
                          note=f"{result['seconds_per_step']:.1f} s per step; against plain training at "
                               f"{plain_rate:,.0f} samples/s measured just before and after; "
                               f"{result['threads_per_party']} torch "
                               f"thread(s) per party; accuracy not measured (a whole epoch would take about "
                               f"{result['seconds_per_step'] * len(data.train_x) / args.batch_size / 3600:.1f} h)"))
        log(f"  {name}: {result['samples_per_s']:.2f} samples/s ({result['seconds_per_step']:.1f} s per step)")
    return rows


def run_he(args, data, wanted) -> list[dict]:
    rows = []
    log(f"CKKS network: plaintext training, {args.he_epochs} epoch(s)")
    model = methods.train_he_model(data, args.batch_size, args.he_epochs, args.seed)
    plain_accuracy = _he_accuracy(model, data)
    plain_rate = methods.plain_inference_rate(model, data, args.batch_size)
    plain_rates = [plain_rate]
    log(f"  plaintext: test accuracy {plain_accuracy:.2%}, inference {plain_rate:,.0f} samples/s")
    result = None
    if "tenseal_ckks_infer" in wanted:
        log(f"tenseal_ckks_infer: {args.tenseal_images} encrypted test images")
        try:
            result = methods.tenseal_inference(model, data, args.tenseal_images, progress=log)
        except Exception as error:
            rows.append(failed("tenseal_ckks_infer", "infer", "CKKS N=8192", error))
        plain_rates.append(methods.plain_inference_rate(model, data, args.batch_size))  # after, as the load drifts
    plain_rate = median(plain_rates)
    if "plain_infer_he_model" in wanted:
        rows.append(entry("plain_infer_he_model", "infer", "none", samples_per_s=plain_rate, slowdown_vs_plain=1.0,
                          accuracy=plain_accuracy, epochs=args.he_epochs,
                          note=f"the CKKS network in plain PyTorch, batches of {args.batch_size}, measured before "
                               "and after the encrypted images (mean); the baseline of inference slowdowns"))
    if result is not None:
        rows.append(entry("tenseal_ckks_infer", "infer", f"CKKS N={result['poly_modulus_degree']}",
                          samples_per_s=result["samples_per_s"], slowdown_vs_plain=plain_rate / result["samples_per_s"],
                          accuracy=result["accuracy"], steps=result["images"],
                          note=f"one image at a time, {result['seconds_per_image']:.2f} s each (encrypt + evaluate + "
                               f"decrypt); accuracy on those {result['images']} images; argmax agrees with plaintext "
                               f"on {result['agreement_with_plaintext']:.0%}, max logit error "
                               f"{result['max_logit_error']:.2g}; encrypted training not attempted (infeasible "
                               "in this budget)"))
        log(f"  tenseal: {result['samples_per_s']:.3f} samples/s")
    return rows


def _he_accuracy(model, data) -> float:
    with torch.no_grad():
        predictions = model(methods.normalized_test(data)).argmax(1)
    return float((predictions == torch.from_numpy(data.test_y)).float().mean())


def machine() -> dict:
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            processor = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "processor": processor, "cores": instahide.available_cores(),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or instahide.available_cores())
    found, missing = check_packages()
    log("optional packages: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "none"))
    for reason in missing.values():
        log(f"missing: {reason}")
    wanted = list(args.methods)
    rows = []
    for name in list(wanted):
        if NEEDS.get(name) in missing:
            rows.append(entry(name, "infer" if name.endswith("infer") else "train", "", status="skipped",
                              note=missing[NEEDS[name]]))
            log(f"{name}: skipped ({missing[NEEDS[name]]})")
            wanted.remove(name)

    load_before = os.getloadavg()
    log("loading data")
    data = load_data(args)
    log(f"data: {data.source}, {len(data.train_x)} training and {len(data.test_x)} test images")
    pool = load_pool(args) if "instahide_cross_2+4" in wanted else None
    fast_rows, plain_trainer = run_fast(args, data, wanted, pool)
    rows += fast_rows
    rows += run_crypten(args, data, wanted, plain_trainer)
    if {"plain_infer_he_model", "tenseal_ckks_infer"} & set(wanted):
        rows += run_he(args, data, wanted)

    order = {name: i for i, name in enumerate(ALL)}
    rows.sort(key=lambda r: order[r["method"]])
    results = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv)),
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "data": {"source": data.source, "train": len(data.train_x), "test": len(data.test_x)},
        "model": "SmallCNN (instahide.torch.models, width 32) with its BatchNorm layers removed; "
                 "SGD lr 0.05, momentum 0.9 (TenSEAL: its own CKKS network, see the note)",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "packages": found,
        "missing": missing,
        "seconds": time.perf_counter() - STARTED,
        "results": rows,
        **provenance(),
    }
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=2)
    (out / "results.md").write_text(report.markdown(results))
    plot = report.plot(results, out / "slowdown.png") if args.plot else "skipped (--no-plot)"
    log(f"plot: {plot}")
    print("\n" + report.markdown(results))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
