"""The evaluation report of a trained model: what the validation split says about it beyond accuracy.

    report = evaluation_report(result.model, data, model_dir, classes=result.classes)

runs the model over `data`'s validation split (eval mode, in batches, on the CPU unless told otherwise)
and returns a JSON-ready dict: accuracy, per-class precision/recall/F1 with support, macro and
weighted F1, calibration (a reliability table of 15 equal-width confidence bins and the expected
calibration error, Guo et al. 2017) and the most confident mistakes, whose inputs it writes under
`model_dir/report/` for the page to show: images as PNG thumbnails, speech clips as 16-bit WAV plus
their mel spectrogram as PNG.

Conventions (as scikit-learn's `zero_division=0`): a class never predicted has precision 0, a class
absent from the split has recall 0, and F1 is 0 when precision + recall is 0. Macro F1 averages every
class of the model, including absent ones; weighted F1 weighs each class by its support.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml.audio import encode_wav, from_int16, spectrogram_png
from ml.data import AudioData, ImageData
from ml.train import EVAL_BATCH, cpu_threads, input_layout, resolve_device

REPORT_DIR = "report"  # under the model's folder; the evaluation dict names files relative to that folder
CALIBRATION_BINS = 15  # Guo et al.'s choice; enough bins to see a trend, few enough to fill on small splits
MAX_EXAMPLES = 24  # misclassified examples kept (most confident first): a page of thumbnails
THUMBNAIL_MIN_PX = 64  # smaller images are scaled up by a whole factor (nearest neighbour) to at least this


def predict_probabilities(model: torch.nn.Module, data: ImageData | AudioData, *,
                          device: str | torch.device = "cpu", batch_size: int = EVAL_BATCH) -> np.ndarray:
    """N×num_classes float32 softmax probabilities of the validation split, in its order.

    Images go in as uint8 NCHW (channels_last, as in training), speech as float32 waves in [-1, 1),
    exactly what training and prediction feed the model; float32 throughout, the reference the
    exports are checked against. On another `device` ("auto": a GPU when there is one) a copy runs:
    the caller's model stays where it is (TrainResult.model: CPU, for the exports that follow)."""
    dev = resolve_device(device)
    net = model if next(model.parameters()).device == dev else copy.deepcopy(model).to(dev)
    net.eval()
    out = []
    with cpu_threads(dev), torch.inference_mode():
        for start in range(0, len(data.y_val), batch_size):
            chunk = np.array(data.x_val[start:start + batch_size])  # a copy: the split may be a read-only memory map
            if data.modality == "audio":
                x = torch.from_numpy(from_int16(chunk))
            else:
                x = torch.from_numpy(chunk).permute(0, 3, 1, 2)  # NHWC -> NCHW
            out.append(torch.softmax(net(input_layout(x.to(dev))).float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted F1 (zero division -> 0)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    true_positives = np.bincount(y_true[y_true == y_pred], minlength=k)
    support = np.bincount(y_true, minlength=k)
    predicted = np.bincount(y_pred, minlength=k)
    per_class = []
    for i, label in enumerate(classes):
        precision = _ratio(true_positives[i], predicted[i])
        recall = _ratio(true_positives[i], support[i])
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append({"label": label, "precision": precision, "recall": recall, "f1": f1,
                          "support": int(support[i])})
    f1s = np.array([row["f1"] for row in per_class])
    return {
        "accuracy": _ratio(true_positives.sum(), len(y_true)),
        "per_class": per_class,
        "macro_f1": float(f1s.mean()) if k else 0.0,
        "weighted_f1": _ratio(float((f1s * support).sum()), len(y_true)),
    }


def calibration(confidence: np.ndarray, correct: np.ndarray, *, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability table and expected calibration error of top-1 confidences.

    Bin b covers [b/bins, (b+1)/bins), the last one includes 1.0. Each bin has its count, mean
    confidence and accuracy (both None when empty); ECE = Σ count/N · |accuracy − confidence|: 0 for a
    model whose 80 %-sure answers are right 80 % of the time, large for one always sure and often wrong."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n = len(confidence)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        mean_conf = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - mean_conf)
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                      "confidence": mean_conf, "accuracy": accuracy})
    return {"ece": float(ece), "bins": table}


def evaluation_report(model: torch.nn.Module, data: ImageData | AudioData, directory: str | Path, *,
                      classes: list[str] | None = None, max_examples: int = MAX_EXAMPLES,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """The report on `data`'s validation split (see the module docstring), its example files written
    to directory/report/. `classes` are the model's labels (default: the data's; they must agree in
    number with the model's outputs); `device` as predict_probabilities. Raises ValueError when the
    split is empty or does not fit the model."""
    classes = list(data.classes if classes is None else classes)
    if len(data.y_val) == 0:
        raise ValueError("the dataset has no validation samples to evaluate on")
    if len(classes) != len(data.classes):
        raise ValueError(f"the model has {len(classes)} classes, the dataset {len(data.classes)}")
    probs = predict_probabilities(model, data, device=device)
    if probs.shape[1] != len(classes):
        raise ValueError(f"the model gives {probs.shape[1]} outputs for {len(classes)} classes")
    y_true = np.asarray(data.y_val, dtype=np.int64)
    y_pred = probs.argmax(1)
    confidence = probs.max(1)
    wrong = np.flatnonzero(y_pred != y_true)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_examples]  # ties: split order
    return {
        "split": "validation",
        "samples": int(len(y_true)),
        **class_metrics(y_true, y_pred, classes),
        "calibration": calibration(confidence, y_pred == y_true),
        "misclassified_total": int(len(wrong)),
        "misclassified": write_examples(data, worst, y_true=y_true, y_pred=y_pred, confidence=confidence,
                                        classes=classes, directory=Path(directory)),
    }


def write_examples(data: ImageData | AudioData, indices: np.ndarray, *, y_true: np.ndarray, y_pred: np.ndarray,
                   confidence: np.ndarray, classes: list[str], directory: Path) -> list[dict[str, Any]]:
    """One gallery entry per validation index (`index` counts within the validation split), its
    files named miss-00, miss-01… in the given order under directory/report/."""
    folder = directory / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for rank, i in enumerate(indices):
        stem = f"{REPORT_DIR}/miss-{rank:02d}"
        entry = {"index": int(i), "true": classes[y_true[i]], "predicted": classes[y_pred[i]],
                 "confidence": float(confidence[i])}
        if data.modality == "audio":
            wave = np.asarray(data.x_val[i])
            (directory / f"{stem}.wav").write_bytes(encode_wav(wave, data.sample_rate))
            (directory / f"{stem}.png").write_bytes(spectrogram_png(wave, data.sample_rate))
            entry.update(file=f"{stem}.wav", spectrogram=f"{stem}.png")
        else:
            thumbnail(np.asarray(data.x_val[i])).save(directory / f"{stem}.png", format="PNG")
            entry["file"] = f"{stem}.png"
        entries.append(entry)
    return entries


def thumbnail(image: np.ndarray, *, min_px: int = THUMBNAIL_MIN_PX) -> Image.Image:
    """An H×W×C uint8 image as a PIL image, scaled up by a whole factor with nearest neighbour until its
    shorter side reaches min_px: a 28×28 digit stays crisp instead of a 28-pixel smudge."""
    pixels = image[:, :, 0] if image.shape[2] == 1 else image
    picture = Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")
    factor = max(1, math.ceil(min_px / max(1, min(picture.size))))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    return picture
