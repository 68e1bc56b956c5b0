"""Training hyperparameters: one dataclass, one table describing it for forms and the API.

`HYPERPARAMETERS` is the single description the Django job form and the DRF serializer are
generated from; `TrainConfig` validates with the same table, so the three can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ml.nets import ARCHITECTURES, DEFAULT_ARCH, MODALITY_WORDS


class ConfigError(ValueError):
    """A hyperparameter is unknown or out of range; `field` names it, the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


# Evidence for these defaults (docs/benchmarks.md): on CIFAR-10 10k (8,000 train / 2,000 val,
# stratified; /work/shared/datasets/cifar10-train-10k.zip) the default resnet reached 76.5 % val
# accuracy in 7.6 min and seed_cnn 56.0 % in 3.6 min, on 2 shared Xeon cores (AMX, bf16), CPU
# only, PyTorch 2.11, 2026-11-30:   nice -n 10 .venv/bin/python bench/cifar.py
@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet"  # network from ml.nets.ARCHITECTURES; resnet is far more accurate than seed_cnn
    epochs: int = 15  # full passes over the training set; the one-cycle schedule spans all of them
    batch_size: int = 256  # images per optimizer step; large batches keep the CPU's vector units busy
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule (reached after 25% of the steps)
    optimizer: str = "adamw"  # adamw is forgiving across both networks; sgd = Nesterov momentum 0.9
    weight_decay: float = 5e-2  # decoupled for adamw, L2 for sgd/adam; not applied to norms and biases
    augment: bool = True  # random shifts (reflected borders) + horizontal flips, on whole batches
    label_smoothing: float = 0.1  # probability mass spread over the other classes; calms overconfidence
    seed: int = 0  # seeds python, numpy and torch: the same config on the same data trains the same
    # Decay per optimizer step of an exponential moving average of the weights (and BatchNorm
    # statistics) that validation and the final model use; 0 = off. Off for images: not measured.
    ema: float = 0.0
    # Speech only: clips per class that espeak-ng speaks (the class name, ml.synthetic_speech),
    # added to the training split; 0 = off. Images: always 0. Speech: see AUDIO_DEFAULTS.
    synthetic_voices: int = 0
    # Speech only: mixup's Beta(α, α) parameter, 0 = off. Images: always 0. Speech: see AUDIO_DEFAULTS.
    mixup: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name)))

    @classmethod
    def from_dict(cls, d: dict[str, Any], modality: str = "image") -> TrainConfig:
        """Validate a dict; missing keys get `modality`'s defaults (config_defaults). Raises
        ConfigError naming the field."""
        if not isinstance(d, dict):
            raise ConfigError("config", f"config must be a dict of hyperparameters, got {type(d).__name__}")
        for key in d:
            if key not in HYPERPARAMETERS:
                raise ConfigError(
                    str(key), f"Unknown hyperparameter {key!r}. Choose from: {', '.join(HYPERPARAMETERS)}"
                )
        config = cls(**{**config_defaults(modality), **d})
        for name, param in HYPERPARAMETERS.items():
            if param.modality not in (None, modality) and getattr(config, name) != param.default:
                raise ConfigError(name, f"{name} is for {MODALITY_WORDS[param.modality][1]} datasets only; "
                                        f"leave it at {param.default} for {MODALITY_WORDS[modality][1]}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Param:
    kind: str  # "choice" | "int" | "float" | "bool"
    default: Any
    min: float | None = None  # inclusive bounds for int/float
    max: float | None = None
    choices: tuple[str, ...] | None = None  # for kind="choice"
    help: str = ""
    modality: str | None = None  # the one kind of data it applies to ("image" or "audio"); None: both


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}

