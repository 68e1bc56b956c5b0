"""Saving a trained model as files that describe themselves: weights + everything to rebuild them."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file

from ml.train import TrainResult

FORMAT = "perceptor-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"


def _input_and_preprocessing(result: TrainResult) -> tuple[dict, dict]:
    model = result.model
    if result.modality == "audio":
        return (
            # float32 N×L waveforms in [-1, 1] at sample_rate; the front end is inside the model
            {**result.input_spec, "dtype": "float32", "layout": "NL"},
            {
                "mean": model.normalise.mean.flatten().tolist(),  # one per feature row
                "std": model.normalise.std.flatten().tolist(),
                "features": dict(model.frontend.settings),
                # decode_audio resamples to sample_rate (mono); fit_length pads (centred) or keeps the
                # loudest clip_samples window, as ingestion did
                "fit_length": "zero-pad centred / loudest window",
            },
        )
    return (
        {**result.input_spec, "dtype": "uint8", "layout": "NCHW"},
        {
            "mean": model.preprocess.mean.flatten().tolist(),
            "std": model.preprocess.std.flatten().tolist(),
            # decode_image squashes any upload to height×width with bilinear resampling
            "resize": "bilinear squash",
        },
    )


def model_metadata(result: TrainResult) -> dict:
    """model.json: what `load_predictor` needs (and a person reading it wants), nothing else.
    "input" says the modality: images {"height", "width", "channels", "dtype": "uint8", "layout":
    "NCHW"}; speech {"kind": "audio", "sample_rate", "clip_samples", "dtype": "float32", "layout": "NL"}."""
    model = result.model
    spec, preprocessing = _input_and_preprocessing(result)
    return {
        "format": FORMAT,
        "arch": model.arch,
        "arch_args": model.arch_args,
        "classes": list(result.classes),
        "input": spec,
        "preprocessing": preprocessing,
        "metrics": result.metrics,
        "config": result.config.to_dict(),
        "device": result.device,
        "torch": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_atomically(path: Path, write) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(result: TrainResult, directory: str | Path) -> list[Path]:
    """Write model.safetensors + model.json into `directory` (created if needed); returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors; channels_last convolution weights are not.
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    weights, meta = directory / WEIGHTS, directory / META
    _write_atomically(weights, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    text = json.dumps(model_metadata(result), indent=2, allow_nan=False)
    _write_atomically(meta, lambda p: p.write_text(text + "\n"))
    return [weights, meta]
