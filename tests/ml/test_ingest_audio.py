"""ml.ingest_audio: class folders of clips in, `perceptor-audio/1` out; Speech Commands as it is;
refusals leave nothing on disk. Also ml.ingest's detect_kind / ingest_archive front door."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

import ml.ingest_audio
from ml.audio import to_int16
from ml.data import load_audio_dataset, load_dataset
from ml.ingest import ArchiveLimits, DatasetError, IngestReport, detect_kind, ingest_archive
from ml.ingest_audio import AudioIngestReport, ingest_audio_archive
from ml.synthetic import image_bytes, write_archive, write_shapes_archive
from tests.audio_fixtures import flac_declaring, speech_archive, speech_commands_files, tone, wav_bytes


def leftovers(parent):
    """Everything in the output's parent folder: temp folders would show up here."""
    return sorted(p.name for p in parent.iterdir())


def clip(freq=440.0, seconds=1.0, rate=16_000, amplitude=0.5, **kwargs):
    return wav_bytes(tone(freq, seconds, rate, amplitude=amplitude), rate, **kwargs)


def source_rows(files):
    """name -> the int16 row a 1 s 16 kHz PCM_16 clip must be stored as (bit-exact)."""
    return {name: sf.read(io.BytesIO(data), dtype="int16")[0] for name, data in files.items() if name.endswith(".wav")}


def stored_names(out, files):
    """The archive name of each stored row, found by content (every generated clip differs)."""
    audio = np.load(out / "audio.npy")
    rows = {row.tobytes(): name for name, row in source_rows(files).items()}
    return [rows.get(row.tobytes()) for row in audio]


@pytest.fixture
def out(tmp_path):
    (tmp_path / "datasets").mkdir()
    return tmp_path / "datasets" / "7"


def test_it_ingests_class_folders_into_the_documented_format(tmp_path, out):
    archive = speech_archive(tmp_path / "s.zip", per_class=10)
    report = ingest_audio_archive(archive, out, val_fraction=0.2, seed=3)

    meta = json.loads((out / "dataset.json").read_text())
    assert meta == report.to_json()
    assert set(meta) == {"format", "classes", "sample_rate", "clip_samples", "num_train", "num_val", "num_test",
                         "counts", "samples", "skipped", "warnings", "durations", "trimmed", "padded", "split",
                         "noise_files", "noise_seconds", "options"}
    assert meta["format"] == "perceptor-audio/1" and report.kind == "audio"
    assert meta["classes"] == ["high", "low", "sweep"]
    assert (meta["sample_rate"], meta["clip_samples"]) == (16_000, 16_000)
    assert (meta["num_train"], meta["num_val"], meta["num_test"]) == (24, 6, 0) and report.num_samples == 30
    assert meta["counts"] == {"train": [8, 8, 8], "val": [2, 2, 2], "test": [0, 0, 0]}
    assert meta["options"] == {"clip_seconds": 1.0, "val_fraction": 0.2, "seed": 3, "max_clip_seconds": 30.0}
    assert meta["skipped"] == [] and meta["warnings"] == []
    assert meta["durations"] == {"min": 1.0, "mean": 1.0, "median": 1.0, "max": 1.0}
    assert (meta["trimmed"], meta["padded"], meta["split"]) == (0, 0, "random")
    assert (meta["noise_files"], meta["noise_seconds"]) == (0, 0.0)

    audio = np.load(out / "audio.npy", allow_pickle=False)
    labels = np.load(out / "labels.npy", allow_pickle=False)
    assert audio.dtype == np.int16 and audio.shape == (30, 16_000)
    assert labels.dtype == np.int64 and labels.shape == (30,)
    assert np.bincount(labels[:24]).tolist() == [8, 8, 8] and np.bincount(labels[24:]).tolist() == [2, 2, 2]
    for name, indices in meta["samples"].items():
        assert len(indices) == 8 and all(labels[i] == meta["classes"].index(name) for i in indices)
    assert not (out / "noise.npy").exists()
    assert leftovers(out.parent) == ["7"]
    assert sorted(p.name for p in out.iterdir()) == ["audio.npy", "dataset.json", "labels.npy"]