# Speech defaults (TrainConfig's own defaults are the image ones). Evidence (docs/benchmarks.md,
# "Speech"): FSDD leave-one-speaker-out, 6 folds, these settings: crnn 93.7 % mean (worst 88.0 %),
# 9-13 CPU minutes a fold on 2 shared EPYC cores, 2026-12-07:
#   nice -n 10 .venv/bin/python bench/speech.py --archs crnn --threads 1
# Below the 95 % target. Clips are small next to images (one 40×101 log-mel image per second), so a
# batch of 64 gives more steps per epoch; augment covers speed, time shift, noise, gain and SpecAugment.
AUDIO_DEFAULTS: dict[str, Any] = {
    "arch": DEFAULT_ARCH["audio"],
    # 14: with the synthetic voices below, ml.train.epoch_rows repeats the recordings to half of
    # each epoch (FSDD: 4 times), so 14 epochs take about the steps 25 took with them once (93.2 %
    # then, 93.7 % now; 25 rather than 15 had gained 0.8 points before, docs/benchmarks.md).
    "epochs": 14,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 5e-2,
    # Held-out-speaker accuracy jumped ±5 points between the last epochs: validate and keep the
    # weights' moving average instead. 0.99 spans ~100 steps (an EMA reaches back about
    # 1/(1 - decay) steps), measured when a FSDD epoch was ~40 steps (15 epochs, no synthetic
    # voices): the low-learning-rate tail of the one-cycle schedule. Short runs are capped further
    # (ml.train.WeightAverage). FSDD leave-one-speaker-out, crnn: smooth, nearly monotone curves;
    # mean 81.8 -> 82.0 % (docs/benchmarks.md).
    "ema": 0.99,
    # espeak-ng speaks each class name 1,000 times (voices, speeds, pitches, rooms, noise) into the
    # training split: the voice variety a handful of speakers lacks. A speech dataset here is
    # spoken words, so the class names are what is said; _silence_-style names are skipped, and a
    # dataset of other sounds (a cough) should set 0. FSDD leave-one-speaker-out, crnn, 6 folds
    # (docs/benchmarks.md): 82.0 % mean without, 90.8 % with 1,000 per class (worst 84.8 %),
    # 89.4 % with 2,000 and 8 epochs, 90.0 % with 200 (an experiment script): the step is having
    # them at all; beyond a few hundred the fold-to-fold noise (±2-3 points) hides any trend.
    # Costs on FSDD: ~45 s of synthesis and ~8 instead of ~3 CPU minutes of training a fold.
    "synthetic_voices": 1000,
    # Each training clip blended with another of its batch, labels alike (λ from Beta(0.4, 0.4),
    # folded to ≥ 0.5). FSDD leave-one-speaker-out, crnn with the settings above, 6 folds
    # (docs/benchmarks.md), at 15 epochs: 92.4 % mean (worst 86.8 %) against 90.8 % without (91.2 %
    # with seed 1), at the same CPU time. The two systematic confusions behind the worst folds stay.
    "mixup": 0.4,
}


def config_defaults(modality: str = "image") -> dict[str, Any]:
    """Every hyperparameter's default for data of `modality` ("image" or "audio"): what a new job's
    form starts from and what TrainConfig.from_dict fills in."""
    if modality not in MODALITY_WORDS:
        raise ValueError(f"Unknown modality {modality!r}. Choose one of: {', '.join(MODALITY_WORDS)}")
    return {**_DEFAULTS, **(AUDIO_DEFAULTS if modality == "audio" else {})}

