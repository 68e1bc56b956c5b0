"""Saving a trained model as files that describe themselves: weights + everything to rebuild them;
and as TorchScript and ONNX, each checked against the PyTorch model before it is offered.

The exported files take the raw input and return probabilities: images as uint8 NCHW `pixels` at
the model's input size, speech as float32 N×L `waveform`s in [-1, 1] at the model's rate and clip
length. Normalisation and the mel front end are inside (they are inside the model already).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ml.nets import AudioClassifier
from ml.train import TrainResult

logger = logging.getLogger(__name__)

FORMAT = "perceptor-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"
TORCHSCRIPT = "model.torchscript.pt"
ONNX = "model.onnx"
OUTPUT = "probabilities"
# What "answers like the original" means: the same top-1 on every held-out sample and no
# probability further than this from PyTorch's. Float32 kernels of the two runtimes differ by
# ~1e-8..1e-7 on these models (measured on all five architectures).
PARITY_TOLERANCE = 1e-4


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


# --- TorchScript and ONNX ------------------------------------------------------------------------


class Probabilities(nn.Module):
    """What an exported file computes: raw input -> softmax probabilities N×classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class GlobalMaxPool(nn.Module):
    """AdaptiveMaxPool2d(1) as a plain max over H×W: the ONNX exporter has no translation for
    aten.adaptive_max_pool2d (resnet's head), while a max over the two axes is one ReduceMax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


def input_name(model: nn.Module) -> str:
    """The graph's input: "waveform" for speech models, "pixels" for image models."""
    return "waveform" if isinstance(model, AudioClassifier) else "pixels"


def exportable(model: nn.Module) -> Probabilities:
    """A CPU copy of `model` in eval mode, wrapped to return probabilities, with the layers the
    exporters cannot translate swapped for equivalent ones. The trained model is left untouched."""
    copied = copy.deepcopy(model).cpu().eval()
    for parent in list(copied.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveMaxPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalMaxPool())
    return Probabilities(copied).eval()


