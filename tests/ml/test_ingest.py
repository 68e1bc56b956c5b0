"""ml.ingest: class folders in, `perceptor-images/1` out; refusals leave nothing on disk."""

import json

import numpy as np
import pytest
from PIL import Image

from ml.data import load_image_dataset
from ml.ingest import ArchiveLimits, DatasetError, ingest_image_archive
from ml.synthetic import image_bytes, write_archive, write_shapes_archive


def rgb(h=12, w=12, value=0):
    rng = np.random.default_rng(value)
    return image_bytes(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def gray(h=12, w=12, value=0):
    return image_bytes(np.full((h, w), value, dtype=np.uint8))


def leftovers(parent):
    """Everything in the output's parent folder: temp folders would show up here."""
    return sorted(p.name for p in parent.iterdir())


@pytest.fixture
def out(tmp_path):
    (tmp_path / "datasets").mkdir()
    return tmp_path / "datasets" / "7"


def test_it_ingests_class_folders_into_the_documented_format(tmp_path, out):
    archive = write_shapes_archive(tmp_path / "s.zip", classes=("circle", "square", "star"), per_class=10, size=16)
    report = ingest_image_archive(archive, out, val_fraction=0.2, seed=3)

    meta = json.loads((out / "dataset.json").read_text())
    assert meta == report.to_json()
    assert set(meta) == {"format", "classes", "height", "width", "channels", "num_train", "num_val", "counts",
                         "samples", "skipped", "options", "resized"}
    assert meta["format"] == "perceptor-images/1"
    assert meta["classes"] == ["circle", "square", "star"]
    assert (meta["height"], meta["width"], meta["channels"], meta["resized"]) == (16, 16, 3, False)
    assert (meta["num_train"], meta["num_val"]) == (24, 6)
    assert meta["counts"] == {"train": [8, 8, 8], "val": [2, 2, 2]}
    assert meta["options"] == {"image_size": 64, "val_fraction": 0.2, "seed": 3}
    assert meta["skipped"] == []

    images = np.load(out / "images.npy", allow_pickle=False)
    labels = np.load(out / "labels.npy", allow_pickle=False)
    assert images.dtype == np.uint8 and images.shape == (30, 16, 16, 3)
    assert labels.dtype == np.int64 and labels.shape == (30,)
    # Train first, then validation, matching the counts.
    assert np.bincount(labels[:24]).tolist() == [8, 8, 8]
    assert np.bincount(labels[24:]).tolist() == [2, 2, 2]
    for name, indices in meta["samples"].items():
        assert 1 <= len(indices) <= 8
        assert all(labels[i] == meta["classes"].index(name) for i in indices)
    assert leftovers(out.parent) == ["7"]


def test_the_stored_pixels_are_the_decoded_images(tmp_path, out):
    first = np.random.default_rng(0).integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    second = np.random.default_rng(1).integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": image_bytes(first), "b/1.png": image_bytes(second)})
    ingest_image_archive(archive, out, val_fraction=0.0)
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    by_label = {int(label): image for label, image in zip(labels, images)}
    assert np.array_equal(by_label[0], first) and np.array_equal(by_label[1], second)


def test_the_reader_in_ml_data_loads_what_ingest_writes(tmp_path, out):
    archive = write_shapes_archive(tmp_path / "s.tar.gz", classes=("cross", "triangle"), per_class=5, size=12,
                                   fmt="tar.gz")
    ingest_image_archive(archive, out, val_fraction=0.2)
    data = load_image_dataset(out)
    assert data.classes == ["cross", "triangle"]
    assert data.x_train.shape == (8, 12, 12, 3) and data.x_val.shape == (2, 12, 12, 3)


def test_it_strips_one_single_top_folder_and_uses_the_first_folder_below_as_the_class(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {
        "photos/cat/indoor/1.png": rgb(value=1),
        "photos/cat/outdoor/deep/2.png": rgb(value=2),
        "photos/dog/3.png": rgb(value=3),
        "photos/dog/4.png": rgb(value=4),
    })
    report = ingest_image_archive(archive, out)
    assert report.classes == ["cat", "dog"]
    assert report.counts["train"] == [1, 1] and report.counts["val"] == [1, 1]


def test_a_single_folder_of_images_is_one_class_not_a_top_folder(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"cat/1.png": rgb(), "cat/2.png": rgb(value=1)})
    with pytest.raises(DatasetError, match=r"Only one class was found \('cat'\)"):
        ingest_image_archive(archive, out)
    assert leftovers(out.parent) == []


