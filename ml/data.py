"""Image datasets in memory: what `train` consumes, and the reader of format `perceptor-images/1`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "perceptor-images/1"


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
            if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{split} labels must be {len(x)} integers, got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"{split} labels must be class indices 0..{len(self.classes) - 1}")
        if len(self.x_train) == 0:
            raise ValueError("there are no training images")


def load_image_dataset(directory: str | Path) -> ImageData:
    """Read a `perceptor-images/1` folder. Images are memory-mapped: train and val are slices of
    one file (train first), so nothing is copied until training asks for it."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "dataset.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory} has no dataset.json (not an ingested dataset)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / 'dataset.json'} is not valid JSON: {exc}") from None
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
