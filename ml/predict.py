"""Prediction from a saved model folder: rebuilt from model.json + model.safetensors alone.

Image models take image bytes (decoded and squashed like ingestion) or H×W×C uint8 arrays; speech
models take audio bytes (decoded, resampled and fitted to the clip length like ingestion) or 1-D
float32 waves at the model's sample rate. `Predictor.modality` says which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ml.audio import AudioDecodeError, decode_audio, fit_length
from ml.export import FORMAT, META, WEIGHTS
from ml.images import ImageDecodeError, decode_image
from ml.nets import build_audio_model, build_model

Image = bytes | bytearray | memoryview | np.ndarray
Input = Image  # image or audio: bytes, or an array in the model's input shape
# Inference batches stay this small so a large predict_batch call cannot exhaust memory.
PREDICT_BATCH = 256
# Longer recordings are refused (AudioDecodeError) before they are decoded in full; fit_length then
# keeps their loudest clip. The web app may lower it (Predictor.max_seconds).
MAX_AUDIO_SECONDS = 60.0


class Predictor:
    """A loaded model. Safe to share between threads: inference mutates nothing."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any]):
        self.model = model.eval()
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        spec = meta["input"]
        self.modality = "audio" if spec.get("kind") == "audio" else "image"
        if self.modality == "audio":
            self.sample_rate, self.clip_samples = int(spec["sample_rate"]), int(spec["clip_samples"])
            self.max_seconds: float | None = MAX_AUDIO_SECONDS
        else:
            self.height, self.width, self.channels = int(spec["height"]), int(spec["width"]), int(spec["channels"])

    def prepare(self, data: Input) -> np.ndarray:
        """The model's input for one upload: H×W×C uint8 for images, the float32 wave of
        clip_samples at sample_rate for speech (what the model heard: play it, show its
        spectrogram). Raises ImageDecodeError / AudioDecodeError (ValueErrors) for bad input."""
        return self.to_wave(data) if self.modality == "audio" else self.to_array(data)

    def to_wave(self, audio: Input) -> np.ndarray:
        """float32 clip_samples at the model's rate. Bytes are decoded, resampled and fitted exactly
        like ingestion did; arrays must be 1-D at the model's rate (float in [-1, 1], or int16)."""
        if isinstance(audio, (bytes, bytearray, memoryview)):
            wave = decode_audio(bytes(audio), sample_rate=self.sample_rate, max_seconds=self.max_seconds)
        elif isinstance(audio, np.ndarray):
            if audio.ndim != 1 or len(audio) == 0:
                raise AudioDecodeError(
                    f"expected a 1-D wave at {self.sample_rate} Hz, got an array of shape {audio.shape}")
            if audio.dtype == np.int16:
                wave = audio.astype(np.float32) / 32768.0
            elif np.issubdtype(audio.dtype, np.floating):
                wave = audio.astype(np.float32, copy=False)
                if not np.isfinite(wave).all():
                    raise AudioDecodeError("the wave has non-finite samples")
                wave = np.clip(wave, -1.0, 1.0)
            else:
                raise AudioDecodeError(f"expected float32 samples in [-1, 1] (or int16), got {audio.dtype}")
        else:
            raise TypeError(f"expected audio bytes or a numpy array, got {type(audio).__name__}")
        wave, _ = fit_length(wave, self.clip_samples)
        return np.ascontiguousarray(wave, dtype=np.float32)

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

    def probabilities(self, inputs: Sequence[Input]) -> np.ndarray:
        """N×num_classes softmax probabilities (float32)."""
        arrays = [self.prepare(item) for item in inputs]
        out = []
        with torch.inference_mode():
            for start in range(0, len(arrays), PREDICT_BATCH):
                chunk = np.stack(arrays[start : start + PREDICT_BATCH]).astype(np.float32, copy=False)
                x = torch.from_numpy(chunk)  # speech: N×L waves
                if self.modality == "image":
                    x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW, values 0..255
                out.append(torch.softmax(self.model(x).float(), dim=1).numpy())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def _top(self, probs: np.ndarray, top_k: int | None) -> list[tuple[str, float]]:
        k = len(self.classes) if top_k is None else max(1, min(int(top_k), len(self.classes)))
        order = np.argsort(-probs, kind="stable")[:k]  # stable: ties keep class order
        return [(self.classes[i], float(probs[i])) for i in order]

    def predict(self, data: Input, top_k: int | None = 5) -> list[tuple[str, float]]:
        """[(label, probability), ...] best first, at most top_k (None: every class).
        Raises ImageDecodeError / AudioDecodeError (both ValueErrors) when the input is not a
        usable image / recording."""
        return self._top(self.probabilities([data])[0], top_k)

    def predict_batch(
        self, items: Sequence[Input] | np.ndarray, top_k: int | None = 5
    ) -> list[list[tuple[str, float]]]:
        """predict() for many inputs at once (a list, or an N×H×W×C / N×L array), batched for speed."""
        return [self._top(p, top_k) for p in self.probabilities(list(items))]


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
        if spec.get("kind") == "audio":
            model = build_audio_model(
                meta["arch"],
                num_classes=len(meta["classes"]),
                sample_rate=int(spec["sample_rate"]),
                clip_samples=int(spec["clip_samples"]),
                mean=meta["preprocessing"]["mean"],
                std=meta["preprocessing"]["std"],
                **meta.get("arch_args", {}),
            )
            saved = meta["preprocessing"].get("features")
            if saved is not None and saved != model.frontend.settings:
                # Weights are only right for the features they were trained on: refuse, never guess.
                changed = sorted(k for k in {*saved, *model.frontend.settings}
                                 if saved.get(k) != model.frontend.settings.get(k))
                raise ValueError(f"{directory / META} was saved with another speech front end than this version "
                                 f"computes (differs in: {', '.join(changed)}); train the model again")
        else:
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
    except (KeyError, TypeError, AttributeError) as exc:
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