def test_the_stored_samples_are_the_clips_bit_for_bit(tmp_path, out):
    files = {"a/1.wav": clip(300), "a/2.wav": clip(350), "b/1.wav": clip(2000), "b/2.wav": clip(2100)}
    ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, val_fraction=0.0)
    names = stored_names(out, files)
    assert sorted(names) == sorted(files)
    labels = np.load(out / "labels.npy")
    assert [n.split("/")[0] for n in names] == [["a", "b"][k] for k in labels]


def test_the_reader_in_ml_data_loads_what_ingest_writes(tmp_path, out):
    ingest_audio_archive(speech_archive(tmp_path / "s.tar.gz", per_class=5), out, val_fraction=0.2)
    data = load_audio_dataset(out)
    assert data.modality == "audio" and data.classes == ["high", "low", "sweep"]
    assert data.x_train.shape == (12, 16_000) and data.x_val.shape == (3, 16_000)
    assert data.x_test is None and data.noise is None and data.clip_samples == 16_000
    assert type(load_dataset(out)).__name__ == "AudioData"


def test_any_rate_depth_and_format_is_resampled_and_fitted(tmp_path, out):
    loud_end = np.zeros(2 * 44_100, np.float32)
    loud_end[-22_050:] = tone(1000, 0.5, 44_100)
    files = {
        "a/short.wav": clip(500, 0.5, 8000, subtype="PCM_U8"),  # padded
        "a/exact.flac": clip(600, 1.0, 16_000, subtype="PCM_24", fmt="FLAC"),
        "a/vorbis.ogg": clip(700, 1.0, 32_000, subtype="VORBIS", fmt="OGG"),
        "b/long.wav": wav_bytes(np.stack([loud_end, loud_end], 1), 44_100, "FLOAT"),  # stereo, trimmed
        "b/exact.oga": clip(900, 1.0, 48_000, subtype="VORBIS", fmt="OGG"),
        "b/wide.wav": clip(800, 1.25, 22_050, subtype="PCM_32"),  # trimmed
    }
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, val_fraction=0.0)
    assert report.skipped == [] and report.num_samples == 6
    assert (report.trimmed, report.padded) == (2, 1)
    assert report.durations == {"min": 0.5, "mean": round((0.5 + 1 + 1 + 2 + 1 + 1.25) / 6, 3), "median": 1.0,
                                "max": 2.0}
    audio, labels = np.load(out / "audio.npy"), np.load(out / "labels.npy")
    peaks = np.abs(audio.astype(np.int32)).max(axis=1)
    # The padded 0.5 s clip sits in the middle, the trimmed 2 s one kept its loud last half.
    padded = [row for row in audio if (row[:3990] == 0).all() and (row[-3990:] == 0).all()]
    assert len(padded) == 1
    assert np.abs(padded[0][4000:12_000].astype(np.float32) / 32768).max() == pytest.approx(0.5, abs=0.03)
    assert (peaks > 0.45 * 32768).all()
    assert np.bincount(labels).tolist() == [3, 3]


def test_clip_seconds_sets_the_stored_length(tmp_path, out):
    report = ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out, clip_seconds=0.5,
                                  val_fraction=0.0)
    assert report.clip_samples == 8000 and np.load(out / "audio.npy").shape == (6, 8000)
    assert report.trimmed == 6  # every 1 s clip was cut to its loudest half second


