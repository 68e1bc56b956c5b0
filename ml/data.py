"""Datasets in memory: what `train` consumes, and the readers of the formats ingestion writes.

    perceptor-images/1   images.npy (N,H,W,C) uint8 + labels.npy             -> ImageData
    perceptor-audio/1    audio.npy (N,L) int16 at 16 kHz + labels.npy (+ noise.npy) -> AudioData

Both store the train samples first, then validation (then, for audio, test), so every split is a
view of one memory-mapped file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "perceptor-images/1"
AUDIO_FORMAT = "perceptor-audio/1"


@dataclass
class ImageData:
    """Train and validation images as uint8 N×H×W×C arrays (C is 1 or 3) and int64 labels.

    The arrays may be read-only memory maps; nothing here writes to them.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]

    modality = "image"  # which networks can train on it: ml.nets.Architecture.modality

    @property
    def height(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def width(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Raise ValueError with a plain reason when the arrays cannot be trained on."""
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        for split, x, y in (("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val)):
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3):
                raise ValueError(f"{split} images must be uint8 N×H×W×C with C 1 or 3, got {x.dtype} {x.shape}")
            if x.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(f"{split} images are {x.shape[1:]}, train images are {self.x_train.shape[1:]}")
            _check_labels(split, y, num_samples=len(x), num_classes=len(self.classes))
        if len(self.x_train) == 0:
            raise ValueError("there are no training images")


@dataclass
class AudioData:
    """Train, validation and (optional) test clips as int16 N×L arrays, all L samples long at
    `sample_rate`, with int64 labels; `noise` is background noise (int16, 1-D, may be empty) that
    training mixes into clips (Speech Commands' `_background_noise_/`). Arrays may be read-only
    memory maps. A model takes float waveforms in [-1, 1]: int16 / 32768."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    sample_rate: int = 16_000
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    noise: np.ndarray | None = None

    modality = "audio"

    @property
    def clip_samples(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Raise ValueError with a plain reason when the arrays cannot be trained on."""
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        if self.sample_rate < 1:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        splits = [("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val)]
        if self.x_test is not None or self.y_test is not None:
            if self.x_test is None or self.y_test is None:
                raise ValueError("x_test and y_test come together")
            splits.append(("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.dtype != np.int16 or x.ndim != 2:
                raise ValueError(f"{split} clips must be int16 N×L, got {x.dtype} {x.shape}")
            if x.shape[1] != self.x_train.shape[1]:
                raise ValueError(f"{split} clips are {x.shape[1]} samples long, train clips {self.x_train.shape[1]}")
            _check_labels(split, y, num_samples=len(x), num_classes=len(self.classes))
        if self.noise is not None and (self.noise.dtype != np.int16 or self.noise.ndim != 1):
            raise ValueError(f"noise must be int16 and 1-D, got {self.noise.dtype} {self.noise.shape}")
        if len(self.x_train) == 0:
            raise ValueError("there are no training clips")
        if self.x_train.shape[1] == 0:
            raise ValueError("clips are 0 samples long")


def _check_labels(split: str, y: np.ndarray, *, num_samples: int, num_classes: int) -> None:
    if y.ndim != 1 or len(y) != num_samples or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{split} labels must be {num_samples} integers, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{split} labels must be class indices 0..{num_classes - 1}")


def _read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / "dataset.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory} has no dataset.json (not an ingested dataset)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / 'dataset.json'} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{directory / 'dataset.json'} is not a JSON object")
    return meta


def load_dataset(directory: str | Path) -> ImageData | AudioData:
    """Read an ingested dataset folder of either format (dataset.json says which)."""
    directory = Path(directory)
    found = _read_meta(directory).get("format")
    if found == AUDIO_FORMAT:
        return load_audio_dataset(directory)
    if found == FORMAT:
        return load_image_dataset(directory)
    raise ValueError(f"unsupported dataset format {found!r}, expected {FORMAT!r} or {AUDIO_FORMAT!r}")


def load_audio_dataset(directory: str | Path) -> AudioData:
    """Read a `perceptor-audio/1` folder, memory-mapped (train, val, test are slices of one file)."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta.get("format") != AUDIO_FORMAT:
        raise ValueError(f"unsupported dataset format {meta.get('format')!r}, expected {AUDIO_FORMAT!r}")
    audio = np.load(directory / "audio.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(directory / "labels.npy", mmap_mode="r", allow_pickle=False)
    num_train, num_val, num_test = int(meta["num_train"]), int(meta["num_val"]), int(meta.get("num_test", 0))
    if len(audio) != num_train + num_val + num_test or len(labels) != len(audio):
        raise ValueError(
            f"dataset.json says {num_train} + {num_val} + {num_test} clips but audio.npy has {len(audio)} "
            f"and labels.npy {len(labels)}"
        )
    noise_path = directory / "noise.npy"
    noise = np.load(noise_path, mmap_mode="r", allow_pickle=False) if noise_path.exists() else None
    end_val = num_train + num_val
    data = AudioData(
        x_train=audio[:num_train],
        y_train=labels[:num_train],
        x_val=audio[num_train:end_val],
        y_val=labels[num_train:end_val],
        x_test=audio[end_val:] if num_test else None,
        y_test=labels[end_val:] if num_test else None,
        classes=list(meta["classes"]),
        sample_rate=int(meta["sample_rate"]),
        noise=noise if noise is not None and len(noise) else None,
    )
    data.validate()
    return data


def load_image_dataset(directory: str | Path) -> ImageData:
    """Read a `perceptor-images/1` folder. Images are memory-mapped: train and val are slices of
    one file (train first), so nothing is copied until training asks for it."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta.get("format") != FORMAT:
        raise ValueError(f"unsupported dataset format {meta.get('format')!r}, expected {FORMAT!r}")
    images = np.load(directory / "images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(directory / "labels.npy", mmap_mode="r", allow_pickle=False)
    num_train, num_val = int(meta["num_train"]), int(meta["num_val"])
    if len(images) != num_train + num_val or len(labels) != len(images):
        raise ValueError(
            f"dataset.json says {num_train} + {num_val} samples but images.npy has {len(images)} "
            f"and labels.npy {len(labels)}"
        )
    data = ImageData(
        x_train=images[:num_train],
        y_train=labels[:num_train],
        x_val=images[num_train:],
        y_val=labels[num_train:],
        classes=list(meta["classes"]),
    )
    data.validate()
    return data
