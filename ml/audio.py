"""Audio decoding and display shared by ingestion and prediction, so both hear exactly the same samples.

    wave = decode_audio(data, max_seconds=30)     # float32 mono in [-1, 1] at 16 kHz
    wave, how = fit_length(wave, 16_000)          # "padded" / "trimmed" / "" — like training clips
    png = spectrogram_png(wave)                   # what the dataset and predict pages show

Files are read with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis and more, from memory; no FFmpeg).
Everything here is a pure function of its arguments and safe to call from several threads.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS", "MEL", "SAMPLE_RATE", "SILENCE_DBFS", "AudioDecodeError", "AudioInfo", "audio_info",
    "check_length", "decode_audio", "encode_wav", "fit_length", "from_int16", "is_silent", "log_mel", "resample",
    "resample_ratio", "spectrogram_png", "to_int16", "viridis_lut",
]

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})  # what libsndfile 1.2 reads
# 25 ms windows every 10 ms at 16 kHz: the nets' front end and the pages' spectrograms use it.
MEL = dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, f_min=20.0, f_max=8000.0)
SILENCE_DBFS = -50.0  # a clip whose peak stays below this is "silent" (kept, but warned about)
TOP_DB = 80.0  # dynamic range of the displayed log-mel spectrogram
DB_FLOOR = -100.0  # 10·log10(1e-10), AmplitudeToDB's floor: what digital silence measures

# Header sample rates outside this range are crafted or broken files, not recordings.
MIN_RATE, MAX_RATE = 1_000, 768_000
# torchaudio's resampler builds a (new/g)×(orig/g) polyphase kernel (g = gcd of the rates):
# 44.1 kHz -> 16 kHz is 160×441 and takes milliseconds, but a 7,999 Hz file would be 16,000×7,999
# (seconds and gigabytes). Above this size the ratio is approximated by a nearby small fraction.
MAX_RESAMPLE_KERNEL = 441 * 640  # 11,025 Hz -> 16 kHz, the largest common case, stays exact
READ_BLOCK_FRAMES = 1 << 16  # decoded per read: bounds memory by what the file really holds


class AudioDecodeError(ValueError):
    """The bytes are not a clip we can use; str(exc) says why, in a user's words."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, read without decoding any samples."""

    frames: int  # samples per channel, as declared
    sample_rate: int
    channels: int
    format: str  # soundfile's name: "WAV", "FLAC", "OGG", ...
    subtype: str  # "PCM_16", "FLOAT", "VORBIS", ...

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _open(data: bytes | bytearray | memoryview) -> sf.SoundFile:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected audio file bytes, got {type(data).__name__}")
    if not len(data):
        raise AudioDecodeError("empty file: it has no bytes")
    try:
        f = sf.SoundFile(io.BytesIO(bytes(data)))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(f"not an audio file (soundfile: {_soundfile_reason(exc)})") from None
    try:
        _check_header(f)
    except BaseException:
        f.close()
        raise
    return f


def _soundfile_reason(exc: Exception) -> str:
    # "Error opening <_io.BytesIO object at 0x7f..>: Format not recognised." -> "Format not recognised."
    text = str(exc)
    if text.startswith("Error opening") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.strip().rstrip(".") + "." if text.strip() else type(exc).__name__


def _check_header(f: sf.SoundFile) -> None:
    if not MIN_RATE <= f.samplerate <= MAX_RATE:
        raise AudioDecodeError(
            f"unsupported sample rate of {f.samplerate:,} Hz (from {MIN_RATE:,} to {MAX_RATE:,} Hz is accepted)"
        )
    if f.channels < 1:
        raise AudioDecodeError("not an audio file (soundfile: no channels)")


def audio_info(data: bytes) -> AudioInfo:
    """Read the header only (cheap: ingestion checks every file with it before decoding any).

    Raises AudioDecodeError when the bytes are not a supported audio file.
    """
    with _open(data) as f:
        return AudioInfo(frames=int(f.frames), sample_rate=int(f.samplerate), channels=int(f.channels),
                         format=str(f.format), subtype=str(f.subtype))


def check_length(frames: int, sample_rate: int, max_seconds: float | None) -> None:
    """The refusals a header alone decides: no samples, or longer than max_seconds."""
    if frames <= 0:
        raise AudioDecodeError("empty clip: it has no samples")
    if max_seconds is not None and frames / sample_rate > max_seconds:
        raise AudioDecodeError(
            f"clip is {frames / sample_rate:.1f} s long; the longest accepted is {max_seconds:g} s")


