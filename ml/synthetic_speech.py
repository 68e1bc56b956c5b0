"""Synthetic spoken digits: the offline demo speech dataset, made with espeak-ng (ml.tts).

Each clip is one digit word, "zero" ... "nine", spoken by a random English voice and variant at a
random speed, pitch and pitch range, with random intonation or emphasis, then varied the way
real recordings vary: a vocal-tract / tempo warp, a room (a synthetic exponentially decaying
impulse response), a telephone- or 8 kHz-like band limit, a microphone tilt, background noise
(white, pink or brown) at a random SNR, a random position in the clip and a random level. The
variation is there so that a model trained on these clips recognises real voices; the figure is
in docs/benchmarks.md (bench/speech_transfer.py: train on this set, test on all of FSDD).

    write_digits_archive("digits.zip", per_class=200, seed=0)   # <digit>/<digit>_0001.wav ...

The same renderer speaks any class name for training (`synthetic_voices`, the `synthetic_voices`
hyperparameter: clips added to a speech dataset's training split; see ml.train).

Clips are 16 kHz 16-bit mono WAV, at most 1 s long. The archive is byte-identical for a seed: the
clips come from a private espeak-ng instance (see ml.tts) in a fixed order, every random choice
comes from the seed, and the zip members carry a fixed timestamp.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ml import tts
from ml.audio import fit_length, to_int16

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
MAX_SECONDS = 1.0

# Warped rates are multiples of 350 Hz: 22050 / gcd stays small (at most 63), so torchaudio's
# polyphase kernel stays small and resampling costs well under a millisecond per clip.
_RATE_STEP = 350


@dataclass(frozen=True)
class Recipe:
    """Ranges each clip's settings are drawn from (uniformly unless said otherwise).

    Evidence (bench/speech_transfer.py, 200 per digit, train on these clips only, test on all 3,000
    FSDD recordings, chance 10 %, 2 shared CPU cores, 2026-11-30): cnn_mel 67.1 % with every
    espeak-ng variant, 70.3 % without NOVELTY_VARIANTS; crnn 69.3 % with the defaults below.
    Within run-to-run noise (±2-3 points) and so left as they are: lowpass_p 1.0 (65.7 %), less
    noise (noise_p 0.5, SNR 15-40 dB: 66.1 %), peak_dbfs down to -40 (crnn 67.9 %, helps the quiet
    speaker theo, hurts others), warp 0.8-1.3 (crnn 65.1 %); 300 per digit: 69.6 % (cnn_mel).
    """

    speed: tuple[int, int] = (130, 300)        # words per minute; espeak's normal is 175
    pitch: tuple[int, int] = (10, 90)          # espeak base pitch, 50 normal
    pitch_range: tuple[int, int] = (10, 100)   # intonation range, 0 monotone, 50 normal
    variant_p: float = 0.85                    # share of clips spoken with a voice variant (+m3, +f2, ...)
    variants: tuple[str, ...] | None = None    # the variants drawn from; None: espeak-ng's, less NOVELTY_VARIANTS
    emphasis_p: float = 0.15                   # share spoken with SSML <emphasis>; the rest end in . ! ? , or nothing
    warp: tuple[float, float] = (0.85, 1.18)   # resampling factor: formants and pitch ÷ warp, duration × warp
    reverb_p: float = 0.5                      # share of clips in a room
    rt60: tuple[float, float] = (0.08, 0.6)    # room reverberation time, seconds
    wet: tuple[float, float] = (0.2, 1.0)      # reverberant share of the room's output
    lowpass_p: float = 0.5                     # share band-limited like 8 kHz or telephone audio
    lowpass_hz: tuple[float, float] = (2800.0, 4000.0)
    highpass_p: float = 0.3                    # share with the low end cut (small microphones, phones)
    highpass_hz: tuple[float, float] = (80.0, 400.0)
    tilt: tuple[float, float] = (-0.6, 0.4)    # spectral slope: gain ∝ (f / 1 kHz) ** tilt, microphone colour
    noise_p: float = 0.8                       # share with background noise
    snr_db: tuple[float, float] = (5.0, 40.0)  # speech-to-noise ratio
    peak_dbfs: tuple[float, float] = (-24.0, -1.0)
    pad_seconds: tuple[float, float] = (0.02, 0.6)  # silence (with the noise) around the word, ≤ 1 s in all


RECIPE = Recipe()

# Variants the default recipe leaves out: robots, a demon, whispers, an unstable test voice. Digits
# spoken by them transferred worse to real voices (FSDD 67.1 % with every variant, 70.3 % without).
NOVELTY_VARIANTS = frozenset({"AnxiousAndy", "Demonic", "Mr serious", "Storm", "Tweaky", "UniRobot", "anikaRobot",
                              "fast", "whisper", "whisperf"})
NOVELTY_PREFIXES = ("robosoft", "RicishayMax")


def default_variants(synth: tts.Synthesizer) -> list[str]:
    """The espeak-ng voice variants the default recipe draws from."""
    return [v for v in synth.variants if v not in NOVELTY_VARIANTS and not v.startswith(NOVELTY_PREFIXES)]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _trim(wave: np.ndarray, rate: int, *, threshold_db: float = -40.0, margin_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing frames quieter than threshold_db below the loudest 10 ms frame."""
    frame = max(1, rate // 100)
    n = len(wave) // frame
    if n == 0:
        return wave
    rms = np.sqrt(np.mean(wave[:n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(rms >= rms.max() * 10 ** (threshold_db / 20))
    margin = int(margin_s * rate)
    return wave[max(0, active[0] * frame - margin):min(len(wave), (active[-1] + 1) * frame + margin)]


@functools.lru_cache(maxsize=64)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)  # builds its kernel once: a few warped rates recur


def _resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    with torch.no_grad():
        return _resampler(orig, new)(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))).numpy()


def _fft_filter(wave: np.ndarray, gain: Callable[[np.ndarray], np.ndarray], rate: int) -> np.ndarray:
    """Apply a zero-phase gain curve gain(frequencies in Hz) to the wave."""
    n = len(wave)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(wave, size) * gain(np.fft.rfftfreq(size, 1 / rate))
    return np.fft.irfft(spectrum, size)[:n].astype(np.float32)


def _room(wave: np.ndarray, rng: np.random.Generator, recipe: Recipe, rate: int, room_for: int) -> np.ndarray:
    """Convolve with a synthetic room: a direct path plus exponentially decaying noise (the late reverb)."""
    rt60 = _uniform(rng, recipe.rt60)
    length = max(2, int(min(rt60, 0.5) * rate))
    t = np.arange(length) / rate
    tail = rng.normal(0, 1, length) * np.exp(-6.91 * t / rt60)  # −60 dB at rt60
    tail[: int(0.002 * rate)] = 0  # the first reflections arrive a few ms after the direct sound
    tail /= np.sqrt(np.sum(tail**2)) + 1e-12
    wet = _uniform(rng, recipe.wet)
    ir = wet * tail
    ir[0] += 1.0 - wet
    size = 1 << (len(wave) + length - 2).bit_length()
    out = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(ir, size), size)
    return out[: len(wave) + min(room_for, length - 1)].astype(np.float32)


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f² power) noise."""
    white = rng.normal(0, 1, n)
    if kind != "white":
        size = 1 << max(1, (n - 1).bit_length())
        freqs = np.fft.rfftfreq(size)
        freqs[0] = freqs[1]
        slope = 0.5 if kind == "pink" else 1.0  # amplitude ∝ f^-slope
        white = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, size)) / freqs**slope, size)[:n]
        white -= white.mean()
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def render_word(word: str, rng: np.random.Generator, synth: tts.Synthesizer, *,
                recipe: Recipe = RECIPE) -> np.ndarray:
    """One varied clip of word (any short text): float32 mono at 16 kHz in [-1, 1], at most
    MAX_SECONDS long."""
    max_samples = int(MAX_SECONDS * SAMPLE_RATE)
    voice = str(rng.choice(synth.base_voices))
    if rng.random() < recipe.variant_p:
        voice += "+" + str(rng.choice(recipe.variants or default_variants(synth)))
    if rng.random() < recipe.emphasis_p:
        level = str(rng.choice(["strong", "moderate", "reduced"]))
        text, ssml = f'<speak><emphasis level="{level}">{xml_escape(word)}</emphasis></speak>', True
    else:
        text, ssml = word + str(rng.choice(["", ".", "!", "?", ","])), False
    speed = int(rng.integers(recipe.speed[0], recipe.speed[1] + 1))
    pitch = int(rng.integers(recipe.pitch[0], recipe.pitch[1] + 1))
    pitch_range = int(rng.integers(recipe.pitch_range[0], recipe.pitch_range[1] + 1))
    espeak_seed = int(rng.integers(0, 2**31))
    warp = _uniform(rng, recipe.warp)
    warped_rate = max(_RATE_STEP, int(round(SAMPLE_RATE * warp / _RATE_STEP)) * _RATE_STEP)

    while True:  # slow voices can run past the clip: speak faster until the word fits with room to spare
        wave, rate = synth.synthesize(text, voice=voice, speed=speed, pitch=pitch, pitch_range=pitch_range,
                                      ssml=ssml, seed=espeak_seed)
        wave = _trim(wave, rate)
        wave = _resample(wave, rate, warped_rate)  # played back at 16 kHz: the warp
        if len(wave) <= 0.9 * max_samples or speed >= tts.RATE_MAX:
            break
        speed = min(tts.RATE_MAX, int(speed * 1.25))
    wave = wave[: int(0.9 * max_samples)]
    wave = wave / (np.abs(wave).max() + 1e-9)

    if rng.random() < recipe.reverb_p:
        wave = _room(wave, rng, recipe, SAMPLE_RATE, room_for=max_samples - len(wave))

    cut_low = _uniform(rng, recipe.lowpass_hz) if rng.random() < recipe.lowpass_p else None
    cut_high = _uniform(rng, recipe.highpass_hz) if rng.random() < recipe.highpass_p else None
    tilt = _uniform(rng, recipe.tilt)

    def gain(f: np.ndarray) -> np.ndarray:
        g = (np.maximum(f, 50.0) / 1000.0) ** tilt
        if cut_low is not None:  # raised-cosine roll-off over the last 15% below the cut
            start = 0.85 * cut_low
            g = g * (0.5 + 0.5 * np.cos(np.pi * np.clip((f - start) / (cut_low - start), 0, 1)))
        if cut_high is not None:
            g = g * np.clip(f / cut_high, 0, 1) ** 2
        return g

    wave = _fft_filter(wave, gain, SAMPLE_RATE)
    speech_power = float(np.mean(wave**2)) + 1e-12

    # Position: silence before and after, within the 1 s limit.
    pad = min(max_samples - len(wave), int(_uniform(rng, recipe.pad_seconds) * SAMPLE_RATE))
    before = int(rng.integers(0, pad + 1))
    clip = np.zeros(len(wave) + pad, dtype=np.float32)
    clip[before:before + len(wave)] = wave

    if rng.random() < recipe.noise_p:
        kind = str(rng.choice(["white", "pink", "brown"]))
        snr = _uniform(rng, recipe.snr_db)
        clip += _noise(kind, len(clip), rng) * np.float32(np.sqrt(speech_power / 10 ** (snr / 10)))
    else:  # a faint floor: real recordings are never digital silence
        clip += _noise("white", len(clip), rng) * np.float32(np.sqrt(speech_power) * 10 ** (-60 / 20))

    peak = 10 ** (_uniform(rng, recipe.peak_dbfs) / 20)
    return np.clip(clip * np.float32(peak / (np.abs(clip).max() + 1e-9)), -1, 1).astype(np.float32)


def render_words(words: Sequence[str], *, per_class: int = 200, seed: int = 0,
                 recipe: Recipe = RECIPE) -> Iterator[tuple[int, int, np.ndarray]]:
    """(index into words, clip number, 16 kHz float32 clip) for per_class clips of each word,
    interleaved; deterministic in seed (clip i of word k draws from the seed [seed, i, k])."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    try:
        synth = tts.Synthesizer(private=True)  # fresh espeak-ng state: same seed, same audio
    except tts.PrivateCopyError as exc:  # e.g. a temporary folder mounted noexec
        warnings.warn(f"{exc}; the clips will not repeat exactly for a seed", RuntimeWarning, stacklevel=2)
        synth = tts.shared()
    try:
        for i in range(per_class):
            for k, word in enumerate(words):
                rng = np.random.default_rng([seed, i, k])
                yield k, i, render_word(word, rng, synth, recipe=recipe)
    finally:
        synth.close()


