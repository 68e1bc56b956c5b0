"""Speech synthesis with espeak-ng, driven through ctypes. No subprocess, no system espeak-ng.

The PyPI package `espeakng-loader` ships the shared library and its voice data; this module loads
both from there and calls the C API of speak_lib.h directly:

    wave, rate = synthesize("seven", voice="en-us+f2", speed=150, pitch=60)  # float32 in [-1, 1]
    voices()    # English voices, then every English voice with every variant ("en+m3", ...)

espeak-ng keeps its state in C globals (current voice, parameters, the synth callback), so each
instance of the library is guarded by a lock. synthesize() uses one shared instance, initialised
once per process on first use. Synthesis runs in AUDIO_OUTPUT_SYNCHRONOUS mode: espeak_Synth
returns when the callback has had every sample, and the library starts no thread.

Reproducibility: with its random seed set before each utterance (done here), espeak-ng's output
depends only on the calls made since the library was loaded: a few function-static variables
(the pitch-flutter position, the glottal phase) carry over from one utterance to the next and
nothing resets them. A batch that must come out byte-identical, such as a generated dataset,
therefore uses `with Synthesizer(private=True) as synth:`, which loads its own copy of the library
with fresh state (a copy under another file name is a separate instance for the dynamic loader).
Some voice variants also draw from the C library's rand(), whose state the whole process shares
(a second private instance in the same process spoke differently from the first): it is seeded
with the utterance's seed too, and utterances take one process-wide lock so no other instance's
draws come in between. Both kinds can be used at the same time, from any threads.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

# speak_lib.h constants (ESPEAK_API_REVISION 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SSML = 0x10
_EE_OK = 0
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7

RATE_MIN, RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM, words per minute

# Voices that read Latin-script English text as English. en-Shaw expects the Shavian alphabet.
_EXCLUDED_VOICES = frozenset({"en-shaw"})


class _Event(ctypes.Structure):
    """espeak_EVENT. Only passed through; declared so the callback's pointer type is right."""

    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); returns 0 to continue.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _package_paths() -> tuple[Path, Path]:
    """(shared library, espeak-ng-data folder) from espeakng-loader, or a RuntimeError saying what is missing."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise RuntimeError("Speech synthesis needs the Python package espeakng-loader "
                           "(pip install espeakng-loader); it is not installed") from exc
    library = Path(espeakng_loader.get_library_path())
    if not library.is_file():
        raise RuntimeError(f"espeakng-loader is installed but its espeak-ng library is missing: {library}")
    try:
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError as exc:
        raise RuntimeError(f"espeakng-loader is installed but its voice data is missing: {exc}") from exc
    return library, data


def _load_private_copy(library: Path) -> ctypes.CDLL:
    """A new instance of the library: the loader maps a copy under another name separately."""
    folder = tempfile.mkdtemp(prefix="perceptor-espeak-")
    try:
        copy = Path(folder) / library.name
        shutil.copyfile(library, copy)
        return ctypes.CDLL(str(copy))  # the mapping outlives the file
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# The C library's rand() state is one per process, shared by every espeak-ng instance.
_libc = ctypes.CDLL(None)
_libc.srand.argtypes = [ctypes.c_uint]
_libc.srand.restype = None
_RAND_LOCK = threading.Lock()


class PrivateCopyError(RuntimeError):
    """A private copy of the library could not be loaded (the shared instance may still work)."""


class Synthesizer:
    """One initialised espeak-ng instance. Thread-safe: calls take the instance's lock.

    private=True loads a fresh copy of the library, unloaded by close() or the with block.
    private=False is the package's library itself, of which a process has one (the loader returns
    the same one every time): only shared() makes that one.
    """

    def __init__(self, *, private: bool = True) -> None:
        if not private and _shared is not None:
            raise RuntimeError("The package's espeak-ng library is already in use: use tts.shared()")
        library, data = _package_paths()
        try:
            lib = _load_private_copy(library) if private else ctypes.CDLL(str(library))
        except OSError as exc:
            if private:
                raise PrivateCopyError(f"Could not load a private copy of the espeak-ng library: {exc}") from exc
            raise RuntimeError(f"Could not load the espeak-ng library {library}: {exc}") from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]  # espeak_ng.h
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int

        # path: the folder that holds espeak-ng-data. buflength 0: the default 60 ms blocks.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with the voice data in {data}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lib: ctypes.CDLL | None = lib
        self._private = private
        self._lock = threading.Lock()
        self.sample_rate: int = rate  # 22050 for espeak-ng
        # Lower case language voice file names ("en", "en-us", "en-gb-x-rp", ...) and variant names.
        self.base_voices: list[str] = sorted(
            name for name in (p.name.lower() for p in (data / "lang" / "gmw").glob("en*") if p.is_file())
            if name not in _EXCLUDED_VOICES)
        self.variants: list[str] = sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def voices(self) -> list[str]:
        """English voices, then every English voice with every variant: the names synthesize accepts."""
        return self.base_voices + [f"{b}+{v}" for b in self.base_voices for v in self.variants]

    def _check_voice(self, voice: str) -> None:
        base, _, variant = voice.partition("+")
        if base.lower() not in self.base_voices:
            raise ValueError(f"Unknown voice {base!r}. Choose one of: {', '.join(self.base_voices)}")
        # espeak-ng silently ignores an unknown variant, so check it here.
        if variant and variant not in self.variants:
            raise ValueError(f"Unknown voice variant {variant!r}. Choose one of: {', '.join(self.variants)}")

    def synthesize(self, text: str, *, voice: str = "en", speed: int = 175, pitch: int = 50, pitch_range: int = 50,
                   volume: int = 100, word_gap: int = 0, ssml: bool = False, seed: int = 0) -> tuple[np.ndarray, int]:
        """See the module function synthesize()."""
        if not text or not text.strip():
            raise ValueError("text must not be empty")
        self._check_voice(voice)
        for name, value, low, high in (("speed", speed, RATE_MIN, RATE_MAX), ("pitch", pitch, 0, 100),
                                       ("pitch_range", pitch_range, 0, 100), ("volume", volume, 0, 200),
                                       ("word_gap", word_gap, 0, 1000)):
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        encoded = text.encode("utf-8")
        with self._lock, _RAND_LOCK:
            lib = self._lib
            if lib is None:
                raise RuntimeError("This Synthesizer is closed")
            status = lib.espeak_SetVoiceByName(voice.encode("utf-8"))
            if status != _EE_OK:
                raise ValueError(f"espeak-ng could not select voice {voice!r} (error {status})")
            # Parameters after the voice: selecting a voice resets them to the voice's own.
            for parameter, value in ((_RATE, speed), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, volume),
                                     (_WORDGAP, word_gap)):
                lib.espeak_SetParameter(parameter, int(value), 0)
            lib.espeak_ng_SetRandSeed(int(seed))  # noise sources (breath, whisper, Klatt) repeat
            _libc.srand(int(seed) & 0xFFFFFFFF)  # and the variants that call rand()
            self._chunks.clear()
            flags = _CHARS_UTF8 | (_SSML if ssml else 0)
            status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
            if status == _EE_OK:
                status = lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesise {text!r} (error {status})")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return samples.astype(np.float32) / 32768.0, self.sample_rate

    def close(self) -> None:
        """Terminate a private instance and unload its copy; the shared instance stays loaded."""
        if not self._private:
            return
        with self._lock:
            lib, self._lib = self._lib, None
            if lib is not None:
                lib.espeak_Terminate()
                _ctypes.dlclose(lib._handle)

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_shared_lock = threading.Lock()
_shared: Synthesizer | None = None


def _after_fork_in_child() -> None:
    # A fork taken while another thread held a lock would leave the child's copy held forever.
    global _shared_lock
    _shared_lock = threading.Lock()
    if _shared is not None:
        _shared._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shared() -> Synthesizer:
    """The process's shared Synthesizer, created on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Synthesizer(private=False)
        return _shared


