"""Models for the training command: the authors' pre-activation ResNet-18 (CIFAR version),
a small CNN that trains in minutes on a CPU, and the fast recipe's FastNet. Needs torch."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016), as in the authors' code."""

    def __init__(self, num_classes: int = 10, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SmallCNN(nn.Module):
    """Three conv blocks and a linear layer: small enough to train on a CPU in minutes."""

    def __init__(self, num_classes: int = 10, channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def group_norm(channels: int) -> nn.Module:
    """GroupNorm with 16 channels a group: per-sample normalization, which DP-SGD can train
    (BatchNorm mixes the samples of a batch, so per-sample gradients do not exist)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class ConvGroup(nn.Sequential):
    """conv 3x3, max-pool 2, norm, GELU, conv 3x3, norm, GELU (the fast recipes' block); `norm`
    makes the normalization layer for a channel count (BatchNorm by default)."""

    def __init__(self, cin: int, cout: int, norm=nn.BatchNorm2d) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), norm(cout),
                         nn.GELU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout), nn.GELU())


class FastNet(nn.Module):
    """The fast recipe's network (instahide.torch.recipe), after Jordan's fast CIFAR-10 nets (arXiv
    2404.00498): a frozen 2x2 patch-whitening convolution, three conv groups (64/256/256 at full
    width), global max-pooling and a linear layer. `abs_input`: the net reads |x| (the sign
    mask is independent of the image, so |encoding| holds all the encoding's information).
    `norm=group_norm` for DP-SGD."""

    def __init__(self, num_classes: int = 10, channels: int = 3, widths=(64, 256, 256), abs_input: bool = False,
                 rms_input: bool = False, patch: int = 2, norm=nn.BatchNorm2d) -> None:
        super().__init__()
        self.abs_input, self.rms_input = bool(abs_input), bool(rms_input)
        whitened = 2 * channels * patch * patch  # each whitening direction with both signs
        self.whiten = nn.Conv2d(channels, whitened, patch, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.groups = nn.Sequential(ConvGroup(whitened, widths[0], norm), ConvGroup(widths[0], widths[1], norm),
                                    ConvGroup(widths[1], widths[2], norm))
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The input transform, the same at training and test time: |x| with `abs_input`; each
        input divided by its root mean square with `rms_input` (a mixture of k images has less
        contrast than one image: this puts encodings and plain test images on one scale)."""
        if self.abs_input:
            x = x.abs()
        if self.rms_input:
            x = x * torch.rsqrt(x.float().square().mean(dim=(1, 2, 3), keepdim=True) + 1e-6).to(x.dtype)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform(x)
        x = self.groups(F.gelu(self.whiten(x)))
        # the logits scaled down, as the fast recipes do: large steps early stay stable
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) / 8

    @torch.no_grad()
    def init_whitening(self, inputs: torch.Tensor, eps: float = 5e-4, centred: bool = True) -> None:
        """Sets the frozen first layer to whiten the patches of `inputs`: training inputs as the
        net reads them (encodings, never the private images they hide), (n, C, H, W); with
        `centred=False` the patches' second moments, not their covariance (airbench's fit)."""
        x = self.transform(inputs.float())
        size = self.whiten.kernel_size
        patches = F.unfold(x, size).transpose(1, 2).reshape(-1, x.shape[1] * size[0] * size[1]).double()
        if centred:
            patches = patches - patches.mean(dim=0)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        directions = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]
        directions = directions.reshape(-1, x.shape[1], *size).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([directions, -directions]))
        nn.init.zeros_(self.whiten.bias)  # type: ignore[arg-type]  # the layer has a bias


MODELS = {"preact_resnet18": PreActResNet18, "small_cnn": SmallCNN}
