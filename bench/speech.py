"""FSDD speaker-independent benchmark: leave one speaker out, for each speech architecture.

The Free Spoken Digit Dataset (/work/shared/datasets/fsdd-digits.zip: 3,000 clips, 8 kHz, files
`{digit}_{speaker}_{index}.wav`, 6 speakers × 10 digits × 50) is read straight from the zip and
decoded like ingestion does (ml.audio: resampled to 16 kHz mono, fit_length to 1 s: shorter clips
zero-padded and centred, longer ones cut to their loudest second). Each fold trains on five
speakers and tests on the sixth (its clips are the validation split, so the curve shows held-out
accuracy; nothing is tuned per fold: the same epochs and settings for every fold). Printed per
fold: held-out accuracy, wall and CPU minutes; per architecture: mean and worst accuracy.

    nice -n 10 .venv/bin/python bench/speech.py                                  # 3 nets × 6 folds, defaults
    nice -n 10 .venv/bin/python bench/speech.py --archs cnn_mel --folds theo,george --epochs 10
    nice -n 10 .venv/bin/python bench/speech.py --archs crnn --set lr=0.005 --arch-arg hidden=96
    nice -n 10 .venv/bin/python bench/speech.py --archs crnn --set synthetic_voices=300 --epochs 25

With `--set synthetic_voices=N` each fold's training split also gets N espeak-ng clips per digit
(the training option: the class names "0"…"9" spoken in synthetic voices); the held-out speaker
stays the only test data.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FSDD, load_fsdd, parse_value  # noqa: E402
from ml.audio import SAMPLE_RATE  # noqa: E402
from ml.config import TrainConfig, config_defaults  # noqa: E402
from ml.data import AudioData  # noqa: E402
from ml.evaluate import predict_probabilities  # noqa: E402
from ml.nets import architectures_for  # noqa: E402
from ml.train import available_cpus, train  # noqa: E402

def top_confusions(confusion: list[list[int]], classes: list[str], count: int = 5) -> str:
    """The largest off-diagonal cells of a confusion matrix (rows: true class), "6→8 12"."""
    cells = [(n, true, heard) for true, row in enumerate(confusion) for heard, n in enumerate(row) if true != heard]
    return ", ".join(f"{classes[t]}→{classes[h]} {n}" for n, t, h in sorted(cells, reverse=True)[:count] if n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=FSDD)
    parser.add_argument("--archs", default=",".join(architectures_for("audio")),
                        help="comma-separated speech architectures (default: all)")
    parser.add_argument("--folds", default="", help="comma-separated held-out speakers (default: all six)")
    parser.add_argument("--epochs", type=int, help="override the default number of epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    parser.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a default architecture argument (tuning only), e.g. base_filters=24")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs allowed)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fsdd-16k-1s.npz"),
                        help="decoded clips are kept here between runs (outside the project)")
    parser.add_argument("--synthetic-cache", type=Path,
                        help="keep the synthetic clips in this folder and reuse them across folds and runs "
                             "(outside the project; CPU minutes then leave out the ~1 of synthesis per fold)")
    parser.add_argument("--out", type=Path, help="append one JSON line per fold to this file")
    parser.add_argument("--probs", type=Path,
                        help="save each fold's held-out class probabilities here, as {arch}-seed{seed}-{speaker}.npy "
                             "(500×10, the speaker's clips in archive order): models can be compared or averaged later")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.monotonic()
    x, y, speaker = load_fsdd(args.archive, clip_samples=SAMPLE_RATE, cache=args.cache)
    speakers = sorted(set(speaker.tolist()))
    folds = [f for f in args.folds.split(",") if f] or speakers
    unknown = set(folds) - set(speakers)
    if unknown:
        parser.error(f"unknown speaker(s) {', '.join(sorted(unknown))}; choose from {', '.join(speakers)}")
    classes = [str(d) for d in range(10)]
    print(f"FSDD: {len(x)} clips, {len(speakers)} speakers ({', '.join(speakers)}), loaded in "
          f"{time.monotonic() - started:.1f} s; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, "
          f"{min(torch.get_num_threads(), available_cpus())} threads", flush=True)

    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    if args.epochs:
        overrides["epochs"] = args.epochs
    arch_args = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.arch_arg)}
    summary = []
    for arch in [a for a in args.archs.split(",") if a]:
        config = TrainConfig.from_dict({**config_defaults("audio"), **overrides, "arch": arch}, modality="audio")
        if arch_args:  # tuning only: the registry's defaults are what users get
            import ml.nets

            spec = ml.nets.ARCHITECTURES[arch]
            ml.nets.ARCHITECTURES[arch] = type(spec)(spec.build, spec.label, spec.help,
                                                     {**spec.defaults, **arch_args}, spec.modality)
        extra = f" arch_args {arch_args}" if arch_args else ""
        print(f"\n{arch}: {json.dumps(config.to_dict())}{extra}", flush=True)
        accs, minutes, cpu_minutes = [], [], []
        for held_out in folds:
            test = speaker == held_out
            rng = np.random.default_rng(0)
            train_idx = rng.permutation(np.flatnonzero(~test))
            data = AudioData(x[train_idx], y[train_idx], x[test], y[test], classes, sample_rate=SAMPLE_RATE)
            wall, cpu = time.monotonic(), time.process_time()
            result = train(config, data, device="cpu", synthetic_cache=args.synthetic_cache)
            wall, cpu = (time.monotonic() - wall) / 60, (time.process_time() - cpu) / 60
            acc = result.metrics["val_acc"]
            if args.probs:
                args.probs.mkdir(parents=True, exist_ok=True)
                probs = predict_probabilities(result.model, data)
                np.save(args.probs / f"{arch}-seed{config.seed}-{held_out}.npy", probs)
            curve = " ".join(f"{h['val_acc'] * 100:.0f}" for h in result.history)
            train_acc = result.metrics["train_acc"] * 100
            print(f"  held out {held_out:<10} acc {acc * 100:5.1f} %  train acc {train_acc:5.1f} %"
                  f"  {wall:5.2f} min wall  {cpu:5.2f} min CPU   (val per epoch: {curve})", flush=True)
            print(f"    most confused (heard as, of 50): {top_confusions(result.confusion, classes)}", flush=True)
            accs.append(acc)
            minutes.append(wall)
            cpu_minutes.append(cpu)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps({"arch": arch, "held_out": held_out, "acc": acc, "wall_min": wall,
                                        "cpu_min": cpu, "config": config.to_dict(), "arch_args": arch_args,
                                        "history": [h["val_acc"] for h in result.history],
                                        "confusion": result.confusion}) + "\n")
        summary.append((arch, float(np.mean(accs)), float(np.min(accs)), float(np.mean(cpu_minutes)),
                        float(np.mean(minutes)), len(accs)))
    # CPU minutes are the comparable figure on a shared machine; wall minutes depend on the load.
    print("\n| network | folds | mean accuracy | worst fold | CPU minutes per fold | wall minutes per fold |")
    print("|---|---|---|---|---|---|")
    for arch, mean, worst, cpu_mins, mins, n in summary:
        print(f"| `{arch}` | {n} | {mean * 100:.1f} % | {worst * 100:.1f} % | {cpu_mins:.1f} | {mins:.1f} |")


if __name__ == "__main__":
    main()