def test_unusable_files_are_skipped_with_a_reason_each(tmp_path, out):
    nan = tone(440, 0.5)
    nan[10] = np.nan
    files = {
        "yes/1.wav": clip(300), "yes/2.wav": clip(310), "no/1.wav": clip(2000), "no/2.wav": clip(2100),
        "README.txt": b"hello",
        "yes/notes.csv": b"a,b",
        "yes/noextension": b"?",
        "yes/old.m4a": b"....ftypM4A",
        "no/garbage.wav": b"this is not a wav file",
        "no/empty.wav": wav_bytes(np.zeros(0, np.float32)),
        "no/long.wav": clip(440, 3.0, 8000),
        "no/hours.flac": flac_declaring(tone(440, 1.0), declared_frames=2 * 3600 * 16_000),  # never decoded
        "yes/nan.wav": wav_bytes(nan, subtype="FLOAT"),
        "yes/cut.flac": wav_bytes(tone(440, 2.0), fmt="FLAC")[:9000],
        "__MACOSX/yes/._1.wav": b"resource fork",
        "yes/.DS_Store": b"junk",
    }
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, max_clip_seconds=2.5)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert reasons == {
        "README.txt": "not inside a class folder",
        "yes/notes.csv": "not an audio file: .csv files are not used (WAV, FLAC, OGG, Opus, MP3, AIFF are)",
        "yes/noextension": "not an audio file: files without an extension are not used (WAV, FLAC, OGG, Opus, MP3, AIFF are)",
        "yes/old.m4a": ".m4a files are not used (WAV, FLAC, OGG, Opus, MP3, AIFF are); convert them to WAV or FLAC",
        "no/garbage.wav": "not an audio file (soundfile: Format not recognised.)",
        "no/empty.wav": "empty clip: it has no samples",
        "no/long.wav": "clip is 3.0 s long; the longest accepted is 2.5 s",
        "no/hours.flac": "clip is 7200.0 s long; the longest accepted is 2.5 s",
        "yes/nan.wav": "the clip contains NaN or infinite samples",
        "yes/cut.flac": reasons["yes/cut.flac"],
    }
    assert reasons["yes/cut.flac"].startswith("corrupt or truncated audio file (soundfile: ")
    # Refused from the header in pass 1 come first, then what failed to decode in pass 2.
    assert [s["file"] for s in report.skipped][-2:] == ["yes/nan.wav", "yes/cut.flac"]
    assert report.num_samples == 4 and np.load(out / "audio.npy").shape == (4, 16_000)


def test_a_file_that_crashes_the_decoder_in_an_unexpected_way_is_skipped_not_fatal(tmp_path, out, monkeypatch):
    real = ml.ingest_audio.decode_audio
    bad = clip(999)

    def flaky(data, **kwargs):
        if data == bad:
            raise IndexError("something odd in libsndfile")
        return real(data, **kwargs)

    monkeypatch.setattr(ml.ingest_audio, "decode_audio", flaky)
    files = {"a/1.wav": clip(300), "a/2.wav": bad, "b/1.wav": clip(2000)}
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out)
    assert report.skipped == [{"file": "a/2.wav", "reason": "cannot decode audio (IndexError)"}]
    assert report.num_samples == 2


def test_silent_clips_are_kept_with_a_warning_and_listed_last_among_samples(tmp_path, out):
    files = {"a/0_silent.wav": wav_bytes(np.zeros(16_000, np.float32)),
             "a/1_hum.wav": clip(440, amplitude=10 ** (-60 / 20)),
             "a/2.wav": clip(300), "a/3.wav": clip(320), "b/1.wav": clip(2000), "b/2.wav": clip(2100)}
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, val_fraction=0.0)
    assert report.num_samples == 6 and report.skipped == []
    assert report.warnings == [
        {"file": "a/0_silent.wav", "reason": "silent: the loudest sample is digital silence (below -50 dBFS); kept"},
        {"file": "a/1_hum.wav", "reason": "silent: the loudest sample is -60 dBFS (below -50 dBFS); kept"},
    ]
    audio = np.load(out / "audio.npy")
    peaks = [int(np.abs(audio[i].astype(np.int32)).max()) for i in report.samples["a"]]
    assert len(peaks) == 4 and min(peaks[:2]) > 10_000 and max(peaks[2:]) < 100  # audible ones first


def test_the_split_is_stratified_and_every_class_with_two_clips_gets_a_validation_clip(tmp_path, out):
    sizes = {"a": 10, "b": 5, "c": 2, "d": 1}
    files = {f"{c}/{i}.wav": clip(200 + 10 * i + 500 * k, 0.1) for k, (c, n) in enumerate(sizes.items())
             for i in range(n)}
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, val_fraction=0.2)
    assert report.counts == {"train": [8, 4, 1, 1], "val": [2, 1, 1, 0], "test": [0, 0, 0, 0]}
    assert (report.num_train, report.num_val, report.num_test, report.split) == (14, 4, 0, "random")


def test_the_split_depends_on_the_seed_only(tmp_path):
    archive = speech_archive(tmp_path / "s.zip", per_class=6)

    def stored(seed, name):
        ingest_audio_archive(archive, tmp_path / name, val_fraction=0.3, seed=seed)
        return np.load(tmp_path / name / "audio.npy")

    assert np.array_equal(stored(1, "x"), stored(1, "y"))
    assert not np.array_equal(stored(1, "x"), stored(2, "z"))


