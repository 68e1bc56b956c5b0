"""ml.audio: every format, depth, rate and channel count decodes to the same 16 kHz wave; bad files
are refused with a reason a user understands; clips are fitted the same way everywhere."""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from PIL import Image

from ml.audio import (MEL, SAMPLE_RATE, AudioDecodeError, audio_info, decode_audio, encode_wav, fit_length,
                      from_int16, is_silent, log_mel, resample_ratio, spectrogram_png, to_int16, viridis_lut)
from tests.audio_fixtures import chirp, flac_declaring, tone, wav_bytes


def peak_hz(wave, sample_rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * sample_rate / len(wave)


def rms(wave):
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


# --- Decoding ------------------------------------------------------------------------------------

FORMATS = [  # (container, subtype, source rate, channels, largest error against the ideal 16 kHz tone)
    ("WAV", "PCM_U8", 8_000, 1, 0.02),
    ("WAV", "PCM_16", 16_000, 1, 1e-4),
    ("WAV", "PCM_24", 44_100, 2, 2e-3),
    ("WAV", "PCM_32", 48_000, 1, 2e-3),
    ("WAV", "FLOAT", 22_050, 2, 2e-3),
    ("WAV", "DOUBLE", 11_025, 1, 2e-3),
    ("FLAC", "PCM_16", 44_100, 1, 2e-3),
    ("FLAC", "PCM_24", 48_000, 2, 2e-3),
    ("FLAC", "PCM_S8", 8_000, 1, 0.02),
    ("OGG", "VORBIS", 32_000, 1, 0.05),  # lossy
    ("OGG", "VORBIS", 44_100, 2, 0.05),
    ("OGG", "OPUS", 48_000, 1, 0.05),  # voice notes: Opus in an .ogg
    ("WAV", "ULAW", 8_000, 1, 0.03),  # telephone recordings
    ("WAV", "MS_ADPCM", 8_000, 1, 0.08),
    ("AIFF", "PCM_16", 44_100, 2, 2e-3),
]


@pytest.mark.parametrize("fmt,subtype,rate,channels,tolerance", FORMATS,
                         ids=[f"{f}-{s}-{r}-{c}ch" for f, s, r, c, _ in FORMATS])
def test_every_format_depth_rate_and_layout_decodes_to_the_same_16khz_mono_wave(fmt, subtype, rate, channels,
                                                                                 tolerance):
    source = tone(1000, 0.5, rate)
    data = wav_bytes(np.stack([source] * channels, axis=1) if channels > 1 else source, rate, subtype, fmt)

    wave = decode_audio(data)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 8000  # 0.5 s at 16 kHz, whatever the file's rate
    assert peak_hz(wave) == pytest.approx(1000, abs=2)  # resampled, not just relabelled
    assert rms(wave) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)
    ideal = tone(1000, 0.5, SAMPLE_RATE)
    middle = slice(800, 7200)  # away from the resampler's edges
    assert np.abs(wave[middle] - ideal[middle]).max() < tolerance


def test_mp3_decodes_to_the_tone_at_16khz():
    """MP3 frames carry encoder delay and padding, so only the length within a frame and the pitch
    are compared, not the samples."""
    data = wav_bytes(tone(1000, 0.5, 44_100), 44_100, "MPEG_LAYER_III", "MP3")

    wave = decode_audio(data)

    assert abs(len(wave) - 8000) <= 1152 * 16_000 // 44_100 + 1  # at most one MP3 frame off
    assert peak_hz(wave) == pytest.approx(1000, abs=4)
    assert rms(wave) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_stereo_channels_are_averaged():
    left, right = tone(440, 0.25), tone(1500, 0.25, amplitude=0.3)
    wave = decode_audio(wav_bytes(np.stack([left, right], axis=1), subtype="FLOAT"))
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)


def test_a_file_with_many_channels_is_averaged_block_by_block():
    channels = np.stack([tone(300 + 100 * c, 5.0, 8000, amplitude=0.1) for c in range(6)], axis=1)
    wave = decode_audio(wav_bytes(channels, 8000, "PCM_16"))
    assert len(wave) == 80_000
    ideal = np.mean([tone(300 + 100 * c, 5.0, 16_000, amplitude=0.1) for c in range(6)], axis=0)
    assert np.abs(wave[1000:-1000] - ideal[1000:-1000]).max() < 2e-3


def test_a_sweep_keeps_its_shape_through_resampling():
    wave = decode_audio(wav_bytes(chirp(200, 3000, 1.0, 44_100), 44_100))
    assert peak_hz(wave[:3200]) < peak_hz(wave[-3200:])
    assert peak_hz(wave[-1600:]) == pytest.approx(2900, abs=150)


