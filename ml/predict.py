"""Prediction from a saved model folder: rebuilt from model.json + model.safetensors alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ml.export import FORMAT, META, WEIGHTS
from ml.images import ImageDecodeError, decode_image
from ml.nets import build_model

Image = bytes | bytearray | memoryview | np.ndarray
# Inference batches stay this small so a large predict_batch call cannot exhaust memory.
PREDICT_BATCH = 256


class Predictor:
    """A loaded model. Safe to share between threads: inference mutates nothing."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any]):
        self.model = model.eval()
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        spec = meta["input"]
        self.height, self.width, self.channels = int(spec["height"]), int(spec["width"]), int(spec["channels"])

    def to_array(self, image: Image) -> np.ndarray:
        """H×W×C uint8 at the model's size. Bytes are decoded (and squashed) exactly like ingestion
        did; arrays must already have the model's shape (H×W is accepted for one channel)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_image(bytes(image), size=(self.height, self.width), channels=self.channels)
        if not isinstance(image, np.ndarray):
            raise TypeError(f"expected image bytes or a numpy array, got {type(image).__name__}")
        expected = (self.height, self.width, self.channels)
        if image.ndim == 2 and self.channels == 1:
            image = image[:, :, None]
        if image.shape != expected:
            raise ImageDecodeError(
                f"expected an array of shape {expected} (height, width, channels), got {image.shape}"
            )
        if image.dtype != np.uint8:
            numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
            if not numeric or not np.isfinite(image).all() or image.min() < 0 or image.max() > 255:
                raise ImageDecodeError(f"expected uint8 pixel values 0..255, got {image.dtype}")
        return image

    def probabilities(self, images: Sequence[Image]) -> np.ndarray:
        """N×num_classes softmax probabilities (float32)."""
        arrays = [self.to_array(image) for image in images]
        out = []
        with torch.inference_mode():
            for start in range(0, len(arrays), PREDICT_BATCH):
                chunk = np.stack(arrays[start : start + PREDICT_BATCH]).astype(np.float32, copy=False)
                x = torch.from_numpy(chunk).permute(0, 3, 1, 2)  # NHWC -> NCHW, values 0..255
                out.append(torch.softmax(self.model(x).float(), dim=1).numpy())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def _top(self, probs: np.ndarray, top_k: int | None) -> list[tuple[str, float]]:
        k = len(self.classes) if top_k is None else max(1, min(int(top_k), len(self.classes)))
        order = np.argsort(-probs, kind="stable")[:k]  # stable: ties keep class order
        return [(self.classes[i], float(probs[i])) for i in order]

    def predict(self, image: Image, top_k: int | None = 5) -> list[tuple[str, float]]:
        """[(label, probability), ...] best first, at most top_k (None: every class).
        Raises ImageDecodeError when the input is not a usable image."""
        return self._top(self.probabilities([image])[0], top_k)

    def predict_batch(self, images: Sequence[Image] | np.ndarray, top_k: int | None = 5) -> list[list[tuple[str, float]]]:
        """predict() for many images at once (a list, or an N×H×W×C array), batched for speed."""
        return [self._top(p, top_k) for p in self.probabilities(list(images))]


def load_predictor(directory: str | Path) -> Predictor:
    """Rebuild the model from model.json and load model.safetensors strictly (every tensor must
    match). Raises ValueError with the reason when the folder is not a usable Perceptor model."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory} has no {META} (not a saved Perceptor model)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / META} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"unsupported model format {found!r}, expected {FORMAT!r}")
    try:
        spec = meta["input"]
        model = build_model(
            meta["arch"],
            num_classes=len(meta["classes"]),
            in_channels=int(spec["channels"]),
            height=int(spec["height"]),
            width=int(spec["width"]),
            mean=meta["preprocessing"]["mean"],
            std=meta["preprocessing"]["std"],
            **meta.get("arch_args", {}),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{directory / META} is incomplete or malformed: {exc!r}") from None
    try:
        state = load_file(directory / WEIGHTS)
    except FileNotFoundError:
        raise ValueError(f"{directory} has no {WEIGHTS}") from None
    except SafetensorError as exc:
        raise ValueError(f"{directory / WEIGHTS} is not a valid safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights do not match the architecture in {META}: {exc}") from None
    return Predictor(model, meta)