# Loggers of the ONNX exporter's graph passes: a dozen INFO lines per export ("No unused functions to
# remove", "Skipping constant folding for node ...") in a worker whose root logger is at INFO.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet():
    """torch.export and the ONNX exporter warn about their own internals (deprecated pytree
    classes, RNN weights "assigned during export") and log every graph pass; tracing warns that the
    clip length is fixed, which it is by contract. Nothing a user can act on, so it stays out of the
    worker's log (warnings and errors of the exporter's loggers still pass)."""
    chatty = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [each.level for each in chatty]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*assigned during export")
        for each in chatty:
            each.setLevel(max(each.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for each, level in zip(chatty, levels, strict=True):
                each.setLevel(level)


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> None:
    """`model` traced on `example` (raw input, a few samples) and saved for torch.jit.load: runs in
    Python or C++ (libtorch) without Perceptor's code. The batch size is free; the input size is
    the model's (for speech: its clip length)."""
    wrapper = exportable(model)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    _write_atomically(Path(path), lambda p: traced.save(str(p)))


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> int:
    """`model` as one self-contained ONNX file (weights inside: a browser cannot follow a side
    .data file) with a dynamic batch dimension; returns its opset. Input `pixels` uint8 N×C×H×W or
    `waveform` float32 N×L, output `probabilities` float32 N×classes."""
    import onnx

    wrapper = exportable(model)
    if len(example) < 2:  # torch.export specialises a batch dimension of 1 to a constant
        example = torch.cat([example[:1], example[:1]])
    batch = torch.export.Dim("batch")
    path = Path(path)
    with _quiet():
        _write_atomically(path, lambda p: torch.onnx.export(
            wrapper, (example,), str(p), input_names=[input_name(model)], output_names=[OUTPUT],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False))
    opsets = onnx.load(str(path), load_external_data=False).opset_import
    return next(o.version for o in opsets if o.domain in ("", "ai.onnx"))


def _compare(expected: np.ndarray, got: np.ndarray, tolerance: float) -> dict:
    if got.shape != expected.shape:
        raise ValueError(f"the file answers with shape {got.shape}, the PyTorch model with {expected.shape}")
    top1 = int((expected.argmax(1) == got.argmax(1)).sum())
    diff = float(np.abs(expected - got).max())
    return {"samples": len(expected), "top1_agree": top1, "max_abs_diff": diff, "tolerance": tolerance,
            "passed": top1 == len(expected) and diff <= tolerance}  # NaN compares False: NaN answers fail


def _reference(model: nn.Module, samples: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return exportable(model)(samples).numpy()


def onnx_parity(model: nn.Module, onnx_path: str | Path, samples, tolerance: float = PARITY_TOLERANCE) -> dict:
    """PyTorch and onnxruntime (CPU) on the same raw samples: {"samples", "top1_agree",
    "max_abs_diff", "tolerance", "passed"}; passed = top-1 agrees on all and no probability differs
    by more than `tolerance`."""
    import onnxruntime as ort

    samples = torch.as_tensor(samples)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {input_name(model): samples.numpy()})[0]
    return _compare(_reference(model, samples), got, tolerance)


def torchscript_parity(model: nn.Module, path: str | Path, samples, tolerance: float = PARITY_TOLERANCE) -> dict:
    """The saved TorchScript file, loaded back, against the model: a trace records one path through
    the code, so it is checked like the ONNX graph."""
    samples = torch.as_tensor(samples)
    with _quiet():  # torch.jit is deprecated in favour of torch.export, which has no C++ runtime of its own
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        got = loaded(samples).numpy()
    return _compare(_reference(model, samples), got, tolerance)


def _parity_words(parity: dict) -> str:
    return (f"top-1 agrees on {parity['top1_agree']}/{parity['samples']} held-out samples and the largest "
            f"probability difference is {parity['max_abs_diff']:.1e} (the limit is {parity['tolerance']:.0e})")


def _export_one(what: str, path: Path, export: Callable[[], dict], check: Callable[[], dict]) -> dict:
    """One format: written, checked, described; or removed with the reason (never raises)."""
    try:
        started = time.perf_counter()
        entry = {"ok": True, "file": path.name, **export()}
        entry.update(bytes=path.stat().st_size, seconds=round(time.perf_counter() - started, 2))
        parity = check()
    except Exception as exc:  # noqa: BLE001 - an export that fails is recorded, not fatal
        logger.exception("%s export failed", what)
        path.unlink(missing_ok=True)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"ok": False, "reason": f"The {what} export failed: {type(exc).__name__}: {first_line}".rstrip(": ")}
    if not parity["passed"]:
        path.unlink(missing_ok=True)
        return {"ok": False, "parity": parity,
                "reason": f"The {what} file does not answer like the PyTorch model: {_parity_words(parity)}."}
    return {**entry, "parity": parity}


def export_formats(model: nn.Module, samples, directory: str | Path, tolerance: float = PARITY_TOLERANCE) -> dict:
    """model.torchscript.pt and model.onnx in `directory` (created if needed), each checked on `samples` (raw held-out
    inputs, e.g. 32 validation images as uint8 N×C×H×W or clips as float32 N×L):
    {"torchscript": {"ok", "file", "bytes", "seconds", "parity"},
     "onnx": {"ok", "file", "bytes", "seconds", "opset", "input", "output", "parity"}}.
    A format that fails to export or to match is {"ok": False, "reason": "..."} and has no file."""
    samples = torch.as_tensor(samples)
    if len(samples) == 0:
        raise ValueError("there are no samples to check the exported files on")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    example = samples[:2]
    ts_path, onnx_path = directory / TORCHSCRIPT, directory / ONNX

    def torchscript() -> dict:
        export_torchscript(model, ts_path, example)
        return {}

    def onnx() -> dict:
        return {"opset": export_onnx(model, onnx_path, example), "input": input_name(model), "output": OUTPUT}

    return {
        "torchscript": _export_one("TorchScript", ts_path, torchscript,
                                   lambda: torchscript_parity(model, ts_path, samples, tolerance)),
        "onnx": _export_one("ONNX", onnx_path, onnx, lambda: onnx_parity(model, onnx_path, samples, tolerance)),
    }
