"""Networks: a registry of architectures, each built for a given input size and class count.

Image models are `Classifier(preprocess, body)`: they take uint8 (or float 0..255) NCHW images and
return logits. Speech models are `AudioClassifier(frontend, normalise, specaugment, body)`: they
take float32 N×L waveforms in [-1, 1] (or int16) at the model's sample rate and return logits; the
log-mel/MFCC front end is part of the model. Normalisation lives inside the model, as buffers
that are saved with the weights, so training, server prediction and an exported graph can never
disagree about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from ml.audio import MEL


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


# ---------------------------------------------------------------------------------------------
# Speech: front end, normalisation, SpecAugment and the three bodies.

# Features of a clip shorter than this many frames are computed on a zero-padded clip, so every
# body (three time pools of 2) sees at least one frame at the end. 8 frames = 70 ms at 16 kHz.
MIN_FRAMES = 8
# log(power + LOG_OFFSET): torchaudio's MFCC(log_mels=True) uses the same offset. A plain log keeps
# the front end per-clip (AmplitudeToDB's top_db clamps against the max of the whole batch, so a
# clip's features would depend on its neighbours) and exports to ONNX as one Log node.
LOG_OFFSET = 1e-6
# Per-clip floor: log-mel values are raised to at least (the clip's own peak - FLOOR_DB). FSDD pads
# clips with digital silence (log(0 + 1e-6) = -13.8 in most frames) while training adds white noise
# at 30-50 dB SNR, which puts training "silence" at another level than test silence; bands above
# 4 kHz of 8 kHz recordings are empty at test time and noise in training. 60 dB below the peak
# floors 61 % of clean FSDD feature values and 41 % of augmented ones (80 dB: 35 % and 5 %, so it
# hardly closes the gap). Quiet clips (peak log-mel < 0, a quarter of speaker theo's) meet
# log(LOG_OFFSET) first. FSDD leave-one-speaker-out, crnn, 6 folds: 79.1 -> 81.8 % mean, worst
# 67.4 -> 70.0 % (docs/benchmarks.md, Speech).
FLOOR_DB = 60.0
FLOOR = FLOOR_DB / 10.0 * math.log(10.0)  # the same in natural-log units (power: 10 dB = ln 10)


def feature_settings(sample_rate: int, *, kind: str = "log_mel", n_mfcc: int | None = None) -> dict[str, Any]:
    """The front end's settings, as model.json records them. MEL is in samples (25 ms windows every
    10 ms at 16 kHz); f_max is capped at the Nyquist frequency for lower rates."""
    settings: dict[str, Any] = {
        "kind": kind, "sample_rate": int(sample_rate), **MEL,
        "f_max": min(float(MEL["f_max"]), sample_rate / 2), "power": 2.0, "center": True,
        "pad_mode": "reflect", "mel_scale": "htk", "log_offset": LOG_OFFSET, "min_frames": MIN_FRAMES,
    }
    if kind == "mfcc":
        settings.update(n_mfcc=int(n_mfcc), dct="type 2, ortho")
    else:
        settings.update(floor_db=FLOOR_DB)
    return settings


class AudioFeatures(nn.Module):
    """int16 or float32 N×L waveform -> float32 N×F×T features: log-mel (F = n_mels) or MFCC
    (F = n_mfcc, the DCT of the log-mel). The log-mel is floored per clip at FLOOR_DB below the
    clip's own peak (not the MFCC: seed_lstm's front end was not measured with it). Always float32,
    also under autocast: bf16 would round the power spectrum before the log. Per clip and
    deterministic (a clip's features never depend on its batch neighbours); the
    floor is one ReduceMax and one Max in an exported graph."""

    def __init__(self, sample_rate: int, *, kind: str = "log_mel", n_mfcc: int | None = None):
        super().__init__()
        if kind not in ("log_mel", "mfcc"):
            raise ValueError(f"Unknown feature kind {kind!r}. Choose one of: log_mel, mfcc")
        settings = feature_settings(sample_rate, kind=kind, n_mfcc=n_mfcc)
        self.settings = settings
        mel_args = {k: settings[k] for k in ("n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
                                             "power", "center", "pad_mode", "mel_scale")}
        self.kind = kind
        if kind == "mfcc":
            if not 1 <= int(n_mfcc) <= MEL["n_mels"]:
                raise ValueError(f"n_mfcc must be between 1 and {MEL['n_mels']}, got {n_mfcc}")
            self.transform = torchaudio.transforms.MFCC(
                sample_rate=sample_rate, n_mfcc=int(n_mfcc), log_mels=True, melkwargs=mel_args)
            self.num_features = int(n_mfcc)
        else:
            self.transform = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, **mel_args)
            self.num_features = int(MEL["n_mels"])
        self.min_samples = max(int(MEL["n_fft"]), (MIN_FRAMES - 1) * int(MEL["hop_length"]))

    def num_frames(self, num_samples: int) -> int:
        return 1 + max(num_samples, self.min_samples) // int(MEL["hop_length"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 32768.0 if x.dtype == torch.int16 else x.float()
        if x.shape[-1] < self.min_samples:
            x = F.pad(x, (0, self.min_samples - x.shape[-1]))
        if torch.is_autocast_enabled(x.device.type):  # training only: an exported graph has no autocast
            with torch.autocast(x.device.type, enabled=False):
                return self._features(x)
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mfcc":
            return self.transform(x)
        logmel = torch.log(self.transform(x) + LOG_OFFSET)
        # Per clip (amax over its own bands and frames, never the batch): no value lies more than
        # FLOOR_DB below the clip's peak.
        return torch.maximum(logmel, logmel.amax(dim=(-2, -1), keepdim=True) - FLOOR)


class FeatureNorm(nn.Module):
    """Per-feature-row normalisation: (features - mean) / std with one value per row (mel band or
    MFCC coefficient), estimated by ml.train from training clips (like images' channel stats)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} rows but std has {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SpecAugment(nn.Module):
    """SpecAugment's masks (Park et al. 2019) on normalised N×F×T features: per clip, `freq_masks`
    bands of 0..freq_width rows and `time_masks` spans of 0..time_width frames are set to 0 (the
    training mean). Active only in training mode with `enabled`; an identity in eval mode, so
    prediction and export never see it. Draws come from `generator` (set by ml.train to the run's
    generator, so runs are reproducible and resume exactly; None: torch's global generator). Both
    are plain attributes, not state: a saved model does not carry them. Masks are drawn per forward
    pass, so after an out-of-memory halving (micro-batches) they differ from an unsplit run's; the
    data order and the waveform augmentation do not."""

    def __init__(self, *, freq_masks: int = 2, freq_width: int = 6, time_masks: int = 2, time_width: int = 10):
        super().__init__()
        for name, value in (("freq_masks", freq_masks), ("freq_width", freq_width),
                            ("time_masks", time_masks), ("time_width", time_width)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.enabled = True
        self.generator: torch.Generator | None = None

    def _mask(self, n: int, size: int, count: int, width: int, device: torch.device) -> torch.Tensor:
        """N×size bool, True where masked: `count` spans per row, each 0..width wide (< size)."""
        width = min(width, size - 1)
        masked = torch.zeros(n, size, dtype=torch.bool, device=device)
        if count == 0 or width <= 0:
            return masked
        positions = torch.arange(size, device=device)
        widths = (torch.rand(n, count, generator=self.generator, device=device) * (width + 1)).long()
        starts = (torch.rand(n, count, generator=self.generator, device=device) * (size - widths + 1)).long()
        for k in range(count):
            masked |= (positions >= starts[:, k : k + 1]) & (positions < (starts + widths)[:, k : k + 1])
        return masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled):
            return x
        n, f, t = x.shape
        freq = self._mask(n, f, self.freq_masks, self.freq_width, x.device)
        time = self._mask(n, t, self.time_masks, self.time_width, x.device)
        keep = ~(freq[:, :, None] | time[:, None, :])
        return x * keep

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
                f"time_masks={self.time_masks}, time_width={self.time_width}")


class AudioClassifier(nn.Module):
    """Front end + normalisation + SpecAugment + network: waveform N×L -> logits N×C. Carries its
    build arguments (arch, arch_args, sample_rate, clip_samples) so a saved copy can be rebuilt."""

    def __init__(self, frontend: AudioFeatures, normalise: FeatureNorm, specaugment: SpecAugment, body: nn.Module,
                 *, arch: str, arch_args: dict[str, Any], sample_rate: int, clip_samples: int):
        super().__init__()
        self.frontend = frontend
        self.normalise = normalise
        self.specaugment = specaugment
        self.body = body
        self.arch = arch
        self.arch_args = dict(arch_args)
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(clip_samples)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised features N×F×T, before SpecAugment: what the body sees in eval mode."""
        return self.normalise(self.frontend(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.specaugment(self.features(x)))


def _small_head(head: nn.Linear) -> nn.Linear:
    # Small head init, so the first loss is ≈ log(num_classes) instead of a confident guess.
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


class LastStepLSTM(nn.Module):
    """The Keras speech tutorial's recurrent net: LSTM(64, return_sequences) → LSTM(64) → Dense."""

    def __init__(self, *, features: int, hidden: int, num_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        # Forget-gate bias 1, as Keras initialises its LSTM (unit_forget_bias): the word sits
        # mid-clip and the last step comes ~40 silent frames later; with PyTorch's 0 the memory
        # halves every frame and the net never learns (10 % on FSDD, measured).
        for name, bias in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    bias[hidden : 2 * hidden] = 1.0  # gate order: input, forget, cell, output
        self.head = _small_head(nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))  # N×F×T -> N×T×F: one step per frame
        return self.head(out[:, -1])


def seed_lstm(*, num_classes: int, features: int, hidden: int = 64) -> nn.Module:
    """Two stacked LSTM(hidden) layers over the MFCC frames; the last step's output → linear."""
    return LastStepLSTM(features=features, hidden=hidden, num_classes=num_classes)


class AsImage(nn.Module):
    """N×F×T features -> N×1×F×T, channels_last: on CPU that layout runs these small convolutions
    and pools ~1.5× faster (oneDNN); in an exported graph it is a no-op copy at most."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).contiguous(memory_format=torch.channels_last)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # ReLU rather than the image nets' GELU: on the 40×101 log-mel image the activations are a
    # large share of the CPU time, and ReLU (in place) costs a fraction of GELU's (measured).
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _audio_pool(features: int) -> nn.Module:
    """Halve time always (the front end guarantees ≥ MIN_FRAMES frames; ceil_mode keeps odd ones),
    frequency only while it stays ≥ 2."""
    return nn.MaxPool2d((_pool_kernel(features, 2), 2), ceil_mode=True)


def cnn_mel(*, num_classes: int, features: int, base_filters: int = 16, dropout: float = 0.1) -> nn.Module:
    """A small VGG-like CNN over the log-mel image (1×F×T): four 3×3 conv + BatchNorm + ReLU stages
    of widths w, 2w, 4w, 8w with 2×2 max pools between, then global average pooling → linear.
    Global pooling makes it indifferent to clip length and to where in the clip the word is."""
    w = base_filters
    layers: list[nn.Module] = [AsImage()]
    f, cin = features, 1
    for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
        layers += _conv_bn_relu(cin, cout)
        cin = cout
        if i < 3:
            layers.append(_audio_pool(f))
            f = f // 2 if f // 2 >= 2 else f
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), _small_head(nn.Linear(cin, num_classes))]
    return nn.Sequential(*layers)


class CRNN(nn.Module):
    """Conv front end (two 3×3 conv + BN + ReLU stages, 2×2 pools) over the log-mel image, then a
    bidirectional GRU over the pooled frames; mean and max over time → linear."""

    def __init__(self, *, num_classes: int, features: int, base_filters: int, hidden: int, dropout: float):
        super().__init__()
        w = base_filters
        f = features
        layers: list[nn.Module] = [AsImage()]
        cin = 1
        for cout in (w, 2 * w):
            layers += [*_conv_bn_relu(cin, cout), _audio_pool(f)]
            f = f // 2 if f // 2 >= 2 else f
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.gru = nn.GRU(cin * f, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = _small_head(nn.Linear(4 * hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # N×C×F'×T'
        h = h.contiguous().flatten(1, 2).transpose(1, 2)  # N×T'×(C·F')
        out, _ = self.gru(h)  # N×T'×2H
        pooled = torch.cat([out.mean(1), out.amax(1)], dim=1)
        return self.head(self.dropout(pooled))


def crnn(*, num_classes: int, features: int, base_filters: int = 16, hidden: int = 64,
         dropout: float = 0.1) -> nn.Module:
    return CRNN(num_classes=num_classes, features=features, base_filters=base_filters, hidden=hidden,
                dropout=dropout)


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]
    label: str  # what the job form shows
    help: str
    defaults: dict[str, Any] = field(default_factory=dict)  # arch_args when none are given
    modality: str = "image"  # the data it trains on: "image" (ImageData) or "audio" (AudioData)


MODALITY_WORDS = {"image": ("an image", "images"), "audio": ("a speech", "speech")}
# Front-end and SpecAugment arguments every speech architecture takes, besides its body's.
_SPECAUGMENT = ("freq_masks", "freq_width", "time_masks", "time_width")


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
    "seed_lstm": Architecture(
        seed_lstm,
        label="Seed LSTM (Keras speech tutorial)",
        help="Speech: the tutorial's two stacked LSTM(64) layers over MFCC frames; a small baseline.",
        # MFCC, as the tutorial: the DCT decorrelates the log-mel rows, which suits a dense/recurrent
        # input layer (the CNNs want log-mel's local frequency structure instead). Frequency masks
        # are off: a masked band of cepstral coefficients is not a masked band of frequencies.
        defaults={"hidden": 64, "n_mfcc": 20, "freq_masks": 0, "freq_width": 0, "time_masks": 2, "time_width": 10},
        modality="audio",
    ),
    "cnn_mel": Architecture(
        cnn_mel,
        label="CNN on log-mel spectrograms",
        help="Speech: a small CNN with batch norm over the log-mel spectrogram; fast and accurate.",
        defaults={"base_filters": 16, "dropout": 0.1, "freq_masks": 2, "freq_width": 6, "time_masks": 2,
                  "time_width": 10},
        modality="audio",
    ),
    "crnn": Architecture(
        crnn,
        label="CRNN (conv + bidirectional GRU)",
        help="Speech: convolutions over the log-mel spectrogram, then a bidirectional GRU over time.",
        defaults={"base_filters": 16, "hidden": 64, "dropout": 0.1, "freq_masks": 2, "freq_width": 6,
                  "time_masks": 2, "time_width": 10},
        modality="audio",
    ),
}

# What a new job uses when the user picks nothing (ml.config.config_defaults). Speech: crnn has
# the best FSDD leave-one-speaker-out mean with the speech defaults (93.2 %, vs cnn_mel 92.8 % at
# twice the CPU and seed_lstm 80.8 %; docs/benchmarks.md).
DEFAULT_ARCH: dict[str, str] = {"image": "resnet", "audio": "crnn"}


def architectures_for(modality: str) -> list[str]:
    """The architecture names for "image" or "audio" data, in registry order."""
    if modality not in MODALITY_WORDS:
        raise ValueError(f"Unknown modality {modality!r}. Choose one of: {', '.join(MODALITY_WORDS)}")
    return [name for name, spec in ARCHITECTURES.items() if spec.modality == modality]


def check_modality(arch: str, modality: str) -> None:
    """ValueError when `arch` is unknown or trains on the other kind of data, in the user's words:
    "seed_lstm is a speech network; this dataset holds images"."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}. Choose one of: {', '.join(ARCHITECTURES)}")
    if modality not in MODALITY_WORDS:
        raise ValueError(f"Unknown modality {modality!r}. Choose one of: {', '.join(MODALITY_WORDS)}")
    arch_modality = ARCHITECTURES[arch].modality
    if arch_modality != modality:
        raise ValueError(
            f"{arch} is {MODALITY_WORDS[arch_modality][0]} network; this dataset holds "
            f"{MODALITY_WORDS[modality][1]}. Choose one of: {', '.join(architectures_for(modality))}"
        )