def test_it_ignores_system_litter_silently_and_lists_other_unusable_files_with_a_reason(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {
        "cat/1.png": rgb(value=1),
        "dog/1.png": rgb(value=2),
        "__MACOSX/cat/._1.png": b"resource fork",
        "cat/.DS_Store": b"junk",
        ".hidden/cat/3.png": rgb(value=3),
        "dog/Thumbs.db": b"junk",
        "README.txt": b"hello",
        "dog/labels.csv": b"a,b",
        "dog/noextension": b"?",
    })
    report = ingest_image_archive(archive, out)
    assert report.skipped == [
        {"file": "README.txt", "reason": "not inside a class folder"},
        {"file": "dog/labels.csv",
         "reason": "not an image: .csv files are not used (JPEG, PNG, BMP, WebP, GIF are)"},
        {"file": "dog/noextension",
         "reason": "not an image: files without an extension are not used (JPEG, PNG, BMP, WebP, GIF are)"},
    ]
    assert report.num_samples == 2


def test_undecodable_files_are_skipped_and_listed_and_the_rest_is_usable(tmp_path, out):
    truncated = rgb(value=9)
    archive = write_archive(tmp_path / "a.zip", {
        "cat/1.png": rgb(value=1), "cat/2.png": rgb(value=2), "cat/broken.jpg": b"not really a jpeg",
        "dog/1.png": rgb(value=3), "dog/2.png": rgb(value=4),
        "dog/truncated.png": truncated[: len(truncated) // 2],  # the header reads, decoding fails
    })
    report = ingest_image_archive(archive, out)
    assert [s["file"] for s in report.skipped] == ["cat/broken.jpg", "dog/truncated.png"]
    assert report.skipped[0]["reason"] == "not an image (unknown or unsupported format)"
    assert report.skipped[1]["reason"].startswith("cannot decode image")
    assert report.num_samples == 4
    assert np.load(out / "images.npy").shape == (4, 12, 12, 3)
    assert len(np.load(out / "labels.npy")) == 4


def test_it_decodes_jpeg_png_bmp_webp_and_the_first_frame_of_a_gif(tmp_path, out):
    frames = [Image.new("RGB", (12, 12), (255, 0, 0)), Image.new("RGB", (12, 12), (0, 0, 255))]
    buffer = __import__("io").BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    archive = write_archive(tmp_path / "a.zip", {
        "a/1.jpg": image_bytes(pixels, "jpeg"), "a/2.bmp": image_bytes(pixels, "bmp"),
        "b/3.webp": image_bytes(pixels, "webp"), "b/4.gif": buffer.getvalue(), "b/5.PNG": image_bytes(pixels),
    })
    report = ingest_image_archive(archive, out, val_fraction=0.0)
    assert report.skipped == [] and report.num_samples == 5
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    gif_rows = [img for img, label in zip(images, labels) if label == 1 and (img == [255, 0, 0]).all()]
    assert len(gif_rows) == 1  # red: the first frame, not the blue second one


def test_an_archive_of_grayscale_images_gives_one_channel(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": gray(value=10), "b/1.png": gray(value=200)})
    report = ingest_image_archive(archive, out)
    assert report.channels == 1
    assert np.load(out / "images.npy").shape == (2, 12, 12, 1)


def test_one_colour_image_among_gray_ones_gives_three_channels(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": gray(value=10), "b/1.png": rgb(value=1)})
    report = ingest_image_archive(archive, out)
    assert report.channels == 3
    images = np.load(out / "images.npy")
    gray_row = images[np.load(out / "labels.npy") == 0][0]
    assert (gray_row == 10).all()  # gray expanded to three equal channels


def test_images_of_mixed_sizes_are_squashed_to_image_size(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": rgb(10, 20), "b/1.png": rgb(30, 15)})
    report = ingest_image_archive(archive, out, image_size=24)
    assert (report.height, report.width, report.resized) == (24, 24, True)
    assert np.load(out / "images.npy").shape == (2, 24, 24, 3)


def test_images_that_share_one_size_keep_it(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": rgb(10, 20), "b/1.png": rgb(10, 20, value=1)})
    report = ingest_image_archive(archive, out, image_size=24)
    assert (report.height, report.width, report.resized) == (10, 20, False)


def test_images_that_share_a_size_over_512_are_squashed_anyway(tmp_path, out):
    big = image_bytes(np.zeros((520, 600), dtype=np.uint8))
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": big, "b/1.png": big})
    report = ingest_image_archive(archive, out, image_size=16)
    assert (report.height, report.width, report.resized) == (16, 16, True)


def test_the_split_is_stratified_and_every_class_with_two_images_gets_a_validation_image(tmp_path, out):
    sizes = {"a": 10, "b": 5, "c": 2, "d": 1}
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i) for c, n in sizes.items()
                                                 for i in range(n)})
    report = ingest_image_archive(archive, out, val_fraction=0.2)
    assert report.counts == {"train": [8, 4, 1, 1], "val": [2, 1, 1, 0]}
    assert (report.num_train, report.num_val) == (14, 4)


def test_a_validation_fraction_of_zero_keeps_everything_for_training(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i) for c in "ab" for i in range(3)})
    report = ingest_image_archive(archive, out, val_fraction=0.0)
    assert report.counts == {"train": [3, 3], "val": [0, 0]}


