"""Synthetic voices as a speech training option: espeak-ng speaks each class name into the training split."""

import os

import numpy as np
import pytest
import torch

from ml import AudioData, Cancelled, ConfigError, TrainConfig, train
from ml import synthetic_speech
from ml.synthetic_speech import ClipCache, spoken_text, synthetic_count, synthetic_voices
from ml.train import epoch_rows
from tests.audio_fixtures import CLASSES, clip_arrays

CONFIG = {"arch": "crnn", "epochs": 2, "batch_size": 16, "lr": 3e-3, "synthetic_voices": 4}


@pytest.fixture(scope="module")
def data() -> AudioData:
    x, y = clip_arrays(36, seed=0)
    return AudioData(x[:27], y[:27], x[27:], y[27:], list(CLASSES))


@pytest.mark.parametrize("name, text", [
    ("7", "7"), ("turn_left", "turn left"), ("on-off", "on off"), ("  Marvin  ", "Marvin"),
    ("_silence_", None), ("_unknown_", None), ("___", None), ("-", None),
])
def test_a_class_name_is_spoken_as_words_and_special_classes_are_not(name, text):
    assert spoken_text(name) == text


def test_every_speakable_class_gets_its_clips_the_same_for_a_seed():
    classes = ["yes", "_silence_", "no"]
    x, y = synthetic_voices(classes, per_class=3, seed=1, clip_samples=12_000)
    assert x.dtype == np.int16 and x.shape == (6, 12_000)
    assert sorted(y.tolist()) == [0, 0, 0, 2, 2, 2]  # _silence_ is never spoken
    assert all(np.abs(clip).max() > 300 for clip in x)  # each holds a word, not silence
    again, same_labels = synthetic_voices(classes, per_class=3, seed=1, clip_samples=12_000)
    assert np.array_equal(x, again) and np.array_equal(y, same_labels)
    other, _ = synthetic_voices(classes, per_class=3, seed=2, clip_samples=12_000)
    assert not np.array_equal(x, other)
    assert synthetic_count(classes, 3) == 6
    out = np.empty((6, 12_000), dtype=np.int16)  # filled in place: no second copy
    filled, _ = synthetic_voices(classes, per_class=3, seed=1, clip_samples=12_000, out=out)
    assert filled is out and np.array_equal(out, x)
    with pytest.raises(ValueError, match="out must be int16"):
        synthetic_voices(classes, per_class=3, seed=1, clip_samples=12_000, out=np.empty((5, 12_000), np.int16))


def test_clips_are_kept_in_the_cache_and_read_back_instead_of_spoken_again(tmp_path, monkeypatch):
    classes = ["yes", "no"]
    x, y = synthetic_voices(classes, per_class=2, seed=3, clip_samples=8_000, cache_dir=tmp_path)
    [entry] = tmp_path.glob("*.npy")
    render_words = synthetic_speech.render_words

    def refuse(*args, **kwargs):
        raise AssertionError("spoken again")

    monkeypatch.setattr(synthetic_speech, "render_words", refuse)
    out = np.empty_like(x)
    again, labels = synthetic_voices(classes, per_class=2, seed=3, clip_samples=8_000, cache_dir=tmp_path, out=out)
    assert again is out and np.array_equal(again, x) and np.array_equal(labels, y)
    for other in ({"seed": 4}, {"clip_samples": 9_000}, {"per_class": 3}):  # other arguments, other clips
        with pytest.raises(AssertionError, match="spoken again"):
            synthetic_voices(classes, **{"per_class": 2, "seed": 3, "clip_samples": 8_000, **other}, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="spoken again"):
        synthetic_voices(["yes", "maybe"], per_class=2, seed=3, clip_samples=8_000, cache_dir=tmp_path)

    entry.write_bytes(b"torn")  # unreadable: spoken again and the entry replaced
    monkeypatch.setattr(synthetic_speech, "render_words", render_words)
    spoken, _ = synthetic_voices(classes, per_class=2, seed=3, clip_samples=8_000, cache_dir=tmp_path)
    assert np.array_equal(spoken, x) and np.array_equal(np.load(entry), x)


def test_the_cache_drops_its_least_recently_used_entries_beyond_its_size(tmp_path):
    clips = np.zeros((4, 1_000), dtype=np.int16)  # 8 kB + the .npy header each
    cache = ClipCache(tmp_path, max_bytes=30_000)
    for age, key in enumerate(["old", "used", "new"]):
        cache.write(key, clips)
        os.utime(tmp_path / f"{key}.npy", (1_000 + age, 1_000 + age))
    assert cache.read("old", into=np.empty_like(clips))  # a read makes it the most recently used
    cache.write("newest", clips)  # 3 entries fit in 30 kB, 4 do not: the least recently used goes
    assert sorted(p.stem for p in tmp_path.glob("*.npy")) == ["new", "newest", "old"]
    assert not list(tmp_path.glob("*.tmp"))
    assert not cache.read("used", into=np.empty_like(clips))
    assert not cache.read("new", into=np.empty((3, 1_000), dtype=np.int16))  # another shape is not this entry


