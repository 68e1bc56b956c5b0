"""Speech ingest speed: an archive of class folders of clips -> perceptor-audio/1, through ml itself.

Ingests the Free Spoken Digit Dataset (3,000 WAV clips, 8 kHz 16-bit mono, 0.14-2.3 s; see
../shared/datasets/README.md) into a temporary folder and prints clips/s, wall time, the growth of
the peak resident memory over the ingest, and the report's summary. Both passes are included
(headers, then decode + resample to 16 kHz + pad/trim + write). One torch thread by default.

    nice -n 10 .venv/bin/python bench/ingest_audio.py
    .venv/bin/python bench/ingest_audio.py --archive other.zip --clip-seconds 1.5 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ml.audio import decode_audio, encode_wav  # noqa: E402
from ml.data import load_audio_dataset  # noqa: E402
from ml.ingest_audio import ingest_audio_archive  # noqa: E402

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "fsdd-digits.zip"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (resampling)")
    args = parser.parse_args()
    if not args.archive.exists():
        sys.exit(f"{args.archive} not found")
    torch.set_num_threads(args.threads)

    # Warm up what every run pays once (torchaudio import, resampler), so RSS growth is the ingest's.
    decode_audio(encode_wav(np.full(4000, 0.1, np.float32), 8000))
    calls = []
    before = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="perceptor-bench-") as tmp:
        started, cpu_started = time.perf_counter(), time.process_time()
        report = ingest_audio_archive(args.archive, Path(tmp) / "out", clip_seconds=args.clip_seconds,
                                      progress=lambda done, total: calls.append((done, total)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        growth = peak_rss_mib() - before
        data = load_audio_dataset(Path(tmp) / "out")
        stored_mib = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir()) / 2**20

    n = report.num_samples + len(report.skipped)
    print(f"archive: {args.archive.name} ({args.archive.stat().st_size / 2**20:.1f} MiB) · torch {torch.__version__} · "
          f"{torch.get_num_threads()} thread(s)")
    print(f"ingest: {n:,} files in {wall:.2f} s wall = {n / wall:,.0f} clips/s · {cpu:.2f} s CPU = "
          f"{n / cpu:,.0f} clips per CPU-second")
    print(f"memory: peak RSS growth {growth:.0f} MiB (peak {peak_rss_mib():.0f} MiB) · stored {stored_mib:.1f} MiB · "
          f"progress calls {len(calls):,}")
    d = report.durations
    print(f"classes: {len(report.classes)} ({', '.join(report.classes)}) · clip {report.clip_samples} samples "
          f"at {report.sample_rate} Hz")
    print(f"split ({report.split}): train {report.num_train:,} · val {report.num_val:,} · test {report.num_test:,}")
    for part in ("train", "val", "test"):
        print(f"  {part:5s} per class: {report.counts[part]}")
    print(f"durations (s): min {d['min']} · mean {d['mean']} · median {d['median']} · max {d['max']}")
    print(f"trimmed {report.trimmed:,} · padded {report.padded:,} · skipped {len(report.skipped)} · "
          f"warnings {len(report.warnings)} · noise {report.noise_files} files, {report.noise_seconds} s")
    for item in (report.skipped + report.warnings)[:5]:
        print(f"  {item['file']}: {item['reason']}")
    rms = float(np.sqrt(np.mean((data.x_train[:200].astype(np.float32) / 32768) ** 2)))
    print(f"loaded back: x_train {data.x_train.shape} {data.x_train.dtype} · RMS of 200 clips {rms:.3f}")


if __name__ == "__main__":
    main()