def _arch_args(arch: str, arch_args: dict[str, Any]) -> dict[str, Any]:
    spec = ARCHITECTURES[arch]
    unknown = set(arch_args) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise ValueError(f"Unknown argument(s) for {arch}: {', '.join(sorted(unknown))} (allowed: {allowed})")
    return {**spec.defaults, **arch_args}


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
    check_modality(arch, "image")
    spec = ARCHITECTURES[arch]
    if num_classes < 1 or in_channels < 1 or height < 1 or width < 1:
        raise ValueError(
            f"num_classes, in_channels, height and width must be positive, got "
            f"{num_classes}, {in_channels}, {height}, {width}"
        )
    if len(mean) != in_channels:
        raise ValueError(f"mean/std need one value per input channel ({in_channels}), got {len(mean)}")
    args = _arch_args(arch, arch_args)
    body = spec.build(num_classes=num_classes, in_channels=in_channels, height=height, width=width, **args)
    mean = [float(m) for m in mean]
    std = [float(s) for s in std]
    if not all(math.isfinite(v) for v in mean + std):
        raise ValueError("mean/std must be finite numbers")
    return Classifier(Preprocess(mean, std), body, arch=arch, arch_args=args)


def build_audio_frontend(arch: str, *, sample_rate: int, **arch_args: Any) -> AudioFeatures:
    """The front end `arch` uses (log-mel, or MFCC for seed_lstm): ml.train computes the feature
    statistics with it before the model exists. Has no parameters and draws no random numbers."""
    check_modality(arch, "audio")
    args = _arch_args(arch, arch_args)
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if "n_mfcc" in args:
        return AudioFeatures(sample_rate, kind="mfcc", n_mfcc=args["n_mfcc"])
    return AudioFeatures(sample_rate, kind="log_mel")


