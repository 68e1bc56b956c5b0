"""Transfer benchmark: train on the synthetic espeak-ng digits only, test on every FSDD recording.

Generates the demo speech archive (ml.synthetic_speech.write_digits_archive, the one `make run`
creates), decodes it like ingestion does (ml.audio: 16 kHz mono, fit_length to 1 s), holds out
10 % of it (stratified) as the validation split, trains one speech network with the speech
defaults, and tests on all 3,000 clips of the Free Spoken Digit Dataset
(/work/shared/datasets/fsdd-digits.zip: 6 real speakers, 8 kHz, files `{digit}_{speaker}_{index}.wav`).
Nothing from FSDD is used for training or tuning a run. Prints generation time, training minutes,
accuracy on the synthetic validation split, and FSDD accuracy overall, per speaker and per digit.
Chance is 10 %.

    nice -n 10 .venv/bin/python bench/speech_transfer.py                         # defaults
    nice -n 10 .venv/bin/python bench/speech_transfer.py --per-class 300 --arch crnn --epochs 20
    nice -n 10 .venv/bin/python bench/speech_transfer.py --recipe lowpass_p=1.0 --recipe noise_p=0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FSDD, load_fsdd, parse_value  # noqa: E402
from ml.audio import SAMPLE_RATE, decode_audio, fit_length, to_int16  # noqa: E402
from ml.config import TrainConfig, config_defaults  # noqa: E402
from ml.data import AudioData  # noqa: E402
from ml.nets import DEFAULT_ARCH  # noqa: E402
from ml.synthetic_speech import DIGITS, RECIPE, write_digits_archive  # noqa: E402
from ml.train import available_cpus, train  # noqa: E402

CLIP_SAMPLES = SAMPLE_RATE  # 1 s, the ingest default


def load_synthetic(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """int16 N×1 s clips and labels (index into DIGITS) from a `<digit>/<file>.wav` archive."""
    clips, labels = [], []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".wav"):
                continue
            wave, _ = fit_length(decode_audio(archive.read(name)), CLIP_SAMPLES)
            clips.append(to_int16(wave))
            labels.append(DIGITS.index(name.split("/")[0]))
    return np.stack(clips), np.array(labels, dtype=np.int64)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == k))[: max(1, round(fraction * np.sum(y == k)))]
                          for k in np.unique(y)])
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[val] = False
    return np.flatnonzero(train_mask), np.sort(val)


def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            wave = torch.from_numpy(x[i:i + batch].astype(np.float32) / 32768.0)
            out.append(model(wave).argmax(1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, default=FSDD)
    parser.add_argument("--per-class", type=int, help="clips per digit (default: write_digits_archive's)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (training uses the config's seed)")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ml.synthetic_speech.Recipe field, e.g. lowpass_p=1.0 or snr_db=[10,40]")
    parser.add_argument("--arch", default=DEFAULT_ARCH["audio"])
    parser.add_argument("--epochs", type=int, help="override the default number of epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs allowed)")
    parser.add_argument("--keep", type=Path, help="also keep the generated archive at this path")
    parser.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe_overrides = {}
    for item in args.recipe:
        key, _, value = item.partition("=")
        value = parse_value(value)
        recipe_overrides[key] = tuple(value) if isinstance(value, list) else value
    recipe = dataclasses.replace(RECIPE, **recipe_overrides)
    overrides = {"arch": args.arch}
    if args.epochs:
        overrides["epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = TrainConfig.from_dict({**config_defaults("audio"), **overrides}, modality="audio")

    with tempfile.TemporaryDirectory() as tmp:
        archive = args.keep or Path(tmp) / "digits.zip"
        started = time.perf_counter()
        kwargs = {"per_class": args.per_class} if args.per_class else {}
        write_digits_archive(archive, seed=args.seed, recipe=recipe, **kwargs)
        gen_s = time.perf_counter() - started
        x, y = load_synthetic(archive)
    train_idx, val_idx = stratified_split(y, 0.1, args.seed)
    x_test, y_test, speakers = load_fsdd(args.fsdd)
    print(f"generated {len(x)} clips ({len(x) // len(DIGITS)} per digit) in {gen_s:.1f} s; "
          f"FSDD: {len(x_test)} clips, {len(set(speakers))} speakers", flush=True)
    if recipe_overrides:
        print(f"recipe overrides: {recipe_overrides}")

    data = AudioData(x[train_idx], y[train_idx], x[val_idx], y[val_idx], list(DIGITS), SAMPLE_RATE,
                     x_test=x_test, y_test=y_test)
    started, cpu_started = time.perf_counter(), time.process_time()

    def report(event) -> None:
        if event.kind == "epoch":
            print(f"  epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.3f} acc {event.train_acc:.3f}, "
                  f"synthetic val acc {event.val_acc:.3f}, {event.elapsed_s / 60:.1f} min", flush=True)
        elif event.kind == "notice":
            print(f"  notice: {event.message}", flush=True)

    result = train(config, data, callbacks=[report])
    minutes, cpu_minutes = (time.perf_counter() - started) / 60, (time.process_time() - cpu_started) / 60
    predicted = predict(result.model, x_test)
    correct = predicted == y_test

    per_speaker = {s: float(correct[speakers == s].mean()) for s in sorted(set(speakers))}
    per_digit = {DIGITS[k]: float(correct[y_test == k].mean()) for k in range(len(DIGITS))}
    print(f"{config.arch}: synthetic val {result.metrics['val_acc']:.3f} | FSDD (all 3,000, real voices) "
          f"{correct.mean():.3f}; training {minutes:.1f} min wall, {cpu_minutes:.1f} min CPU on "
          f"{result.device}, {available_cpus()} CPUs")
    print("  per speaker: " + ", ".join(f"{s} {a:.3f}" for s, a in per_speaker.items()))
    print("  per digit:   " + ", ".join(f"{d} {a:.3f}" for d, a in per_digit.items()))
    confusion = np.zeros((len(DIGITS), len(DIGITS)), dtype=int)
    np.add.at(confusion, (y_test, predicted), 1)
    off = confusion - np.diag(np.diag(confusion))
    worst = np.dstack(np.unravel_index(np.argsort(off, axis=None)[::-1][:5], off.shape))[0]
    print("  most confused (true -> predicted): "
          + ", ".join(f"{DIGITS[t]}->{DIGITS[p]} {off[t, p]}" for t, p in worst))
    if args.out:
        record = {"arch": config.arch, "config": config.to_dict(), "per_class": len(x) // len(DIGITS),
                  "generator_seed": args.seed, "recipe": recipe_overrides, "generate_s": round(gen_s, 1),
                  "synthetic_val_acc": result.metrics["val_acc"], "fsdd_acc": float(correct.mean()),
                  "per_speaker": per_speaker, "per_digit": per_digit, "minutes": round(minutes, 2),
                  "cpu_minutes": round(cpu_minutes, 2), "device": result.device, "cpus": available_cpus(),
                  "torch": torch.__version__, "python": platform.python_version()}
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
