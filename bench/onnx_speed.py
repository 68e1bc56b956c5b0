"""Inference time per sample on CPU: the exported ONNX graph in onnxruntime vs the PyTorch model.

The default image model (resnet, 32×32×3) and the default speech model (crnn, 1 s at 16 kHz), 10
classes, at their default widths; weights as built (timing does not depend on their values). Both
sides compute the same thing: raw input (uint8 pixels / float32 waveform) in, probabilities out,
normalisation and the mel front end included. Batch 1 and 32, one thread and the default number of
threads; the median of repeated runs after a warm-up.

    nice -n 10 .venv/bin/python bench/onnx_speed.py
    nice -n 10 .venv/bin/python bench/onnx_speed.py --seconds 5 --batch 1 --batch 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from ml import build_audio_model, build_model  # noqa: E402
from ml.export import ONNX, Probabilities, export_onnx, input_name  # noqa: E402

RATE = 16_000


def models() -> dict[str, tuple[torch.nn.Module, Callable[[int], np.ndarray]]]:
    rng = np.random.default_rng(0)
    image = build_model("resnet", num_classes=10, in_channels=3, height=32, width=32,
                        mean=[125.0, 123.0, 114.0], std=[63.0, 62.0, 66.0]).eval()
    speech = build_audio_model("crnn", num_classes=10, sample_rate=RATE, clip_samples=RATE,
                               mean=[-8.0] * 40, std=[4.0] * 40).eval()
    return {
        "resnet 32×32×3": (image, lambda n: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)),
        "crnn 1 s 16 kHz": (speech, lambda n: (rng.normal(0, 0.1, (n, RATE))).clip(-1, 1).astype(np.float32)),
    }


def median_seconds(run: Callable[[], object], seconds: float) -> float:
    """Median wall time of one call, over as many calls as fit in `seconds` (at least 5), after 3 warm-ups."""
    for _ in range(3):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="repeatable; default: 1 and 32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    args = parser.parse_args()
    batches = args.batch or [1, 32]
    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__} · onnxruntime {ort.__version__} · {os.cpu_count()} CPUs · "
          f"default threads: torch {default_threads}, onnxruntime one per core")
    print(f"{'model':16s} {'batch':>5s} {'threads':>8s} {'PyTorch ms/sample':>18s} {'ONNX ms/sample':>15s} "
          f"{'speed-up':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (model, make) in models().items():
            path = Path(tmp) / f"{input_name(model)}-{ONNX}"
            started = time.perf_counter()
            export_onnx(model, path, torch.from_numpy(make(2)))
            print(f"{label}: exported in {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
            wrapper = Probabilities(model).eval()
            for threads in sorted({1, default_threads}):
                torch.set_num_threads(threads)
                onnx = session(path, threads if threads == 1 else 0)
                for batch in batches:
                    x = make(batch)
                    tensor = torch.from_numpy(x)

                    def run_torch():
                        with torch.inference_mode():
                            return wrapper(tensor)

                    def run_onnx():
                        return onnx.run(None, {input_name(model): x})

                    pt = median_seconds(run_torch, args.seconds) / batch * 1e3
                    ox = median_seconds(run_onnx, args.seconds) / batch * 1e3
                    print(f"{label:16s} {batch:5d} {threads:8d} {pt:18.3f} {ox:15.3f} {pt / ox:8.2f}×")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
