"""The compared methods, one runner each, all on one model, one data set and one batch size.

The model is the package's SmallCNN with its BatchNorm layers removed (`make_model`): Opacus
cannot train BatchNorm (per-sample gradients mix samples) and CrypTen does not implement
GroupNorm (its GroupNorm raises NotImplementedError), so the only normalization both accept
is none. Every method trains this same model.

Fast methods (plain, InstaHide, DP-SGD) are `Trainer`s: `step()` trains on one batch and
returns the samples it used; run.py times them in interleaved rounds and trains each for the
accuracy budget. CrypTen runs in its own processes (`crypten_training`), TenSEAL encrypted
inference in `tenseal_inference`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import instahide
from instahide.cli.train import evaluate
from instahide.torch import InstaHideLoader, soft_cross_entropy
from instahide.torch.models import SmallCNN

LEARNING_RATE = 0.05
MOMENTUM = 0.9


def make_model(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """SmallCNN (three conv blocks, width 32, and a linear layer) without BatchNorm."""
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=num_classes)
    _replace_batchnorm(model)
    return model


def _replace_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _replace_batchnorm(child)


@dataclass
class Data:
    """CIFAR-10 (or synthetic) images as stored (N, 32, 32, 3) uint8, their normalization, and the
    normalized float NCHW copy that the plain and PyTorch-op methods read (prepared once)."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    source: str
    classes: int = 10

    def __post_init__(self) -> None:
        x = torch.from_numpy(self.train_x).permute(0, 3, 1, 2).float().div_(255)
        mean, std = torch.from_numpy(self.mean).float(), torch.from_numpy(self.std).float()
        self.train_float = ((x - mean[:, None, None]) / std[:, None, None]).contiguous()
        self.train_labels = torch.from_numpy(self.train_y)

    def test_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.test_x, self.test_y, self.mean, self.std, torch.device("cpu"))[1]


