"""espeak-ng through ctypes (ml.tts) and the synthetic spoken-digits archive (ml.synthetic_speech)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import soundfile as sf

from ml import synthetic_speech, tts
from ml.synthetic_speech import DIGITS, write_digits_archive


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def test_it_speaks_a_word_as_audible_float_samples():
    wave, rate = tts.synthesize("seven")
    assert rate == 22050
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.2 * rate < len(wave) < 2 * rate
    assert np.abs(wave).max() <= 1.0
    assert rms(wave) > 0.01


def test_longer_text_gives_longer_audio_and_faster_speech_shorter():
    one, _ = tts.synthesize("one")
    many, _ = tts.synthesize("one two three four five")
    fast, _ = tts.synthesize("one two three four five", speed=350)
    assert len(many) > 2 * len(one)
    assert len(fast) < 0.75 * len(many)


def test_voices_variants_and_pitches_sound_different():
    names = tts.voices()
    for expected in ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en+m3", "en+f2", "en+klatt"):
        assert expected in names
    assert "en-shaw" not in names
    waves = {v: tts.synthesize("four", voice=v)[0] for v in ("en", "en-us", "en+f2", "en+klatt")}
    for a in waves:
        for b in waves:
            if a < b:
                n = min(len(waves[a]), len(waves[b]))
                assert len(waves[a]) != len(waves[b]) or not np.allclose(waves[a][:n], waves[b][:n])
    low, _ = tts.synthesize("four", pitch=10)
    high, _ = tts.synthesize("four", pitch=90)
    assert not (len(low) == len(high) and np.allclose(low, high))


def test_bad_arguments_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="Unknown voice 'xx'. Choose one of: en"):
        tts.synthesize("one", voice="xx")
    with pytest.raises(ValueError, match="Unknown voice variant 'nope'"):
        tts.synthesize("one", voice="en+nope")  # espeak-ng itself would ignore it silently
    with pytest.raises(ValueError, match="speed must be between 80 and 450"):
        tts.synthesize("one", speed=20)
    with pytest.raises(ValueError, match="empty"):
        tts.synthesize("  ")


def test_a_private_synthesizer_repeats_itself_exactly():
    def run() -> list[np.ndarray]:
        with tts.Synthesizer(private=True) as synth:
            return [synth.synthesize(w, voice=v, seed=3)[0] for w, v in (("two", "en+whisper"), ("two", "en+m3"))]

    tts.synthesize("something else first")  # the shared instance's history must not matter
    first, second = run(), run()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_the_same_utterance_with_the_same_seed_sounds_the_same_every_time_in_a_process():
    # Variants like caleb draw from the C library's rand(), which all instances in a process share.
    def run() -> list[np.ndarray]:
        with tts.Synthesizer(private=True) as synth:
            return [synth.synthesize("yes!", voice="en-gb-x-gbcwmd+caleb", seed=3)[0] for _ in range(2)]

    first = run()
    assert all(np.array_equal(first[0], wave) for wave in first + run())


def test_a_missing_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(RuntimeError, match="espeakng-loader"):
        tts.Synthesizer()


def read_archive(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_the_digits_archive_holds_short_16khz_mono_clips_per_digit(tmp_path):
    calls = []
    path = write_digits_archive(tmp_path / "digits.zip", per_class=2, seed=1,
                                progress=lambda done, total: calls.append((done, total)))
    files = read_archive(path)
    assert sorted({name.split("/")[0] for name in files}) == sorted(DIGITS)
    assert sorted(files) == sorted(f"{d}/{d}_{i:04d}.wav" for d in DIGITS for i in (1, 2))
    for name, data in files.items():
        wave, rate = sf.read(io.BytesIO(data), dtype="float32")
        info = sf.info(io.BytesIO(data))
        assert (rate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "WAV"), name
        assert 0.1 * rate < len(wave) <= rate, name
        assert np.abs(wave).max() > 0.05, name
    assert calls == [(i, 20) for i in range(1, 21)]


def test_the_same_seed_gives_the_same_archive_bytes_and_another_seed_does_not(tmp_path):
    a = write_digits_archive(tmp_path / "a.zip", per_class=1, seed=5)
    tts.synthesize("three")  # other synthesis in between changes nothing
    b = write_digits_archive(tmp_path / "b.zip", per_class=1, seed=5)
    c = write_digits_archive(tmp_path / "c.zip", per_class=1, seed=6)
    assert a.read_bytes() == b.read_bytes()
    assert read_archive(a) != read_archive(c)


def test_clips_vary_in_length_level_and_band(tmp_path):
    clips = [wave for _, _, wave in synthetic_speech.render_digits(per_class=4, seed=0)]
    lengths = {len(w) for w in clips}
    peaks = [float(np.abs(w).max()) for w in clips]
    assert len(lengths) > 20 and max(peaks) / min(peaks) > 2
    assert all(len(w) <= 16_000 for w in clips)


def test_without_a_private_copy_the_archive_still_comes_from_the_shared_instance(tmp_path, monkeypatch):
    def refuse(library):
        raise OSError("failed to map segment from shared object")

    monkeypatch.setattr(tts, "_load_private_copy", refuse)
    with pytest.warns(RuntimeWarning, match="private copy"):
        path = write_digits_archive(tmp_path / "d.zip", per_class=1)
    assert len(read_archive(path)) == 10
    assert len(tts.synthesize("one")[0]) > 0  # the shared instance is still open