def test_tar_gz_and_a_single_top_folder_work(tmp_path, out):
    files = {f"recordings/{c}/{i}.wav": clip(300 + 1000 * k + 10 * i) for k, c in enumerate("ab") for i in range(3)}
    report = ingest_audio_archive(write_archive(tmp_path / "a.tar.gz", files, fmt="tar.gz"), out)
    assert report.classes == ["a", "b"] and report.num_samples == 6 and report.skipped == []


def test_progress_is_reported_up_to_done_equals_total(tmp_path, out):
    calls = []
    ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out,
                         progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (12, 12)  # two passes over six clips
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- Google Speech Commands layout -----------------------------------------------------------------


def test_speech_commands_lists_decide_validation_and_test_exactly(tmp_path, out):
    files = speech_commands_files(per_word=6, validation=(1,), testing=(2, 3))
    report = ingest_audio_archive(write_archive(tmp_path / "sc.zip", files), out, val_fraction=0.5)

    assert report.split == "lists"
    assert report.classes == ["no", "up", "yes"]  # _background_noise_ is not a class
    assert (report.num_train, report.num_val, report.num_test) == (9, 3, 6)
    assert report.counts == {"train": [3, 3, 3], "val": [1, 1, 1], "test": [2, 2, 2]}
    listed = {split: [line for line in files[name].decode().split("\n") if line]
              for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt"))}
    names = stored_names(out, files)
    assert set(names[9:12]) == set(listed["val"]) - {"no/ffffffff_nohash_9.wav"}  # listed but missing: ignored
    assert set(names[12:]) == set(listed["test"])
    assert not set(names[:9]) & (set(listed["val"]) | set(listed["test"]))
    assert all(n.split("/")[0] == report.classes[k] for n, k in zip(names, np.load(out / "labels.npy")))

    noise = np.load(out / "noise.npy")
    assert noise.dtype == np.int16 and len(noise) == 3 * 16_000 + 40_000  # 3 s at 16 kHz + 2.5 s at 44.1 kHz
    assert (report.noise_files, report.noise_seconds) == (2, 5.5)
    expected_first = to_int16(sf.read(io.BytesIO(files["_background_noise_/noise_0.wav"]), dtype="float32")[0])
    assert np.array_equal(noise[:48_000], expected_first)
    assert {s["file"] for s in report.skipped} == {"LICENSE", "_background_noise_/README.md"}

    data = load_audio_dataset(out)
    assert data.x_test.shape == (6, 16_000) and len(data.noise) == 88_000
    assert np.bincount(data.y_test).tolist() == [2, 2, 2]


def test_speech_commands_inside_one_top_folder_in_a_tar_gz(tmp_path, out):
    files = speech_commands_files(per_word=4, validation=(0,), testing=(1,), top="speech_commands_v0.02")
    report = ingest_audio_archive(write_archive(tmp_path / "sc.tar.gz", list(files.items()), fmt="tar.gz"), out)
    assert report.split == "lists" and (report.num_train, report.num_val, report.num_test) == (6, 3, 3)
    assert report.noise_files == 2
    names = stored_names(out, files)
    assert all(n.endswith("_nohash_0.wav") for n in names[6:9]) and all(n.endswith("_nohash_1.wav") for n in names[9:])


def test_a_validation_list_alone_gives_no_test_split(tmp_path, out):
    files = speech_commands_files(per_word=3, validation=(0,), testing=(), noise_seconds=())
    del files["testing_list.txt"]
    report = ingest_audio_archive(write_archive(tmp_path / "sc.zip", files), out)
    assert (report.split, report.num_train, report.num_val, report.num_test) == ("lists", 6, 3, 0)
    assert not (out / "noise.npy").exists() and report.noise_files == 0


def test_lists_that_name_none_of_the_clips_fall_back_to_a_random_split_with_a_warning(tmp_path, out):
    files = {f"{c}/{i}.wav": clip(300 + 1000 * k + 10 * i) for k, c in enumerate("ab") for i in range(5)}
    files["validation_list.txt"] = b"yes/0a7c2a8d_nohash_0.wav\n"
    report = ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out, val_fraction=0.2)
    assert report.split == "random" and report.counts["val"] == [1, 1]
    assert report.warnings == [{"file": "validation_list.txt",
                                "reason": "names none of the archive's clips; a random split was used"}]