def test_an_odd_sample_rate_resamples_quickly_and_at_the_right_pitch():
    # 7,999 and 16,000 share no factor: an exact polyphase kernel would be 16,000×7,999.
    assert resample_ratio(7_999, 16_000) == (1, 2)
    assert resample_ratio(44_100, 16_000) == (441, 160)
    assert resample_ratio(11_025, 16_000) == (441, 640)
    a, b = resample_ratio(44_056, 16_000)
    assert abs(a / b - 44_056 / 16_000) / (44_056 / 16_000) < 1e-3
    started = time.perf_counter()
    wave = decode_audio(wav_bytes(tone(440, 1.0, 7_999), 7_999))
    assert time.perf_counter() - started < 3.0  # the exact kernel takes ~9 s and 2.5 GB
    assert len(wave) == pytest.approx(16_000, abs=3)
    assert peak_hz(wave) == pytest.approx(440, abs=1.5)


def test_every_accepted_rate_gets_a_small_kernel_within_a_permille_of_the_true_ratio():
    rng = np.random.default_rng(0)
    for rate in [*rng.integers(1_000, 768_001, 3000), 1_000, 768_000, 44_056, 7_999, 15_985, 15_999, 16_001]:
        a, b = resample_ratio(int(rate), 16_000)
        assert a * b <= 441 * 640
        assert abs(a / b - rate / 16_000) <= 1e-3 * rate / 16_000


def test_decoding_can_resample_to_another_rate():
    wave = decode_audio(wav_bytes(tone(500, 1.0, 44_100), 44_100), sample_rate=8_000)
    assert len(wave) == 8_000 and peak_hz(wave, 8_000) == pytest.approx(500, abs=1.5)


def test_a_float_file_beyond_full_scale_is_scaled_down_not_clipped():
    wave = decode_audio(wav_bytes(tone(440, 0.1, amplitude=4.0), subtype="FLOAT"))
    assert np.abs(wave).max() == pytest.approx(1.0)
    np.testing.assert_allclose(wave, tone(440, 0.1, amplitude=1.0), atol=1e-6)  # a sine, not a square


def test_bytes_like_inputs_are_accepted_and_anything_else_is_a_type_error():
    data = wav_bytes(tone(440, 0.1))
    assert len(decode_audio(bytearray(data))) == len(decode_audio(memoryview(data))) == 1600
    with pytest.raises(TypeError, match="expected audio file bytes"):
        decode_audio("clip.wav")


def test_audio_info_reads_the_header_only():
    info = audio_info(wav_bytes(np.zeros((22_050, 2), np.float32), 44_100, "PCM_24"))
    assert (info.frames, info.sample_rate, info.channels, info.format, info.subtype) == (22_050, 44_100, 2, "WAV",
                                                                                        "PCM_24")
    assert info.seconds == 0.5


def test_first_seconds_decodes_only_the_start():
    wave = decode_audio(wav_bytes(tone(440, 3.0, 8000), 8000), first_seconds=1.25)
    assert len(wave) == 20_000


# --- Refusals ------------------------------------------------------------------------------------


def test_text_is_not_an_audio_file():
    with pytest.raises(AudioDecodeError, match=r"^not an audio file \(soundfile: Format not recognised\.\)$"):
        decode_audio(b"yes,no,up\n1,2,3\n")


def test_a_png_renamed_to_wav_is_not_an_audio_file():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(AudioDecodeError, match="^not an audio file"):
        decode_audio(png.getvalue())


def test_zero_bytes_and_zero_samples_are_empty():
    with pytest.raises(AudioDecodeError, match="^empty file: it has no bytes$"):
        decode_audio(b"")
    with pytest.raises(AudioDecodeError, match="^empty clip: it has no samples$"):
        decode_audio(wav_bytes(np.zeros(0, np.float32)))


def test_a_wav_cut_inside_its_header_is_refused():
    with pytest.raises(AudioDecodeError, match="^not an audio file"):
        decode_audio(wav_bytes(tone(440, 0.5))[:30])


def test_a_wav_cut_inside_its_data_keeps_what_is_there():
    # libsndfile (like most players) plays the part that arrived; the header's length is not trusted.
    data = wav_bytes(tone(440, 1.0))
    wave = decode_audio(data[: 44 + 2 * 6000])
    np.testing.assert_allclose(wave, tone(440, 1.0)[:6000], atol=1e-4)


