"""CIFAR-10 (10k subset) benchmark: seed_cnn vs the default network, same data, same defaults.

Reads the archive directly (zipfile + ml.images.decode_image, as ingestion would), makes a
stratified 80/20 hold-out, trains each architecture with the default TrainConfig (only `arch`
changes, like a user picking it in the form) and prints validation accuracy and minutes.

    nice -n 10 .venv/bin/python bench/cifar.py                      # both networks, defaults
    nice -n 10 .venv/bin/python bench/cifar.py --arch resnet --set epochs=10 --set lr=0.003
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parse_value  # noqa: E402
from ml import ARCHITECTURES, ImageData, TrainConfig, train  # noqa: E402
from ml.images import decode_image  # noqa: E402
from ml.train import available_cpus  # noqa: E402

ARCHIVE = Path("/work/shared/datasets/cifar10-train-10k.zip")


def load_archive(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images as uint8 N×32×32×3 and labels, classes = sorted folder names."""
    by_class: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) < 2 or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            by_class.setdefault(parts[-2], []).append(archive.read(info))
    classes = sorted(by_class)
    images, labels = [], []
    for label, name in enumerate(classes):
        for data in by_class[name]:
            images.append(decode_image(data, size=(32, 32), channels=3))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * val_fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--arch", action="append", help="architecture(s) to train (default: seed_cnn and resnet)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    parser.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a default architecture argument, e.g. base_filters=24 (tuning only)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many images (quick checks)")
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()

    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    for kv in args.arch_arg:
        key, value = kv.split("=", 1)
        for spec in ARCHITECTURES.values():
            if key in spec.defaults:
                spec.defaults[key] = parse_value(value)

    t0 = time.monotonic()
    x, y, classes = load_archive(args.archive)
    if args.limit:
        keep = np.random.default_rng(args.split_seed).permutation(len(x))[: args.limit]
        x, y = x[keep], y[keep]
    train_idx, val_idx = stratified_split(y, 0.2, args.split_seed)
    data = ImageData(x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes)
    print(f"# {args.archive.name}: {len(train_idx)} train / {len(val_idx)} val, {len(classes)} classes, "
          f"decoded in {time.monotonic() - t0:.1f}s", flush=True)
    print(f"# {platform.processor() or platform.machine()}, {available_cpus()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, python {platform.python_version()}", flush=True)

    rows = []
    for arch in args.arch or ["seed_cnn", "resnet"]:
        config = TrainConfig.from_dict({**overrides, "arch": arch})
        arch_args = ARCHITECTURES[arch].defaults
        print(f"\n## {arch} {arch_args} {config.to_dict()}", flush=True)

        def report(event, arch=arch):
            if event.kind == "epoch":
                print(f"{arch} epoch {event.epoch:3d}/{event.epochs}  train loss {event.train_loss:.3f} "
                      f"acc {event.train_acc:.3f}  val loss {event.val_loss:.3f} acc {event.val_acc:.3f}  "
                      f"lr {event.lr:.2e}  {event.samples_per_s:.0f} img/s  {event.elapsed_s / 60:.1f} min",
                      flush=True)

        cpu_start = time.process_time()
        result = train(config, data, callbacks=[report])
        cpu_minutes = (time.process_time() - cpu_start) / 60
        m = result.metrics
        rows.append((arch, m["val_acc"], m["duration_s"] / 60, cpu_minutes, m["samples_per_s"], config.epochs,
                     result.device))

    # Wall minutes depend on who else uses the machine; CPU minutes (all threads) much less so.
    print("\n| network | val acc | wall min | CPU min | train img/s | epochs | device |")
    print("|---|---|---|---|---|---|---|")
    for arch, acc, minutes, cpu_minutes, speed, epochs, device in rows:
        print(f"| {arch} | {acc:.1%} | {minutes:.1f} | {cpu_minutes:.1f} | {speed:.0f} | {epochs} | {device} |")


if __name__ == "__main__":
    main()
