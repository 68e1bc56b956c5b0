"""Generated audio for tests: tones, chirps and archives of class folders of clips. No downloads.

    tone(440, 0.5)                          # float32 mono wave in [-1, 1]
    write_clip(path, wave, 8000, "PCM_24")  # any rate, any soundfile subtype, mono or stereo
    speech_archive(tmp / "s.zip")           # class folders "low"/"high"/"sweep" of clips: learnable
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000

# Three classes a small network separates in a few epochs: a low tone, a high tone, a rising chirp.
CLASSES = ("high", "low", "sweep")


def tone(freq: float, seconds: float, sample_rate: int = RATE, *, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(f0: float, f1: float, seconds: float, sample_rate: int = RATE, *, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-9)))
    return (amplitude * np.sin(phase)).astype(np.float32)


def class_clip(label: str, rng: np.random.Generator, sample_rate: int = RATE) -> np.ndarray:
    """One clip of a CLASSES label, 0.3-0.9 s long, placed at a random offset in up to 1 s, with noise."""
    seconds = float(rng.uniform(0.3, 0.9))
    if label == "low":
        wave = tone(rng.uniform(250, 400), seconds, sample_rate)
    elif label == "high":
        wave = tone(rng.uniform(1800, 2600), seconds, sample_rate)
    elif label == "sweep":
        wave = chirp(300, 3000, seconds, sample_rate)
    else:
        raise ValueError(f"unknown class {label!r}; choose from {CLASSES}")
    envelope = np.minimum(1.0, np.minimum(np.arange(len(wave)), np.arange(len(wave))[::-1]) / (0.02 * sample_rate))
    wave = wave * envelope.astype(np.float32)
    out = np.zeros(sample_rate, dtype=np.float32)
    start = int(rng.integers(0, sample_rate - len(wave) + 1))
    out[start:start + len(wave)] = wave
    out += rng.normal(0, 0.01, sample_rate).astype(np.float32)
    return np.clip(out, -1, 1)


def wav_bytes(wave: np.ndarray, sample_rate: int = RATE, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    """Encode a wave (N, or N×channels) with soundfile: fmt WAV/FLAC/OGG, subtype PCM_U8/16/24/32, FLOAT..."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def write_clip(path: Path, wave: np.ndarray, sample_rate: int = RATE, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    path.write_bytes(wav_bytes(wave, sample_rate, subtype if fmt != "OGG" else "VORBIS", fmt))
    return path


def speech_archive(path: Path, *, classes: Sequence[str] = CLASSES, per_class: int = 12, seed: int = 0,
                   sample_rate: int = RATE, extra: dict[str, bytes] | None = None) -> Path:
    """A .zip (or .tar.gz by suffix) of `<class>/<class>_<i>.wav` clips plus `extra` {name: bytes}."""
    rng = np.random.default_rng(seed)
    files = {f"{label}/{label}_{i:03d}.wav": wav_bytes(class_clip(label, rng, sample_rate), sample_rate)
             for label in classes for i in range(per_class)}
    files.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    return path


def clip_arrays(n: int, *, classes: Sequence[str] = CLASSES, seed: int = 0,
                sample_rate: int = RATE) -> tuple[np.ndarray, np.ndarray]:
    """n int16 clips of 1 s (balanced classes, shuffled) and their int64 labels: AudioData-ready."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    rng.shuffle(y)
    x = np.stack([class_clip(classes[k], rng, sample_rate) for k in y]) if n else np.zeros((0, sample_rate))
    return (np.clip(x, -1, 1) * 32767).astype(np.int16), y.astype(np.int64)


def flac_declaring(wave: np.ndarray, declared_frames: int, sample_rate: int = RATE) -> bytes:
    """A FLAC file of `wave` whose header (STREAMINFO) claims `declared_frames` samples: what a
    crafted or truncated upload looks like. libsndfile trusts this field (it clamps a WAV's)."""
    data = bytearray(wav_bytes(wave, sample_rate, "PCM_16", "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must be the first metadata block"
    # STREAMINFO body starts at byte 8; after 10 bytes of block/frame sizes come 20 bits of rate,
    # 3 of channels, 5 of bits per sample and 36 of total samples: a big-endian 64-bit field.
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | (declared_frames & ((1 << 36) - 1))
    data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


def speech_commands_files(*, words: Sequence[str] = ("no", "up", "yes"), per_word: int = 6, seed: int = 0,
                          validation: Sequence[int] = (1,), testing: Sequence[int] = (2, 3),
                          noise_seconds: Sequence[float] = (3.0, 2.5), top: str = "",
                          listed_but_missing: bool = True) -> dict[str, bytes]:
    """The Google Speech Commands layout, small: `<word>/<hex>_nohash_<i>.wav` (16 kHz PCM_16, 1 s,
    every clip different), `validation_list.txt` / `testing_list.txt` naming the clips whose index is
    in `validation` / `testing` (plus a file that does not exist), `_background_noise_/` with one
    noise recording per `noise_seconds` (the second and later at 44.1 kHz) and its README.md, and
    LICENSE. `top` puts everything inside one folder, as zipping a folder does."""
    rng = np.random.default_rng(seed)
    labels = ("low", "high", "sweep")
    files: dict[str, bytes] = {}
    val_list, test_list = [], []
    for w, word in enumerate(words):
        for i in range(per_word):
            name = f"{word}/{(w * 1000 + i) * 2654435761 % 2**32:08x}_nohash_{i}.wav"
            files[name] = wav_bytes(class_clip(labels[w % 3], rng))
            (val_list if i in validation else test_list if i in testing else []).append(name)
    if listed_but_missing:
        val_list.append(f"{words[0]}/ffffffff_nohash_9.wav")
    for k, seconds in enumerate(noise_seconds):
        rate = RATE if k == 0 else 44_100
        noise = rng.normal(0, 0.1, int(round(seconds * rate))).astype(np.float32)
        files[f"_background_noise_/noise_{k}.wav"] = wav_bytes(noise, rate)
    if noise_seconds:
        files["_background_noise_/README.md"] = b"Noise recordings for augmentation.\n"
    files["validation_list.txt"] = ("\n".join(val_list) + "\n").encode()
    files["testing_list.txt"] = ("\n".join(test_list) + "\n").encode()
    files["LICENSE"] = b"CC BY 4.0\n"
    if top:
        files = {f"{top}/{name}": data for name, data in files.items()}
    return files
