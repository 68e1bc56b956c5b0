"""Training throughput (images/s) of each image network on one device, through ml.train itself.

Random 32×32 RGB images (throughput does not depend on content), 10 classes; one warm-up epoch is
excluded by reporting the last epoch's figure. On CUDA, ml.train runs channels_last with bf16
autocast; on CPU, float32 (bf16 where the CPU has AMX).

    .venv/bin/python bench/throughput.py                         # every architecture, auto device
    .venv/bin/python bench/throughput.py --device cuda --images 50000 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ml import ARCHITECTURES, ImageData, TrainConfig, train  # noqa: E402
from ml.train import describe_device, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", action="append", help="repeatable; default: all")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n_val = max(args.images // 10, 10)
    x = rng.integers(0, 256, (args.images + n_val, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.images + n_val).astype(np.int64)
    data = ImageData(x[: args.images], y[: args.images], x[args.images :], y[args.images :], [str(i) for i in range(10)])
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)} · torch {torch.__version__} · {args.images} images "
          f"{args.size}×{args.size} · batch {args.batch_size} · {args.epochs} epochs")
    for arch in args.arch or list(ARCHITECTURES):
        last: list = []
        config = TrainConfig(arch=arch, epochs=args.epochs, batch_size=args.batch_size)
        started = time.monotonic()
        result = train(config, data, device=device, callbacks=[lambda e: e.kind == "epoch" and last.append(e)])
        epoch_s = (last[-1].elapsed_s - last[-2].elapsed_s) if len(last) > 1 else last[-1].elapsed_s
        print(f"{arch:10s} {args.images / epoch_s:10.0f} images/s (last epoch, incl. validation) · "
              f"{result.metrics['samples_per_s']:10.0f} images/s (ml, all epochs) · "
              f"{time.monotonic() - started:6.1f} s in all")


if __name__ == "__main__":
    main()