HYPERPARAMETERS: dict[str, Param] = {
    "arch": Param(
        "choice", _DEFAULTS["arch"], choices=tuple(ARCHITECTURES),
        help="Network architecture. Images: resnet is the accurate default, seed_cnn the small classic "
        "baseline. Speech: crnn (convolutions plus a recurrent layer) is the default, cnn_mel a plain CNN, "
        "seed_lstm the tutorial's LSTM.",
    ),
    "epochs": Param(
        "int", _DEFAULTS["epochs"], 1, 500,
        help="Full passes over the training images or clips. More epochs: better accuracy, longer training.",
    ),
    "batch_size": Param(
        "int", _DEFAULTS["batch_size"], 2, 4096,
        help="Images or clips per optimizer step (at least 2: batch norm needs a batch).",
    ),
    "lr": Param(
        "float", _DEFAULTS["lr"], 1e-6, 10.0,
        help="Peak learning rate of the one-cycle schedule. Typical: 1e-3 to 1e-2 for adam/adamw, "
        "0.05 to 0.4 for sgd.",
    ),
    "optimizer": Param(
        "choice", _DEFAULTS["optimizer"], choices=("sgd", "adam", "adamw"),
        help="adamw (Adam with decoupled weight decay), adam, or sgd with Nesterov momentum 0.9.",
    ),
    "weight_decay": Param(
        "float", _DEFAULTS["weight_decay"], 0.0, 1.0,
        help="Pull towards small weights against overfitting. Typical: 0.01 to 0.1 for adamw, "
        "5e-4 for sgd and adam.",
    ),
    "augment": Param(
        "bool", _DEFAULTS["augment"],
        help="Images: random shifts and horizontal flips (turn off when left and right matter: digits, "
        "text). Speech: random speed changes, time shifts, background noise, gain and SpecAugment masks.",
    ),
    "label_smoothing": Param(
        "float", _DEFAULTS["label_smoothing"], 0.0, 0.5,
        help="Share of the target probability spread over the other classes (0 = off).",
    ),
    "seed": Param(
        "int", _DEFAULTS["seed"], 0, 2**31 - 1,
        help="Random seed: the same seed, settings and data give the same model.",
    ),
    # Upper bound 0.9999, not 1: a decay of 1 never moves from the first weights, and beyond 0.9999
    # (a span of 10,000 steps) the average would lag most runs by more than their length.
    "ema": Param(
        "float", _DEFAULTS["ema"], 0.0, 0.9999,
        help="Weight averaging: decay per step of a moving average of the weights that validation and "
        "the saved model use; smooths accuracy that jumps between epochs (0 = off). Typical: 0.99 to 0.999; "
        "higher averages over more steps.",
    ),
    # Up to 5,000 a class (FSDD was measured up to 2,000: docs/benchmarks.md). Every clip is 32 KB
    # in memory and ~4 ms of synthesis before the first step: 35 Speech Commands words × 5,000 is
    # 175,000 clips, 5.6 GB and ~12 minutes.
    "synthetic_voices": Param(
        "int", _DEFAULTS["synthetic_voices"], 0, 5000,
        help="Speech only: clips per class spoken by a speech synthesiser (espeak-ng: many voices, speeds, "
        "pitches, rooms and noises) saying the class name, added to the training split. It helps recognise "
        "voices the dataset lacks, when the class names are the words spoken (digits, commands): set 0 for "
        "other sounds. Class names starting with _ are not spoken. Without them, train about 15 epochs.",
        modality="audio",
    ),
    "mixup": Param(
        "float", _DEFAULTS["mixup"], 0.0, 1.0,
        help="Speech only: mixup blends every training clip with another clip of the batch, and their "
        "labels in the same proportion (a share drawn from Beta(mixup, mixup)); 0 = off. Helps recognise "
        "voices the dataset lacks. Typical: 0.2 to 0.4.",
        modality="audio",
    ),
}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _check(name: str, value: Any) -> Any:
    """Return value coerced to the parameter's type, or raise ConfigError saying what is allowed."""
    p = HYPERPARAMETERS[name]
    if p.kind == "choice":
        if not isinstance(value, str) or value not in p.choices:
            if name == "arch":
                raise ConfigError(name, f"Unknown architecture {value!r}. Choose one of: {', '.join(p.choices)}")
            raise ConfigError(name, f"Unknown {name} {value!r}. Choose one of: {', '.join(p.choices)}")
        return value
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"{name} must be true or false, got {value!r}")
        return value
    # Numbers. bool is an int subclass in Python; True is not a valid epoch count.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "a whole number" if p.kind == "int" else "a number"
        raise ConfigError(name, f"{name} must be {what}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(name, f"{name} must be a finite number, got {value!r}")
    if p.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(name, f"{name} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if not p.min <= value <= p.max:
        raise ConfigError(name, f"{name} must be between {_fmt(p.min)} and {_fmt(p.max)}, got {_fmt(value)}")
    return value