def test_a_truncated_or_damaged_flac_is_refused_as_corrupt():
    data = wav_bytes(tone(440, 3.0), fmt="FLAC")
    with pytest.raises(AudioDecodeError, match=r"^corrupt or truncated audio file \(soundfile: "):
        decode_audio(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[len(data) // 2: len(data) // 2 + 400] = bytes(400)
    with pytest.raises(AudioDecodeError, match="^corrupt or truncated audio file"):
        decode_audio(bytes(damaged))


def test_a_clip_longer_than_the_maximum_is_refused_with_its_length():
    data = wav_bytes(np.zeros(int(42.5 * 8000), np.float32), 8000, "PCM_U8")
    with pytest.raises(AudioDecodeError, match=r"^clip is 42\.5 s long; the longest accepted is 30 s$"):
        decode_audio(data, max_seconds=30)
    assert len(decode_audio(data, max_seconds=42.5)) == 42.5 * SAMPLE_RATE  # the limit itself is accepted


def test_a_long_clip_is_refused_from_its_header_without_decoding(monkeypatch):
    data = wav_bytes(np.zeros(31 * 8000, np.float32), 8000, "PCM_U8")

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(AudioDecodeError, match=r"^clip is 31\.0 s long"):
        decode_audio(data, max_seconds=30)


def test_a_header_claiming_two_hours_is_refused_at_once():
    data = flac_declaring(tone(440, 1.0), declared_frames=2 * 3600 * SAMPLE_RATE)
    assert len(data) < 100_000 and audio_info(data).seconds == 7200
    # Decoding would find the file corrupt after 1 s of audio; this message can only come from the header.
    with pytest.raises(AudioDecodeError, match=r"^clip is 7200\.0 s long; the longest accepted is 30 s$"):
        decode_audio(data, max_seconds=30)


def test_a_header_that_lies_is_not_trusted_for_memory_either():
    # No max_seconds: the decoder reads what is there block by block instead of allocating two hours.
    data = flac_declaring(tone(440, 1.0), declared_frames=2 * 3600 * SAMPLE_RATE)
    with pytest.raises(AudioDecodeError, match="^corrupt or truncated audio file"):
        decode_audio(data)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(bad):
    wave = tone(440, 0.2)
    wave[100] = bad
    with pytest.raises(AudioDecodeError, match="^the clip contains NaN or infinite samples$"):
        decode_audio(wav_bytes(wave, subtype="FLOAT"))


def test_an_absurd_sample_rate_is_refused():
    with pytest.raises(AudioDecodeError, match=r"^unsupported sample rate of 200 Hz"):
        decode_audio(wav_bytes(tone(50, 1.0, 200), 200))


def test_decoding_is_thread_safe():
    rates = [8000, 44_100, 22_050, 48_000] * 3
    files = [wav_bytes(tone(200 + 50 * i, 0.5, rate), rate) for i, rate in enumerate(rates)]
    expected = [decode_audio(f) for f in files]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(decode_audio, files))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


# --- Fitting, levels, conversions ----------------------------------------------------------------


def test_fit_length_leaves_an_exact_clip_alone():
    wave = tone(440, 1.0)
    out, how = fit_length(wave, 16_000)
    assert how == "" and np.array_equal(out, wave)


@pytest.mark.parametrize("n,target,left", [(5, 9, 2), (4, 7, 1), (1, 2, 0)])
def test_fit_length_pads_a_short_clip_centred(n, target, left):
    out, how = fit_length(np.ones(n, np.float32), target)
    assert how == "padded" and out.dtype == np.float32 and len(out) == target
    assert out.tolist() == [0.0] * left + [1.0] * n + [0.0] * (target - n - left)


def test_fit_length_keeps_the_loudest_window_of_a_long_clip():
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.01, 48_000).astype(np.float32)
    wave[40_000:44_000] += tone(800, 0.25)  # a word near the end of a 3 s recording
    out, how = fit_length(wave, 16_000)
    assert how == "trimmed" and len(out) == 16_000
    assert np.sum(np.square(out)) >= np.sum(np.square(wave[40_000:44_000])) * 0.999  # the whole word is in


def test_fit_length_window_is_the_most_energetic_one():
    rng = np.random.default_rng(1)
    for _ in range(20):
        wave = (rng.normal(0, 1, int(rng.integers(50, 200))) * rng.uniform(0, 1, 1)).astype(np.float32)
        wave[rng.integers(0, len(wave))] = 5.0
        target = int(rng.integers(1, len(wave)))
        out, _ = fit_length(wave, target)
        brute = max(float(np.sum(np.square(wave[s:s + target], dtype=np.float64)))
                    for s in range(len(wave) - target + 1))
        assert float(np.sum(np.square(out, dtype=np.float64))) == pytest.approx(brute, rel=1e-9)