def render_digits(*, per_class: int = 200, seed: int = 0,
                  recipe: Recipe = RECIPE) -> Iterator[tuple[str, int, np.ndarray]]:
    """(word, index, 16 kHz float32 clip) for per_class clips of each digit, interleaved; deterministic in seed."""
    for k, i, wave in render_words(DIGITS, per_class=per_class, seed=seed, recipe=recipe):
        yield DIGITS[k], i, wave


def spoken_text(class_name: str) -> str | None:
    """What espeak-ng says for a class: its name with _ - . as spaces ("turn_left" -> "turn left";
    "7" is read "seven"). None for a name that starts with "_" (Speech Commands' _silence_ and
    _unknown_ are not words) or holds no letter or digit."""
    if class_name.startswith("_"):
        return None
    text = " ".join(re.sub(r"[_\-.]+", " ", class_name).split())
    return text if re.search(r"[^\W_]", text) else None


def synthetic_count(classes: Sequence[str], per_class: int) -> int:
    """How many clips synthetic_voices makes for these classes."""
    return per_class * sum(spoken_text(name) is not None for name in classes)


def synthetic_voices(classes: Sequence[str], *, per_class: int, seed: int, clip_samples: int,
                     out: np.ndarray | None = None, cache_dir: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """per_class clips of every class whose name can be spoken (spoken_text), as int16
    N×clip_samples clips at 16 kHz (fit_length, like ingestion) and int64 labels (indices into
    classes). The same arguments give the same clips.
    `out`, an int16 array of the right shape (synthetic_count rows), receives the clips instead of
    a new one: a caller appending them to other clips makes no second copy.
    With `cache_dir`, the clips are kept there (one .npy per set of arguments, see ClipCache) and
    read back instead of spoken again: 10,000 clips cost about a CPU minute (espeak-ng, resampling, rooms, noise).
    `progress(done, total)` is called while clips are spoken (every PROGRESS_EVERY clips, and after
    the last), not when they are read back; an exception it raises (a cancel) stops the speaking,
    and nothing is cached."""
    speakable = [(k, text) for k, name in enumerate(classes) if (text := spoken_text(name)) is not None]
    total = per_class * len(speakable)
    if out is not None and (out.shape != (total, clip_samples) or out.dtype != np.int16):
        raise ValueError(f"out must be int16 {(total, clip_samples)}, got {out.dtype} {out.shape}")
    x = np.zeros((total, clip_samples), dtype=np.int16) if out is None else out
    # render_words interleaves the words: clip n is of speakable word n % len(speakable).
    y = np.tile(np.array([k for k, _ in speakable], dtype=np.int64), per_class)
    if not speakable:
        return x, y
    texts = [text for _, text in speakable]
    if cache_dir is None:
        _speak(texts, per_class=per_class, seed=seed, into=x, progress=progress)
        return x, y
    cache = ClipCache(cache_dir)
    key = _cache_key(texts, per_class=per_class, seed=seed, clip_samples=clip_samples)
    if not cache.read(key, into=x):
        _speak(texts, per_class=per_class, seed=seed, into=x, progress=progress)
        cache.write(key, x)
    return x, y


# How often synthetic_voices reports progress: 250 clips are about a second and a half of CPU.
PROGRESS_EVERY = 250


def _speak(texts: Sequence[str], *, per_class: int, seed: int, into: np.ndarray,
           progress: Callable[[int, int], None] | None) -> None:
    total = len(into)
    for n, (_, _, wave) in enumerate(render_words(texts, per_class=per_class, seed=seed)):
        into[n] = to_int16(fit_length(wave, into.shape[1])[0])
        if progress is not None and ((n + 1) % PROGRESS_EVERY == 0 or n + 1 == total):
            progress(n + 1, total)


# Part of every cache key: bump it when the same arguments start giving other clips (a change to
# render_word, the recipe's meaning or fit_length) so old entries are never read again.
CACHE_FORMAT = 1
CACHE_MAX_BYTES = 4 << 30  # 10,000 one-second clips take 320 MB


def _cache_key(texts: Sequence[str], *, per_class: int, seed: int, clip_samples: int) -> str:
    try:
        espeak = importlib.metadata.version("espeakng-loader")  # the library and voice data that speak
    except importlib.metadata.PackageNotFoundError:
        espeak = "unknown"
    blob = json.dumps({"format": CACHE_FORMAT, "texts": list(texts), "per_class": per_class, "seed": seed,
                       "clip_samples": clip_samples, "recipe": asdict(RECIPE), "espeak": espeak}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ClipCache:
    """Rendered clip sets as int16 .npy files named by their key, in one folder shared by every
    worker on the machine. Written to a temporary name and renamed into place, so a reader sees a
    whole file or none; two workers filling the same entry at once both write the same bytes.
    Least recently used entries are deleted once the folder holds more than max_bytes. A file that
    cannot be read as the expected array is ignored (and replaced by the next write)."""

    def __init__(self, folder: str | os.PathLike, *, max_bytes: int = CACHE_MAX_BYTES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    def read(self, key: str, *, into: np.ndarray) -> bool:
        path = self.folder / f"{key}.npy"
        try:
            clips = np.load(path, mmap_mode="r", allow_pickle=False)
            if clips.shape != into.shape or clips.dtype != into.dtype:
                return False
            into[:] = clips
            os.utime(path)  # recently used: pruned last
        except (OSError, ValueError):
            return False
        return True

    def write(self, key: str, clips: np.ndarray) -> None:
        target = self.folder / f"{key}.npy"
        partial = self.folder / f"{key}.{os.getpid()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                np.save(f, clips, allow_pickle=False)
            os.replace(partial, target)
        except OSError as exc:  # a full or read-only disk costs the next run time, not this one its clips
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            warnings.warn(f"synthetic clips not cached in {self.folder}: {exc}", RuntimeWarning, stacklevel=2)
            return
        self.prune(keep=key)

    def prune(self, *, keep: str) -> None:
        entries = []
        for path in self.folder.glob("*.npy"):
            with contextlib.suppress(OSError):  # another worker may be pruning too
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        used = 0
        for _, size, path in sorted(entries, reverse=True):  # newest first
            used += size
            if used > self.max_bytes and path.stem != keep:
                with contextlib.suppress(OSError):
                    path.unlink()


def wav_bytes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of a float wave in [-1, 1]."""
    buffer = io.BytesIO()
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)
    sf.write(buffer, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_digits_archive(path: str | os.PathLike, *, per_class: int = 200, seed: int = 0,
                         progress: Callable[[int, int], None] | None = None,
                         recipe: Recipe = RECIPE) -> Path:
    """Write a zip of `<digit>/<digit>_0001.wav` ... clips at path; progress(done, total) after each clip."""
    path = Path(path)
    total = per_class * len(DIGITS)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for done, (word, i, wave) in enumerate(render_digits(per_class=per_class, seed=seed, recipe=recipe), 1):
            # A fixed timestamp and mode: the same seed gives the same bytes.
            info = zipfile.ZipInfo(f"{word}/{word}_{i + 1:04d}.wav", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, wav_bytes(wave), compresslevel=1)
            if progress is not None:
                progress(done, total)
    return path
