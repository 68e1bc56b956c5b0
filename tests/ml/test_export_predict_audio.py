"""Saving and loading speech models; predicting from WAV/FLAC bytes of any rate and length."""

import json

import numpy as np
import pytest
import torch

from ml import AudioData, Predictor, load_predictor, save_model, train
from ml.audio import AudioDecodeError, decode_audio, fit_length
from ml.nets import feature_settings
from tests.audio_fixtures import CLASSES, class_clip, clip_arrays, tone, wav_bytes


@pytest.fixture(scope="module")
def result():
    x, y = clip_arrays(60, seed=3)
    data = AudioData(x[:45], y[:45], x[45:], y[45:], list(CLASSES))
    return train({"arch": "crnn", "epochs": 2, "batch_size": 16}, data, device="cpu")


@pytest.fixture
def saved(result, tmp_path):
    save_model(result, tmp_path / "model")
    return tmp_path / "model"


def model_probabilities(model, waves: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(waves)), dim=1).numpy()


def clip(label: str, seed: int, rate: int = 16_000) -> np.ndarray:
    return class_clip(label, np.random.default_rng(seed), rate)


def test_model_json_describes_the_audio_input_and_front_end(result, saved):
    meta = json.loads((saved / "model.json").read_text())
    assert meta["arch"] == "crnn" and meta["arch_args"] == result.model.arch_args
    assert meta["classes"] == list(CLASSES)
    assert meta["input"] == {"kind": "audio", "sample_rate": 16_000, "clip_samples": 16_000,
                             "dtype": "float32", "layout": "NL"}
    pre = meta["preprocessing"]
    assert pre["mean"] == pytest.approx(result.model.normalise.mean.flatten().tolist())
    assert len(pre["std"]) == 40
    assert pre["features"] == feature_settings(16_000)
    assert pre["features"]["kind"] == "log_mel" and pre["features"]["n_mels"] == 40
    assert meta["metrics"] == result.metrics and meta["config"]["arch"] == "crnn"


def test_saved_and_loaded_speech_model_predicts_identically(result, saved):
    predictor = load_predictor(saved)
    assert isinstance(predictor, Predictor) and predictor.modality == "audio"
    assert (predictor.sample_rate, predictor.clip_samples) == (16_000, 16_000)
    waves = np.stack([clip(label, seed) for seed, label in enumerate(CLASSES * 2)])
    expected = model_probabilities(result.model, waves)
    for wave, probs in zip(waves, expected, strict=True):
        got = dict(predictor.predict(wave, top_k=None))
        assert [got[c] for c in predictor.classes] == pytest.approx(probs.tolist(), abs=1e-6)
    # The loaded weights are bit-for-bit the trained ones.
    for (name, a), b in zip(result.model.state_dict().items(), predictor.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_float_wav_bytes_at_the_model_rate_predict_exactly_like_the_array(saved):
    predictor = load_predictor(saved)
    wave = clip("sweep", 11)
    from_bytes = predictor.predict(wav_bytes(wave, 16_000, "FLOAT"), top_k=None)
    assert from_bytes == predictor.predict(wave, top_k=None)
    assert np.array_equal(predictor.prepare(wav_bytes(wave, 16_000, "FLOAT")), wave)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("seconds", [0.2, 1.0, 2.5])
def test_recordings_of_any_rate_and_length_are_resampled_and_fitted(rate, seconds, saved):
    predictor = load_predictor(saved)
    data = wav_bytes(tone(2_000, seconds, rate), rate, "PCM_16")
    heard = predictor.prepare(data)
    assert heard.dtype == np.float32 and heard.shape == (16_000,)
    expected, _ = fit_length(decode_audio(data, sample_rate=16_000), 16_000)
    assert np.array_equal(heard, expected)  # exactly what ingestion would have stored
    result = predictor.predict(data)
    assert {label for label, _ in result} == set(CLASSES)
    assert sum(p for _, p in result) == pytest.approx(1.0, abs=1e-5)


def test_stereo_flac_and_int16_arrays_are_accepted(saved):
    predictor = load_predictor(saved)
    wave = clip("low", 5)
    stereo = np.stack([wave, wave], axis=1)
    assert predictor.predict(wav_bytes(stereo, 16_000, "PCM_24", "FLAC"), top_k=1)[0][0] in CLASSES
    int16 = (wave * 32767).astype(np.int16)
    assert predictor.prepare(int16).dtype == np.float32
    assert predictor.predict(int16, top_k=None) == predictor.predict(int16.astype(np.float32) / 32768, top_k=None)


def test_predict_batch_equals_one_by_one(saved):
    predictor = load_predictor(saved)
    items = [clip(label, 20 + i) for i, label in enumerate(CLASSES)] + [wav_bytes(tone(300, 0.5, 8_000), 8_000)]
    batch = predictor.predict_batch(items, top_k=2)
    singles = [predictor.predict(item, top_k=2) for item in items]
    assert [[label for label, _ in r] for r in batch] == [[label for label, _ in r] for r in singles]
    for r_batch, r_single in zip(batch, singles, strict=True):
        assert [p for _, p in r_batch] == pytest.approx([p for _, p in r_single], abs=1e-6)
    assert predictor.predict_batch([]) == []


def test_bad_input_raises_audio_decode_error_a_value_error(saved):
    predictor = load_predictor(saved)
    with pytest.raises(AudioDecodeError):
        predictor.predict(b"certainly not a wav file")
    with pytest.raises(ValueError):  # AudioDecodeError is a ValueError: the web app answers 400
        predictor.predict(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(AudioDecodeError, match="1-D"):
        predictor.predict(np.zeros((2, 16_000), dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="non-finite"):
        predictor.predict(np.full(16_000, np.nan, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="float32"):
        predictor.predict(np.zeros(16_000, dtype=np.uint8))
    with pytest.raises(TypeError, match="audio bytes or a numpy array"):
        predictor.predict("hello.wav")
    predictor.max_seconds = 1.0
    with pytest.raises(AudioDecodeError):
        predictor.predict(wav_bytes(tone(440, 3.0), 16_000))


def test_a_speech_model_json_naming_an_image_network_is_refused(saved):
    meta = json.loads((saved / "model.json").read_text())
    (saved / "model.json").write_text(json.dumps({**meta, "arch": "resnet"}))
    with pytest.raises(ValueError, match="resnet is an image network"):
        load_predictor(saved)
    (saved / "model.json").write_text(json.dumps({**meta, "preprocessing": {"mean": [0.0], "std": [1.0]}}))
    with pytest.raises(ValueError, match="one value per feature row"):
        load_predictor(saved)


def test_a_model_saved_with_other_front_end_settings_is_refused_naming_them(saved):
    meta = json.loads((saved / "model.json").read_text())
    features = {**meta["preprocessing"]["features"], "floor_db": 80.0, "n_mels": 64}
    (saved / "model.json").write_text(json.dumps({**meta, "preprocessing": {**meta["preprocessing"],
                                                                            "features": features}}))
    with pytest.raises(ValueError, match=r"another speech front end .*differs in: floor_db, n_mels"):
        load_predictor(saved)