def test_a_cache_that_cannot_be_written_only_warns(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    with pytest.warns(RuntimeWarning, match="not cached"):
        x, _ = synthetic_voices(["yes"], per_class=1, seed=0, clip_samples=8_000, cache_dir=blocked / "cache")
    assert np.abs(x).max() > 300


def test_training_adds_them_to_the_training_split_only(data):
    plain = train({**CONFIG, "synthetic_voices": 0, "epochs": 1}, data, device="cpu")
    result = train({**CONFIG, "epochs": 1}, data, device="cpu")
    assert "synthetic_clips" not in plain.metrics
    assert result.metrics["synthetic_clips"] == 4 * len(CLASSES)
    # 27 real clips: 2 steps of 16; with 12 spoken ones, 39 clips: 3 steps.
    assert plain.history[-1]["step"] == 2 and result.history[-1]["step"] == 3
    assert np.sum(result.confusion) == len(data.y_val)  # validation stays the real clips
    assert len(data.x_train) == 27  # the caller's data is left as it was


def test_the_recordings_are_repeated_to_about_half_of_each_epoch(data):
    assert epoch_rows(27, 0).tolist() == list(range(27))  # nothing spoken: every row once, as for images
    assert epoch_rows(3, 7).tolist() == [0, 1, 2, 0, 1, 2, *range(3, 10)]  # 7/3 rounds to 2 repeats
    assert epoch_rows(5, 4).tolist() == list(range(9))  # fewer spoken than recorded: each row once
    result = train({**CONFIG, "epochs": 1, "synthetic_voices": 18}, data, device="cpu")
    # 27 recordings twice and 54 spoken clips: 108 rows, 7 steps of 16.
    assert result.metrics["synthetic_clips"] == 54 and result.history[-1]["step"] == 7


def test_a_run_with_synthetic_voices_resumes_bit_identically(data, tmp_path):
    config = {**CONFIG, "synthetic_voices": 18}  # more spoken than recorded: the recordings come twice
    expected = train(config, data, device="cpu", progress_interval=0)
    cache = tmp_path / "voices"
    path = tmp_path / "run.ckpt"

    def cancel(event):
        if event.kind == "step" and event.step == 10:  # inside the second epoch of 7 steps
            raise Cancelled

    with pytest.raises(Cancelled):
        train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[cancel],
              synthetic_cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    # The resume reads the clips back: the same clips, so the same run.
    resumed = train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, synthetic_cache=cache)
    assert resumed.history == [{**h, "elapsed_s": r["elapsed_s"], "samples_per_s": r["samples_per_s"]}
                               for h, r in zip(expected.history, resumed.history, strict=True)]
    for (name, a), b in zip(resumed.model.state_dict().items(), expected.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_speaking_reports_progress_and_a_cancel_stops_it_with_nothing_cached(data, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_speech, "PROGRESS_EVERY", 16)
    total = 4 * len(CLASSES)  # 4 per class: 12 clips, so one report at the end only
    reports = []
    synthetic_voices(list(CLASSES), per_class=11, seed=0, clip_samples=8_000, progress=lambda *a: reports.append(a))
    assert reports == [(16, 33), (32, 33), (33, 33)]

    events = []
    cache = tmp_path / "voices"
    result = train({**CONFIG, "epochs": 1}, data, device="cpu", callbacks=[events.append], synthetic_cache=cache)
    prepare = [e for e in events if e.kind == "prepare"]
    assert [(e.message, e.fraction) for e in prepare] == [(f"Speaking synthetic voices: {total} of {total} clips", 1.0)]
    assert events.index(prepare[-1]) < min(i for i, e in enumerate(events) if e.kind == "step")
    assert result.metrics["synthetic_clips"] == total

    # Read back from the cache: nothing to speak, nothing to report.
    events.clear()
    train({**CONFIG, "epochs": 1}, data, device="cpu", callbacks=[events.append], synthetic_cache=cache)
    assert not [e for e in events if e.kind == "prepare"]

    def cancel(event):
        if event.kind == "prepare":
            raise Cancelled

    other = tmp_path / "other"
    with pytest.raises(Cancelled):
        train({**CONFIG, "epochs": 1}, data, device="cpu", callbacks=[cancel], synthetic_cache=other)
    assert not list(other.glob("*.npy"))  # a cancelled speaking leaves no half-made cache entry


def test_images_refuse_synthetic_voices(make_brightness_data):
    with pytest.raises(ConfigError, match="speech datasets") as info:
        TrainConfig.from_dict({"synthetic_voices": 10}, modality="image")
    assert info.value.field == "synthetic_voices"
    with pytest.raises(ValueError, match="speech data"):
        train(TrainConfig(synthetic_voices=10, epochs=1), make_brightness_data(30, 9), device="cpu")


@pytest.mark.speech_defaults
def test_speech_trains_with_synthetic_voices_by_default_and_images_never():
    from ml.config import config_defaults

    assert config_defaults("audio")["synthetic_voices"] > 0  # speech: on (FSDD: +9 points on unseen voices)
    assert config_defaults("image")["synthetic_voices"] == 0
    assert TrainConfig.from_dict({}, modality="audio").synthetic_voices == config_defaults("audio")["synthetic_voices"]
