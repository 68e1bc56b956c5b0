"""What the bench scripts share: `--set KEY=VALUE` parsing and the FSDD loader."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ml.audio import SAMPLE_RATE, decode_audio, fit_length, to_int16

FSDD = Path("/work/shared/datasets/fsdd-digits.zip")
FSDD_NAME = re.compile(r"(?:^|/)(\d)_([a-z]+)_(\d+)\.wav$")  # {digit}_{speaker}_{index}.wav


def parse_value(text: str):
    """A command-line value as JSON (numbers, lists, true/false), else the bare string: optimizer=sgd."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_fsdd(path: Path = FSDD, *, clip_samples: int = SAMPLE_RATE,
              cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 N×clip_samples clips at 16 kHz, digit labels and speaker names, in file-name order,
    decoded as ingestion does (ml.audio: resampled, fit_length). With `cache`, an .npz kept there."""
    if cache is not None and cache.exists():
        saved = np.load(cache)
        return saved["x"], saved["y"], saved["speaker"]
    clips, labels, speakers = [], [], []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            match = FSDD_NAME.search(name)
            if match:
                wave, _ = fit_length(decode_audio(archive.read(name), sample_rate=SAMPLE_RATE), clip_samples)
                clips.append(to_int16(wave))
                labels.append(int(match.group(1)))
                speakers.append(match.group(2))
    x, y, speaker = np.stack(clips), np.array(labels, dtype=np.int64), np.array(speakers)
    if cache is not None:
        np.savez(cache, x=x, y=y, speaker=speaker)
    return x, y, speaker