def test_lists_that_leave_nothing_to_train_on_are_refused(tmp_path, out):
    files = {"a/1.wav": clip(300), "b/1.wav": clip(2000), "validation_list.txt": b"a/1.wav\n",
             "testing_list.txt": b"b/1.wav\n"}
    with pytest.raises(DatasetError, match="none is left to train on"):
        ingest_audio_archive(write_archive(tmp_path / "a.zip", files), out)
    assert leftovers(out.parent) == []


def test_background_noise_is_capped(tmp_path, out, monkeypatch):
    monkeypatch.setattr(ml.ingest_audio, "NOISE_MAX_SECONDS", 2.0)
    files = speech_commands_files(per_word=2, noise_seconds=(1.5, 1.5, 1.5))
    report = ingest_audio_archive(write_archive(tmp_path / "sc.zip", files), out)
    assert len(np.load(out / "noise.npy")) == 32_000 and report.noise_seconds == 2.0
    assert report.noise_files == 2
    assert report.warnings == [
        {"file": "_background_noise_/noise_1.wav",
         "reason": "only the first 0.5 s are used: background noise is limited to 2 s"},
        {"file": "_background_noise_/noise_2.wav",
         "reason": "not used: background noise beyond the first 2 s is ignored"},
    ]


def test_long_background_noise_is_not_held_to_the_clip_limit(tmp_path, out):
    files = speech_commands_files(per_word=2, validation=(), testing=(), noise_seconds=(4.0,))
    report = ingest_audio_archive(write_archive(tmp_path / "sc.zip", files), out, max_clip_seconds=2.0)
    assert report.noise_seconds == 4.0 and report.skipped[0]["file"] == "_background_noise_/README.md"


# --- Refusals: nothing is left behind ---------------------------------------------------------


def test_an_archive_without_class_folders_is_refused(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"1.wav": clip(), "2.wav": clip(500)})
    with pytest.raises(DatasetError, match=r"^No class folders with audio clips found\. Put the clips in one folder "
                                           r"per class, e\.g\. yes/1\.wav and no/2\.wav .*Skipped: 1\.wav"):
        ingest_audio_archive(archive, out)
    assert leftovers(out.parent) == []


def test_an_archive_of_images_is_refused_as_a_speech_dataset(tmp_path, out):
    archive = write_shapes_archive(tmp_path / "s.zip", classes=("circle", "square"), per_class=2, size=8)
    with pytest.raises(DatasetError, match="No class folders with audio clips found.*not an audio file: .png"):
        ingest_audio_archive(archive, out)


def test_only_background_noise_is_not_a_dataset(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"_background_noise_/white.wav": clip(), "_background_noise_/b.wav":
                                                 clip(300)})
    with pytest.raises(DatasetError, match="No class folders with audio clips found"):
        ingest_audio_archive(archive, out)


def test_one_class_is_refused(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"yes/1.wav": clip(), "yes/2.wav": clip(500)})
    with pytest.raises(DatasetError, match=r"Only one class was found \('yes'\); a classifier needs at least two"):
        ingest_audio_archive(archive, out)
    assert leftovers(out.parent) == []


def test_a_class_whose_clips_all_fail_does_not_count(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"yes/1.wav": clip(), "no/1.wav": b"garbage",
                                                 "no/2.wav": clip(500, 40.0, 8000)})
    with pytest.raises(DatasetError, match=r"Only one class was found \('yes'\).*Skipped: no/1.wav .*and 1 more"):
        ingest_audio_archive(archive, out)


def test_an_archive_without_one_usable_clip_is_refused(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"yes/1.wav": b"garbage", "no/2.wav": b"more garbage"})
    with pytest.raises(DatasetError, match=r"^No audio clip in the archive could be used\. Skipped: yes/1.wav"):
        ingest_audio_archive(archive, out)
    assert leftovers(out.parent) == []


def test_a_refused_archive_removes_a_previous_dataset_and_leaves_no_temp_folder(tmp_path, out):
    out.mkdir()
    (out / "audio.npy").write_bytes(b"old")
    archive = tmp_path / "bad.zip"
    archive.write_text("not an archive")
    with pytest.raises(DatasetError):
        ingest_audio_archive(archive, out)
    assert leftovers(out.parent) == []