def base_voices() -> list[str]:
    """English language voices (lower case file names: "en", "en-us", "en-gb-x-rp", ...)."""
    return list(shared().base_voices)


def variants() -> list[str]:
    """Voice variants that can follow "+" in a voice name ("m3", "f2", "klatt", "whisper", ...)."""
    return list(shared().variants)


def voices() -> list[str]:
    """English voices, then every English voice with every variant: the names synthesize accepts."""
    return shared().voices()


def synthesize(text: str, *, voice: str = "en", speed: int = 175, pitch: int = 50, pitch_range: int = 50,
               volume: int = 100, word_gap: int = 0, ssml: bool = False, seed: int = 0) -> tuple[np.ndarray, int]:
    """Speak text; return (float32 mono wave in [-1, 1], sample rate in Hz: 22050 for espeak-ng).

    voice: one of voices(), "<language voice>[+<variant>]". speed: words per minute, 80-450.
    pitch: base pitch 0-100 (50 normal). pitch_range: 0 monotone - 100 (50 normal).
    volume: 0-200 (100 normal). word_gap: extra pause between words, in 10 ms units.
    ssml: text may hold SSML elements (<emphasis>, <prosody>, <break/>).
    seed: espeak-ng's random seed for this utterance (its noise sources).
    Raises ValueError for a bad argument, RuntimeError when espeak-ng cannot be loaded.
    """
    return shared().synthesize(text, voice=voice, speed=speed, pitch=pitch, pitch_range=pitch_range, volume=volume,
                               word_gap=word_gap, ssml=ssml, seed=seed)