class Trainer:
    """One method's model, optimizer and endless batch stream; `step()` trains on one batch."""

    name = ""
    kind = "train"
    privacy = ""

    def __init__(self, data: Data, batch_size: int, seed: int = 0) -> None:
        self.data, self.batch_size = data, batch_size
        self.model = make_model(data.classes, seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.epoch, self.batches = 0, iter(())
        self.batch_seconds = self.step_seconds = 0.0  # time in next_batch (InstaHide: encoding) and in step

    def epoch_batches(self):
        """The batches of the next epoch: (inputs, targets)."""
        raise NotImplementedError

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets)

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.epoch_batches())
            self.epoch += 1
            return next(self.batches)

    def step(self) -> int:
        start = time.perf_counter()
        self.model.train()
        x, y = self.next_batch()
        fetched = time.perf_counter()
        loss = self.loss(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.batch_seconds += fetched - start
        self.step_seconds += time.perf_counter() - start
        return len(x)

    def train_epochs(self, epochs: int) -> None:
        """The accuracy budget: whole epochs from a fresh stream."""
        for _ in range(epochs):
            self.model.train()
            for x, y in self.epoch_batches():
                loss = self.loss(self.model(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()

    def describe_privacy(self) -> str:
        return self.privacy


class Plain(Trainer):
    """Plain PyTorch: shuffled batches gathered from the normalized float set."""

    name, privacy = "plain", "none"

    def epoch_batches(self):
        order = torch.randperm(len(self.data.train_float))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            yield self.data.train_float[rows], self.data.train_labels[rows]


class InstaHideFused(Trainer):
    """InstaHide with the package's fused encoder, through `InstaHideLoader` (uint8 in, one
    pass per batch: normalization, mixing, sign mask); soft-label cross-entropy."""

    def __init__(self, data: Data, batch_size: int, seed: int = 0, pool=None) -> None:
        super().__init__(data, batch_size, seed)
        options = dict(mean=data.mean, std=data.std, layout="NHWC")
        if pool is None:
            self.name, self.privacy = "instahide_inside_k4", "InstaHide inside k=4"
            encoder = instahide.Encoder(k=4, **options)
        else:
            self.name, self.privacy = "instahide_cross_2+4", "InstaHide cross k=6 (2 private + 4 public)"
            encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=data.train_x.shape[1:3],
                                        dom=0.3, **options)
        self.loader = InstaHideLoader(data.train_x, data.train_y, encoder, batch_size=batch_size)

    def epoch_batches(self):
        return iter(self.loader)

    def loss(self, logits, targets):
        return soft_cross_entropy(logits, targets)


class InstaHideTorchOps(Trainer):
    """InstaHide written with PyTorch ops as in the authors' train_inside.py: per epoch k-1
    `randperm` partner orders and coefficients |N(0,1)| normalized (rows redrawn while a
    coefficient exceeds 0.65); per batch gathers of the normalized float set, the convex mix,
    mixed one-hot labels and a `randint` sign mask. (The float set is normalized once, outside
    the timing, which favours this method over encoding from uint8.)"""

    name, privacy = "instahide_torch_ops_k4", "InstaHide inside k=4"
    k, upper = 4, 0.65

    def epoch_batches(self):
        n, k = len(self.data.train_float), self.k
        perms = [torch.arange(n)] + [torch.randperm(n) for _ in range(k - 1)]
        lam = torch.randn(n, k).abs()
        lam /= lam.sum(dim=1, keepdim=True)
        while (redraw := lam.max(dim=1).values > self.upper).any():
            fresh = torch.randn(int(redraw.sum()), k).abs()
            lam[redraw] = fresh / fresh.sum(dim=1, keepdim=True)
        order = torch.randperm(n)
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            mixed = torch.zeros_like(self.data.train_float[:len(rows)])
            soft = torch.zeros(len(rows), self.data.classes)
            for t in range(k):
                partners = perms[t][rows]
                weight = lam[rows, t]
                mixed += weight[:, None, None, None] * self.data.train_float[partners]
                soft += weight[:, None] * F.one_hot(self.data.train_labels[partners], self.data.classes)
            mixed *= torch.randint(2, size=mixed.shape) * 2.0 - 1
            yield mixed, soft

    def loss(self, logits, targets):
        return soft_cross_entropy(logits, targets)


class DPSGD(Trainer):
    """DP-SGD with Opacus: Poisson-sampled batches (expected size batch_size), per-sample
    gradients clipped to `max_grad_norm`, Gaussian noise of `noise_multiplier` x that norm;
    epsilon from the RDP accountant at delta 1e-5."""

    name = "dpsgd_opacus"
    delta = 1e-5

    def __init__(self, data: Data, batch_size: int, seed: int = 0, noise_multiplier: float = 1.0,
                 max_grad_norm: float = 1.0) -> None:
        super().__init__(data, batch_size, seed)
        from opacus import PrivacyEngine

        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        dataset = torch.utils.data.TensorDataset(data.train_float, data.train_labels)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opacus' notice about the secure RNG being off (we time, not deploy)
            self.engine = PrivacyEngine(accountant="rdp")
            self.model, self.optimizer, self.loader = self.engine.make_private(
                module=self.model, optimizer=self.optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm)

    def epoch_batches(self):
        return iter(self.loader)

    def step(self) -> int:
        with warnings.catch_warnings():
            # torch's notice that the input needs no gradient, raised by opacus' backward hooks
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            return super().step()

    def train_epochs(self, epochs: int) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            super().train_epochs(epochs)

    def epsilon(self) -> float:
        return float(self.engine.get_epsilon(self.delta))

    def describe_privacy(self) -> str:
        return f"epsilon={self.epsilon():.2f} at delta=1e-5 (sigma={self.noise_multiplier}, C={self.max_grad_norm})"


def time_rounds(trainers: list[Trainer], steps: int, rounds: int, warmup: int, progress=print) -> tuple[dict, dict]:
    """Samples/s of each trainer in each of `rounds` rounds of `steps` steps, the trainers
    taking turns within each round so that all see the same machine state; and the share of
    the timed step time each spent preparing batches (for InstaHide: encoding)."""
    for trainer in trainers:
        for _ in range(warmup):
            trainer.step()
        trainer.batch_seconds = trainer.step_seconds = 0.0
    rates: dict[str, list[float]] = {t.name: [] for t in trainers}
    for r in range(rounds):
        for trainer in trainers:
            rates[trainer.name].append(steps_rate(trainer, steps))
        progress(f"  round {r + 1}/{rounds}: " +
                 ", ".join(f"{name} {values[-1]:,.0f}/s" for name, values in rates.items()))
    return rates, {t.name: t.batch_seconds / t.step_seconds for t in trainers}


def steps_rate(trainer: Trainer, steps: int) -> float:
    """Samples/s of `steps` training steps."""
    start = time.perf_counter()
    samples = sum(trainer.step() for _ in range(steps))
    return samples / (time.perf_counter() - start)


# --- CrypTen ---------------------------------------------------------------------------------

def crypten_training(data: Data, batch_size: int, parties: int, steps: int, warmup: int = 1,
                     timeout: float = 900.0) -> dict:
    """Encrypted training of the model with CrypTen: `parties` processes (1: the one-process
    simulation; 2: two parties over loopback, gloo backend, file rendezvous), each started with
    spawn. Model, inputs and labels are secret-shared (the model encrypted from its PyTorch
    initialization); `warmup` steps, then `steps` timed steps of `batch_size` samples.
    Returns {"samples_per_s", "seconds_per_step", "loss"} as measured by party 0."""
    import os
    import tempfile

    import torch.multiprocessing as mp

    rng = np.random.default_rng(0)
    rows = rng.permutation(len(data.train_float))[:batch_size * (warmup + steps)]
    x = data.train_float[rows].clone()
    y = F.one_hot(data.train_labels[rows], data.classes).float()
    state = make_model(data.classes).state_dict()
    context = mp.get_context("spawn")
    queue = context.Queue()
    threads = max(1, torch.get_num_threads() // parties)  # the parties share this machine's cores
    with tempfile.TemporaryDirectory() as folder:
        rendezvous = os.path.join(folder, "rendezvous")
        processes = [context.Process(target=_crypten_party, args=(rank, parties, rendezvous, threads, state, x, y,
                                                                  batch_size, warmup, steps, data.classes, queue))
                     for rank in range(parties)]
        for p in processes:
            p.start()
        try:
            result = queue.get(timeout=timeout)
        finally:
            for p in processes:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _crypten_party(rank, parties, rendezvous, threads, state, x, y, batch_size, warmup, steps, classes, queue):
    import os
    import traceback

    try:
        os.environ.update({"WORLD_SIZE": str(parties), "RANK": str(rank), "RENDEZVOUS": f"file://{rendezvous}",
                           "DISTRIBUTED_BACKEND": "gloo"})
        torch.set_num_threads(threads)
        # crypten's ONNX reader wraps read-only numpy arrays (it copies nothing it then writes)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        from crypten_compat import import_crypten

        crypten = import_crypten()
        crypten.init()
        model = make_model(classes)
        model.load_state_dict(state)
        encrypted = crypten.nn.from_pytorch(model, torch.zeros(1, *x.shape[1:]))
        encrypted.encrypt()
        encrypted.train()
        criterion = crypten.nn.CrossEntropyLoss()
        durations, loss = [], float("nan")
        for i in range(warmup + steps):
            start = time.perf_counter()
            rows = slice(i * batch_size, (i + 1) * batch_size)
            x_enc = crypten.cryptensor(x[rows], src=0)  # party 0 holds the data
            y_enc = crypten.cryptensor(y[rows], src=0)
            output = criterion(encrypted(x_enc), y_enc)
            encrypted.zero_grad()
            output.backward()
            encrypted.update_parameters(LEARNING_RATE)
            loss = output.get_plain_text().item()
            crypten.comm.get().barrier() if parties > 1 else None
            durations.append(time.perf_counter() - start)
            if rank == 0:
                print(f"    crypten {parties} part{'y' if parties == 1 else 'ies'}: step {i + 1}/{warmup + steps} "
                      f"{durations[-1]:.1f} s, loss {loss:.3f}{' (warm-up)' if i < warmup else ''}", flush=True)
        timed = durations[warmup:]
        if rank == 0:
            queue.put({"samples_per_s": batch_size * len(timed) / sum(timed), "seconds_per_step": float(np.mean(timed)),
                       "loss": loss, "threads_per_party": threads})
        crypten.uninit()
    except Exception:  # report it to the parent rather than leave it waiting
        if rank == 0 or parties == 1:
            queue.put({"error": traceback.format_exc(limit=4)})
        raise


# --- TenSEAL CKKS encrypted inference ---------------------------------------------------------

class HEConvNet(nn.Module):
    """TenSEAL's tutorial network for CKKS, sized for 32x32x3: conv 8x8 stride 4 (4 channels,
    7x7 windows), square, linear 196 -> 64, square, linear 64 -> 10. Square activations keep it
    to 5 multiplicative levels."""

    def __init__(self, num_classes: int = 10, channels: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, kernel_size=8, stride=4)
        self.fc1 = nn.Linear(4 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.conv(x) ** 2
        x = self.fc1(x.flatten(1)) ** 2
        return self.fc2(x)


def train_he_model(data: Data, batch_size: int, epochs: int, seed: int = 0) -> HEConvNet:
    """Trains the CKKS network in plaintext (Adam, as in the tutorial)."""
    torch.manual_seed(seed)
    model = HEConvNet(data.classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data.train_float))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(model(data.train_float[rows]), data.train_labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def normalized_test(data: Data, count: int | None = None) -> torch.Tensor:
    x = torch.from_numpy(data.test_x[:count]).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.from_numpy(data.mean).float()[:, None, None]) / torch.from_numpy(data.std).float()[:, None, None]


def plain_inference_rate(model: nn.Module, data: Data, batch_size: int, repeats: int = 20) -> float:
    """Plain PyTorch inference samples/s of `model` on test batches."""
    x = normalized_test(data, batch_size)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return repeats * len(x) / (time.perf_counter() - start)


def tenseal_inference(model: HEConvNet, data: Data, images: int, poly_modulus_degree: int = 8192,
                      progress=print) -> dict:
    """Encrypts `images` test images one at a time (im2col encoding per input channel), runs
    the network on the ciphertexts and decrypts the logits. Times encryption + evaluation +
    decryption per image."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree, -1, [31, 26, 26, 26, 26, 26, 26, 31])
    context.global_scale = 2 ** 26
    context.generate_galois_keys()
    kernel, stride = model.conv.kernel_size[0], model.conv.stride[0]
    conv_w = model.conv.weight.detach().tolist()  # (out, in, kh, kw)
    conv_b = model.conv.bias.detach().tolist()
    fc1_w, fc1_b = model.fc1.weight.detach().T.tolist(), model.fc1.bias.detach().tolist()
    fc2_w, fc2_b = model.fc2.weight.detach().T.tolist(), model.fc2.bias.detach().tolist()
    x = normalized_test(data, images)
    with torch.no_grad():
        plain_logits = model(x)
    correct, agree, max_error, seconds = 0, 0, 0.0, []
    for i in range(len(x)):
        start = time.perf_counter()
        encoded = [ts.im2col_encoding(context, x[i, c].tolist(), kernel, kernel, stride) for c in range(x.shape[1])]
        windows = encoded[0][1]
        channels = []
        for o, bias in enumerate(conv_b):
            out = None
            for c, (enc, _) in enumerate(encoded):
                term = enc.conv2d_im2col(conv_w[o][c], windows)
                out = term if out is None else out + term
            channels.append(out + bias)
        h = ts.CKKSVector.pack_vectors(channels)
        h.square_()
        h = h.mm(fc1_w) + fc1_b
        h.square_()
        h = h.mm(fc2_w) + fc2_b
        logits = torch.tensor(h.decrypt())
        seconds.append(time.perf_counter() - start)
        correct += int(logits.argmax() == int(data.test_y[i]))
        agree += int(logits.argmax() == plain_logits[i].argmax())
        max_error = max(max_error, float((logits - plain_logits[i]).abs().max()))
        progress(f"    ckks image {i + 1}/{len(x)}: {seconds[-1]:.2f} s")
    return {"samples_per_s": len(x) / sum(seconds), "seconds_per_image": float(np.mean(seconds)),
            "accuracy": correct / len(x), "agreement_with_plaintext": agree / len(x),
            "max_logit_error": max_error, "images": len(x), "poly_modulus_degree": poly_modulus_degree}