def test_the_split_depends_on_the_seed_only(tmp_path):
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i * 10) for c in "ab" for i in range(10)})

    def stored(seed, name):
        ingest_image_archive(archive, tmp_path / name, val_fraction=0.3, seed=seed)
        return np.load(tmp_path / name / "images.npy")

    assert np.array_equal(stored(1, "x"), stored(1, "y"))
    assert not np.array_equal(stored(1, "x"), stored(2, "z"))


def test_progress_is_reported_up_to_done_equals_total(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i) for c in "ab" for i in range(3)})
    calls = []
    ingest_image_archive(archive, out, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] == 12  # two passes over six images
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- Refusals: nothing is left behind ---------------------------------------------------------


def test_an_archive_without_class_folders_is_refused(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"1.png": rgb(), "2.png": rgb(value=1)})
    with pytest.raises(DatasetError, match="No class folders with images found.*Skipped: 1.png"):
        ingest_image_archive(archive, out)
    assert leftovers(out.parent) == []


def test_an_archive_without_one_decodable_image_is_refused(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"cat/1.jpg": b"garbage", "dog/2.png": b"more garbage"})
    with pytest.raises(DatasetError, match=r"No image in the archive could be decoded. Skipped: cat/1.jpg"):
        ingest_image_archive(archive, out)
    assert leftovers(out.parent) == []


def test_a_class_whose_images_all_fail_to_decode_does_not_count(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"cat/1.png": rgb(), "dog/2.png": b"garbage"})
    with pytest.raises(DatasetError, match=r"Only one class was found \('cat'\).*dog/2.png"):
        ingest_image_archive(archive, out)


def test_a_refused_archive_removes_a_previous_dataset_at_out_dir_and_leaves_no_temp_folder(tmp_path, out):
    out.mkdir()
    (out / "images.npy").write_bytes(b"old")
    archive = tmp_path / "bad.zip"
    archive.write_text("not an archive")
    with pytest.raises(DatasetError):
        ingest_image_archive(archive, out)
    assert leftovers(out.parent) == []


def test_a_crash_in_the_middle_leaves_nothing_behind(tmp_path, out, monkeypatch):
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i) for c in "ab" for i in range(3)})

    def crash(done, total):
        if done == 8:
            raise KeyboardInterrupt  # stands for a worker being stopped mid-decode

    with pytest.raises(KeyboardInterrupt):
        ingest_image_archive(archive, out, progress=crash)
    assert leftovers(out.parent) == []


def test_a_successful_ingest_replaces_a_previous_one_atomically(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": gray(), "b/1.png": gray(value=5)})
    out.mkdir()
    (out / "stale.txt").write_text("old")
    ingest_image_archive(archive, out)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "images.npy", "labels.npy"]
    assert leftovers(out.parent) == ["7"]


def test_archive_limits_apply_during_ingest(tmp_path, out):
    archive = write_archive(tmp_path / "a.zip", {f"{c}/{i}.png": gray(value=i) for c in "ab" for i in range(3)})
    with pytest.raises(DatasetError, match="more than 4 entries"):
        ingest_image_archive(archive, out, limits=ArchiveLimits(max_members=4))
    assert leftovers(out.parent) == []


def test_an_image_that_crashes_the_decoder_in_an_unexpected_way_is_skipped_not_fatal(tmp_path, out, monkeypatch):
    import ml.ingest

    real = ml.ingest.decode_image

    def flaky(data, **kwargs):
        if data == bad:
            raise IndexError("tile cannot extend outside image")  # what PIL says for some crafted TIFFs
        return real(data, **kwargs)

    bad = gray(value=99)
    archive = write_archive(tmp_path / "a.zip", {"a/1.png": gray(value=1), "a/2.png": bad, "b/1.png": gray(value=2)})
    monkeypatch.setattr(ml.ingest, "decode_image", flaky)
    report = ingest_image_archive(archive, out)
    assert report.skipped == [{"file": "a/2.png", "reason": "cannot decode image (IndexError)"}]
    assert report.num_samples == 2
