"""Networks: a registry of architectures, each built for a given input size and class count.

Every model is `Classifier(preprocess, body)`: it takes uint8 (or float 0..255) NCHW images and
returns logits. Normalisation lives inside the model, as buffers that are saved with the weights,
so training, server prediction and an exported graph can never disagree about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class Preprocess(nn.Module):
    """uint8 (or float 0..255) NCHW -> float32 normalised with per-channel mean/std (0..255 units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Classifier(nn.Module):
    """Preprocessing + network. Carries its own build arguments so a saved copy can be rebuilt."""

    def __init__(self, preprocess: Preprocess, body: nn.Module, *, arch: str, arch_args: dict[str, Any]):
        super().__init__()
        self.preprocess = preprocess
        self.body = body
        self.arch = arch
        self.arch_args = dict(arch_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.preprocess(x))


def _conv_size(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


def _pool_kernel(size: int, min_out: int) -> int:
    """Halve a side only while the result stays at least min_out (small inputs like 8×8, 7×5)."""
    return 2 if size // 2 >= min_out else 1


class Residual(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def seed_cnn(*, num_classes: int, in_channels: int, height: int, width: int) -> nn.Module:
    """The Keras CIFAR-10 tutorial network (tensorflow.org/tutorials/images/cnn), for any H×W.

    Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense(C), 3×3 'valid' convolutions as in the
    tutorial; a side too small for a valid conv is padded instead, and a side too small to pool is
    left alone, so 8×8 (and even 1×1) inputs still work. The flatten size is computed, not assumed.
    """
    layers: list[nn.Module] = []
    h, w, channels = height, width, in_channels
    for i, out in enumerate((32, 64, 64)):
        pad = (0 if h >= 3 else 1, 0 if w >= 3 else 1)
        layers += [nn.Conv2d(channels, out, 3, padding=pad), nn.ReLU(inplace=True)]
        h, w, channels = _conv_size(h, 3, pad[0]), _conv_size(w, 3, pad[1]), out
        if i < 2:
            kernel = (_pool_kernel(h, 1), _pool_kernel(w, 1))
            layers.append(nn.MaxPool2d(kernel))
            h, w = h // kernel[0], w // kernel[1]
    head = nn.Linear(64, num_classes)
    layers += [nn.Flatten(), nn.Linear(channels * h * w, 64), nn.ReLU(inplace=True), head]
    # Small head init, so the first loss is ≈ log(num_classes) instead of a confident guess.
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


def resnet(*, num_classes: int, in_channels: int, height: int, width: int, base_filters: int = 16) -> nn.Module:
    """ResNet-9 (Myrtle.ai's DAWNBench CIFAR-10 net, David Page) narrowed to base_filters.

    stem conv(w) → conv(2w), pool, residual(2 convs) → conv(4w), pool → conv(8w), pool, residual
    → global max pool → linear scaled by 1/8 (as in that net and airbench: a calm start). Every conv is
    3×3 + BatchNorm + GELU. Inputs larger than 40 px are max-pooled after the stem first, so the
    heavy layers always run at ≤ ~40 px: a 64×64 upload then costs about what CIFAR's 32×32 does,
    which matters on CPU. Pools shrink a side only while it stays ≥ 2 (8×8 and 7×5 inputs work).
    """
    w = base_filters
    h_, w_ = height, width
    layers: list[nn.Module] = [*_conv_bn(in_channels, w)]
    while max(h_, w_) > 40:
        kernel = (_pool_kernel(h_, 2), _pool_kernel(w_, 2))
        if kernel == (1, 1):
            break
        layers.append(nn.MaxPool2d(kernel))
        h_, w_ = h_ // kernel[0], w_ // kernel[1]

    def pool() -> nn.Module:
        nonlocal h_, w_
        kernel = (_pool_kernel(h_, 2), _pool_kernel(w_, 2))
        h_, w_ = h_ // kernel[0], w_ // kernel[1]
        return nn.MaxPool2d(kernel) if kernel != (1, 1) else nn.Identity()

    layers += [*_conv_bn(w, 2 * w), pool(), Residual(*_conv_bn(2 * w, 2 * w), *_conv_bn(2 * w, 2 * w))]
    layers += [*_conv_bn(2 * w, 4 * w), pool()]
    layers += [*_conv_bn(4 * w, 8 * w), pool(), Residual(*_conv_bn(8 * w, 8 * w), *_conv_bn(8 * w, 8 * w))]
    head = nn.Linear(8 * w, num_classes, bias=False)
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), head, Scale(0.125)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]
    label: str  # what the job form shows
    help: str
    defaults: dict[str, Any] = field(default_factory=dict)  # arch_args when none are given


ARCHITECTURES: dict[str, Architecture] = {
    "seed_cnn": Architecture(
        seed_cnn,
        label="Seed CNN (Keras tutorial)",
        help="The classic 3-conv Keras CIFAR-10 tutorial network: a small, well-known baseline.",
    ),
    "resnet": Architecture(
        resnet,
        label="ResNet-9 (small, batch norm)",
        help="A small residual network with batch norm: trains fast and is far more accurate.",
        defaults={"base_filters": 16},  # widths 16-32-64-128; 32 is ~3x slower on CPU (docs/benchmarks.md)
    ),
}


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    height: int,
    width: int,
    mean: Sequence[float],
    std: Sequence[float],
    **arch_args: Any,
) -> Classifier:
    """Build `arch` for uint8 NCHW input of in_channels×height×width; mean/std in 0..255 units."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}. Choose one of: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    if num_classes < 1 or in_channels < 1 or height < 1 or width < 1:
        raise ValueError(
            f"num_classes, in_channels, height and width must be positive, got "
            f"{num_classes}, {in_channels}, {height}, {width}"
        )
    if len(mean) != in_channels:
        raise ValueError(f"mean/std need one value per input channel ({in_channels}), got {len(mean)}")
    unknown = set(arch_args) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise ValueError(f"Unknown argument(s) for {arch}: {', '.join(sorted(unknown))} (allowed: {allowed})")
    args = {**spec.defaults, **arch_args}
    body = spec.build(num_classes=num_classes, in_channels=in_channels, height=height, width=width, **args)
    mean = [float(m) for m in mean]
    std = [float(s) for s in std]
    if not all(math.isfinite(v) for v in mean + std):
        raise ValueError("mean/std must be finite numbers")
    return Classifier(Preprocess(mean, std), body, arch=arch, arch_args=args)