def test_fit_length_breaks_ties_towards_the_middle_and_keeps_the_dtype():
    # Every window of a ±1 signal has the same energy (silence is the common case): take the centre.
    signs = np.where(np.random.default_rng(2).random(100) > 0.5, 1, -1).astype(np.int16)
    out, how = fit_length(signs, 40)
    assert how == "trimmed" and out.dtype == np.int16
    assert np.array_equal(out, signs[30:70])
    out, _ = fit_length(np.zeros(101, np.float32), 40)
    assert len(out) == 40


def test_fit_length_refuses_nonsense():
    with pytest.raises(ValueError, match="positive"):
        fit_length(np.zeros(10, np.float32), 0)
    with pytest.raises(ValueError, match="1-D"):
        fit_length(np.zeros((10, 2), np.float32), 5)


def test_silence_is_a_peak_below_minus_50_dbfs():
    assert is_silent(np.zeros(100, np.float32))
    assert is_silent(np.zeros(0, np.float32))
    assert is_silent(tone(440, 0.1, amplitude=10 ** (-60 / 20)))
    assert not is_silent(tone(440, 0.1, amplitude=10 ** (-40 / 20)))
    assert is_silent(np.full(10, 50, np.int16))  # -56 dBFS as int16
    assert not is_silent(np.full(10, 500, np.int16))  # -36 dBFS


def test_int16_conversions_round_trip_and_clip():
    x = np.array([-32768, -1, 0, 1, 32767], np.int16)
    assert from_int16(x).dtype == np.float32
    assert np.array_equal(to_int16(from_int16(x)), x)
    assert to_int16(np.array([1.5, 1.0, -1.0, -2.0], np.float32)).tolist() == [32767, 32767, -32768, -32768]


def test_encode_wav_writes_16_bit_pcm_that_decodes_back():
    wave = tone(440, 0.5)
    data = encode_wav(wave)
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16_000, 1)
    np.testing.assert_allclose(decode_audio(data), wave, atol=1 / 32768)
    x = to_int16(wave)
    assert np.array_equal(sf.read(io.BytesIO(encode_wav(x)), dtype="int16")[0], x)  # int16 stored as is
    assert sf.info(io.BytesIO(encode_wav(wave, 8000))).samplerate == 8000


# --- Display -------------------------------------------------------------------------------------


def test_log_mel_matches_torchaudio_applied_by_hand():
    wave = chirp(100, 6000, 1.0)
    spec = log_mel(wave)
    assert spec.dtype == np.float32 and spec.shape == (40, 101)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16_000, **MEL)
    by_hand = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel(torch.from_numpy(wave))).numpy()
    np.testing.assert_allclose(spec, by_hand, atol=1e-3)
    assert spec.max() - spec.min() <= 80 + 1e-3


@pytest.mark.parametrize("seconds,frames", [(0.001, 4), (0.5, 51), (2.0, 201)])
def test_log_mel_works_for_any_length(seconds, frames):
    assert log_mel(tone(440, seconds)).shape == (40, frames)


def test_log_mel_resamples_other_rates_to_the_same_axes():
    at_16k, at_8k = log_mel(tone(1000, 1.0)), log_mel(tone(1000, 1.0, 8000), 8000)
    assert at_8k.shape == at_16k.shape
    assert np.argmax(at_8k[:, 50]) == np.argmax(at_16k[:, 50])


def test_spectrogram_png_is_a_readable_viridis_picture_with_low_frequencies_at_the_bottom():
    def loudest_row(freq):
        image = Image.open(io.BytesIO(spectrogram_png(tone(freq, 1.0))))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (303, 160)
        pixels = np.asarray(image)
        column = pixels[:, 150].astype(int)
        return int(np.argmax(column.sum(axis=1))), pixels

    low, pixels = loudest_row(300)
    high, _ = loudest_row(6000)
    assert low > 120 and high < 40  # row 0 is the top of the picture
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    lut = {tuple(c) for c in viridis_lut()}
    assert colours <= lut and tuple(viridis_lut()[255]) in colours  # only map colours; the peak is yellow


def test_silence_makes_a_dark_spectrogram_not_a_bright_one():
    for silence in (np.zeros(16_000, np.float32), np.full(16_000, 1e-7, np.float32)):
        pixels = np.asarray(Image.open(io.BytesIO(spectrogram_png(silence))))
        assert (pixels == viridis_lut()[0]).all()


def test_a_long_clip_makes_a_spectrogram_of_bounded_width():
    image = Image.open(io.BytesIO(spectrogram_png(tone(440, 30.0, 8000), 8000)))
    assert image.size == (1200, 160)


def test_the_colour_map_runs_from_dark_violet_to_yellow():
    lut = viridis_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (68, 1, 84) and tuple(lut[255]) == (253, 231, 37)
    luminance = lut @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= 0)  # perceptually ordered: louder is never darker
    assert luminance[-1] > 5 * luminance[0]