def test_a_crash_in_the_middle_leaves_nothing_behind(tmp_path, out):
    def crash(done, total):
        if done == 8:
            raise KeyboardInterrupt  # stands for a worker being stopped mid-decode

    with pytest.raises(KeyboardInterrupt):
        ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out, progress=crash)
    assert leftovers(out.parent) == []


def test_a_full_disk_fails_the_ingest_instead_of_skipping_clips(tmp_path, out, monkeypatch):
    def disk_full(wave):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ml.ingest_audio, "to_int16", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out)
    assert leftovers(out.parent) == []


def test_a_successful_ingest_replaces_a_previous_one_atomically(tmp_path, out):
    out.mkdir()
    (out / "stale.txt").write_text("old")
    ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out)
    assert sorted(p.name for p in out.iterdir()) == ["audio.npy", "dataset.json", "labels.npy"]
    assert leftovers(out.parent) == ["7"]


def test_archive_limits_apply_during_ingest(tmp_path, out):
    with pytest.raises(DatasetError, match="more than 4 entries"):
        ingest_audio_archive(speech_archive(tmp_path / "s.zip", per_class=2), out,
                             limits=ArchiveLimits(max_members=4))
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"clip_seconds": 0}, "clip_seconds"), ({"clip_seconds": 61}, "clip_seconds"),
    ({"max_clip_seconds": 0}, "max_clip_seconds"), ({"val_fraction": 1.0}, "val_fraction"), ({"seed": -1}, "seed"),
])
def test_bad_options_are_value_errors(tmp_path, out, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ingest_audio_archive(tmp_path / "never-read.zip", out, **kwargs)


# --- ml.ingest's front door ------------------------------------------------------------------------


def test_detect_kind_tells_speech_from_images(tmp_path):
    assert detect_kind(speech_archive(tmp_path / "s.zip", per_class=2)) == "audio"
    assert detect_kind(write_shapes_archive(tmp_path / "i.zip", per_class=2, size=8)) == "image"
    assert detect_kind(write_archive(tmp_path / "t.zip", {"a/notes.txt": b"x"})) == "image"  # neither
    mostly_audio = {"a/1.wav": clip(), "a/2.wav": clip(), "b/cover.png": image_bytes(np.zeros((4, 4), np.uint8))}
    assert detect_kind(write_archive(tmp_path / "m.zip", mostly_audio)) == "audio"
    with pytest.raises(DatasetError):
        detect_kind(write_archive(tmp_path / "e.zip", {}))


def test_ingest_archive_dispatches_on_the_kind(tmp_path):
    speech = speech_archive(tmp_path / "s.zip", per_class=3)
    images = write_shapes_archive(tmp_path / "i.zip", classes=("circle", "square"), per_class=3, size=8)

    report = ingest_archive(speech, tmp_path / "a", clip_seconds=0.5)
    assert isinstance(report, AudioIngestReport) and report.kind == "audio" and report.clip_samples == 8000
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["format"] == "perceptor-audio/1"

    report = ingest_archive(images, tmp_path / "b", image_size=16)
    assert isinstance(report, IngestReport) and report.kind == "image"
    assert "kind" not in report.to_json()  # the image format is unchanged
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["format"] == "perceptor-images/1"

    with pytest.raises(DatasetError, match="No class folders with audio clips found"):
        ingest_archive(images, tmp_path / "c", kind="audio")
    with pytest.raises(DatasetError, match="No class folders with images found"):
        ingest_archive(speech, tmp_path / "c", kind="image")
    with pytest.raises(ValueError, match="Unknown dataset kind 'speech'. Choose one of: auto, image, audio"):
        ingest_archive(speech, tmp_path / "c", kind="speech")
    assert not (tmp_path / "c").exists()


def test_ingest_archive_refusing_an_archive_it_cannot_read_leaves_nothing(tmp_path):
    (tmp_path / "datasets" / "7").mkdir(parents=True)
    (tmp_path / "datasets" / "7" / "audio.npy").write_bytes(b"old")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"Rar!\x1a\x07\x00 not a zip")
    with pytest.raises(DatasetError, match="RAR archive"):
        ingest_archive(bad, tmp_path / "datasets" / "7")
    assert leftovers(tmp_path / "datasets") == []