def build_audio_model(
    arch: str,
    *,
    num_classes: int,
    sample_rate: int,
    clip_samples: int,
    mean: Sequence[float],
    std: Sequence[float],
    **arch_args: Any,
) -> AudioClassifier:
    """Build speech network `arch` for N×L waveforms at sample_rate (clip_samples is the length it
    is trained on; any length ≥ 1 sample works). mean/std: one value per feature row."""
    check_modality(arch, "audio")
    if num_classes < 1 or clip_samples < 1:
        raise ValueError(f"num_classes and clip_samples must be positive, got {num_classes}, {clip_samples}")
    args = _arch_args(arch, arch_args)
    frontend = build_audio_frontend(arch, sample_rate=sample_rate, **arch_args)
    if len(mean) != frontend.num_features or len(std) != frontend.num_features:
        raise ValueError(f"mean/std need one value per feature row ({frontend.num_features}), got {len(mean)}")
    mean = [float(m) for m in mean]
    std = [float(s) for s in std]
    if not all(math.isfinite(v) for v in mean + std):
        raise ValueError("mean/std must be finite numbers")
    specaugment = SpecAugment(**{k: args[k] for k in _SPECAUGMENT})
    body_args = {k: v for k, v in args.items() if k not in _SPECAUGMENT and k != "n_mfcc"}
    body = ARCHITECTURES[arch].build(num_classes=num_classes, features=frontend.num_features, **body_args)
    return AudioClassifier(frontend, FeatureNorm(mean, std), specaugment, body, arch=arch, arch_args=args,
                           sample_rate=sample_rate, clip_samples=clip_samples)