def decode_audio(data: bytes, *, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                 first_seconds: float | None = None) -> np.ndarray:
    """Decode a WAV/FLAC/OGG file to float32 mono in [-1, 1] at `sample_rate`.

    Any rate, mono or stereo (channels are averaged), 8/16/24/32-bit integer or float samples.
    The length is checked from the header before anything is decoded, so an hour-long file costs
    nothing to refuse. `first_seconds` decodes only the start of the file (background noise).
    Float files that go beyond ±1 are scaled down by their peak rather than clipped.

    Raises AudioDecodeError: not audio or corrupt, empty, longer than max_seconds, NaN/inf samples.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    with _open(data) as f:
        rate, channels, declared = int(f.samplerate), int(f.channels), int(f.frames)
        check_length(declared, rate, max_seconds)
        wanted = declared if first_seconds is None else min(declared, max(1, math.ceil(first_seconds * rate)))
        blocks = []
        got = 0
        try:
            while got < wanted:
                asked = min(READ_BLOCK_FRAMES, wanted - got)
                block = f.read(asked, dtype="float32", always_2d=True)
                if len(block):
                    # Averaging per block keeps a many-channel file from ever being held whole.
                    blocks.append(block[:, 0].copy() if channels == 1 else block.mean(axis=1, dtype=np.float32))
                    got += len(block)
                if len(block) < asked:
                    break  # the file holds less than its header says (a truncated WAV): keep what is there
        except (sf.SoundFileError, RuntimeError) as exc:
            raise AudioDecodeError(f"corrupt or truncated audio file (soundfile: {_soundfile_reason(exc)})") from None
    wave = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if not len(wave):
        raise AudioDecodeError("empty clip: it has no samples")
    if not np.isfinite(wave).all():
        raise AudioDecodeError("the clip contains NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak > 1.0:  # only float files can; integer PCM is in [-1, 1) by construction
        wave /= peak
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return wave


def resample_ratio(orig: int, new: int) -> tuple[int, int]:
    """(orig', new') with orig'/new' == orig/new, or within 0.1 % of it (under 2 cents of pitch,
    below what anyone hears) when the exact ratio would need a huge kernel: odd rates such as 7,999 Hz."""
    g = math.gcd(orig, new)
    a, b = orig // g, new // g
    if a * b <= MAX_RESAMPLE_KERNEL:
        return a, b
    # p/q ≈ orig/new with p·q within the budget: q can be up to about sqrt(budget · new / orig).
    limit = max(1, math.isqrt(MAX_RESAMPLE_KERNEL * new // orig))
    while True:
        ratio = Fraction(orig, new).limit_denominator(limit)
        if ratio.numerator * ratio.denominator <= MAX_RESAMPLE_KERNEL or limit == 1:
            return ratio.numerator, ratio.denominator
        limit = max(1, limit * 9 // 10)


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    # torchaudio.transforms.Resample is torchaudio.functional.resample with its sinc kernel built
    # once (building it was a third of ingest time on 8 kHz clips). forward() mutates nothing, so
    # one cached instance per rate pair is safe to share between threads.
    import torch
    from torchaudio.transforms import Resample

    return Resample(orig, new, dtype=torch.float32).eval()


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited (sinc, torchaudio's defaults) resampling of a 1-D wave, in float32, in one call."""
    if orig == new:
        return np.asarray(wave, dtype=np.float32)
    import torch

    with torch.no_grad():
        out = _resampler(*resample_ratio(orig, new))(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return np.clip(out.numpy(), -1.0, 1.0)


def fit_length(wave: np.ndarray, num_samples: int) -> tuple[np.ndarray, str]:
    """Cut or pad a wave to num_samples, the way every clip is cut (ingestion and prediction).

    Shorter: zero-padded on both sides, centred -> "padded". Longer: the loudest window (the one
    with the most energy, so a word at the end of a long recording is kept) -> "trimmed".
    Equal: unchanged -> "". The result keeps the input's dtype.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D wave, got shape {wave.shape}")
    n = len(wave)
    if n == num_samples:
        return wave, ""
    if n < num_samples:
        out = np.zeros(num_samples, dtype=wave.dtype)
        start = (num_samples - n) // 2
        out[start:start + n] = wave
        return out, "padded"
    power = np.square(wave, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    energy = cumulative[num_samples:] - cumulative[:-num_samples]  # energy of the window at each start
    # Rounding in the running sum must not pick a window over a genuinely equal one: compare with a
    # tolerance, and among (near-)ties prefer the most central window (silence -> the middle).
    best = energy.max()
    candidates = np.flatnonzero(energy >= best - max(best, 1e-30) * 1e-9)
    centre = (n - num_samples) / 2
    start = int(candidates[np.argmin(np.abs(candidates - centre))])
    return wave[start:start + num_samples].copy(), "trimmed"


def _as_float(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.dtype == np.int16:
        return from_int16(wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise TypeError(f"expected a float or int16 wave, got {wave.dtype}")
    return wave.astype(np.float32, copy=False)


def is_silent(wave: np.ndarray) -> bool:
    """True when the peak stays below SILENCE_DBFS (-50 dBFS): an empty or muted recording."""
    wave = _as_float(wave)
    return not len(wave) or float(np.abs(wave).max()) < 10 ** (SILENCE_DBFS / 20)


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 (×32768, rounded, clipped: +1.0 becomes 32767)."""
    return np.clip(np.rint(np.asarray(wave, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def from_int16(x: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1): x / 32768 (the inverse of to_int16 up to rounding)."""
    return np.asarray(x, dtype=np.int16).astype(np.float32) / np.float32(32768.0)


def encode_wav(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit PCM mono WAV file of a float ([-1, 1]) or int16 wave, e.g. for the page's player."""
    wave = np.asarray(wave)
    samples = wave if wave.dtype == np.int16 else to_int16(_as_float(wave))
    if samples.ndim != 1:
        raise ValueError(f"expected a 1-D wave, got shape {samples.shape}")
    buffer = io.BytesIO()
    sf.write(buffer, samples, int(sample_rate), subtype="PCM_16", format="WAV")
    return buffer.getvalue()


@lru_cache(maxsize=1)
def _mel_transforms():
    # Built once: torch modules with fixed buffers, and forward() mutates nothing, so one shared
    # instance is safe across threads.
    from torchaudio.transforms import AmplitudeToDB, MelSpectrogram

    return MelSpectrogram(sample_rate=SAMPLE_RATE, power=2.0, **MEL).eval(), AmplitudeToDB("power", top_db=TOP_DB)


def log_mel(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, frames) float32 log-mel power in dB (MEL settings, top 80 dB kept), for display.

    Waves at another rate are resampled to 16 kHz first, so every spectrogram has the same axes.
    """
    import torch

    wave = _as_float(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D wave, got shape {wave.shape}")
    if sample_rate != SAMPLE_RATE:
        wave = resample(wave, int(sample_rate), SAMPLE_RATE)
    if len(wave) < MEL["n_fft"]:  # centred frames reflect-pad by n_fft/2: very short waves need room
        wave = np.pad(wave, (0, MEL["n_fft"] - len(wave)))
    mel, to_db = _mel_transforms()
    with torch.no_grad():
        spec = to_db(mel(torch.from_numpy(np.ascontiguousarray(wave))))
    return spec.numpy().astype(np.float32, copy=False)


# matplotlib's viridis (CC0, van der Walt & Smith) at every 16th of its 256 entries; the LUT
# interpolates between them. Dark blue = quiet, yellow = loud; readable in grayscale and by
# colour-blind users, which a rainbow map is not.
_VIRIDIS_ANCHORS = np.array([
    (0.267004, 0.004874, 0.329415), (0.282327, 0.094955, 0.417331), (0.278826, 0.175490, 0.483397),
    (0.258965, 0.251537, 0.524736), (0.229739, 0.322361, 0.545706), (0.199430, 0.387607, 0.554642),
    (0.172719, 0.448791, 0.557885), (0.149039, 0.508051, 0.557250), (0.127568, 0.566949, 0.550556),
    (0.120638, 0.625828, 0.533488), (0.157851, 0.683765, 0.501686), (0.246070, 0.738910, 0.452024),
    (0.369214, 0.788888, 0.382914), (0.515992, 0.831158, 0.294279), (0.678489, 0.863742, 0.189503),
    (0.845561, 0.887322, 0.099702), (0.993248, 0.906157, 0.143936),
])
_ANCHOR_AT = np.array([*range(0, 256, 16), 255], dtype=np.float64)


@lru_cache(maxsize=1)
def viridis_lut() -> np.ndarray:
    """(256, 3) uint8: a viridis-like colour map."""
    at = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(at, _ANCHOR_AT, _VIRIDIS_ANCHORS[:, c]) for c in range(3)], axis=1)
    lut = np.rint(lut * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


SPECTROGRAM_ROW_PX = 4  # 40 mel bands -> 160 px high
SPECTROGRAM_FRAME_PX = 3  # 10 ms frames -> 1 s is 303 px wide
SPECTROGRAM_MAX_WIDTH = 1200  # longer clips are squeezed to this width


def spectrogram_png(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The log-mel spectrogram as a PNG: time left to right, low frequencies at the bottom, viridis
    colours over the top 80 dB (silence is dark). 1 s is 303×160 px; clips over 4 s are squeezed
    to 1,200 px wide."""
    from PIL import Image

    spec = log_mel(wave, sample_rate)
    # Relative to the loudest bin (as librosa's ref=np.max), but never below -100 dB, the floor of
    # AmplitudeToDB: silence stays dark instead of being stretched into a bright picture of nothing.
    floor = max(float(spec.max()) - TOP_DB, DB_FLOOR)
    level = np.clip((spec - floor) / TOP_DB, 0.0, 1.0)
    index = np.rint(level[::-1] * 255).astype(np.uint8)  # row 0 is the top of the picture: high bands
    image = Image.fromarray(viridis_lut()[index], "RGB")
    rows, frames = spec.shape
    width = min(frames * SPECTROGRAM_FRAME_PX, SPECTROGRAM_MAX_WIDTH)
    image = image.resize((width, rows * SPECTROGRAM_ROW_PX),
                         Image.Resampling.NEAREST if width >= frames else Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
