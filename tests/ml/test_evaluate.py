"""The evaluation report (ml.evaluate): metrics against hand-computed values, calibration of toys
whose answer is known, and the gallery of the most confident mistakes for images and speech."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ml import AudioData, ImageData, TrainConfig, train
from ml.evaluate import calibration, class_metrics, evaluation_report, thumbnail


class Lookup(torch.nn.Module):
    """A stand-in network whose answer for each sample is set by the test: the sample's first value
    (pixel 0 of channel 0, or sample 0 of the clip × 32768) is its row in a table of log-probabilities."""

    def __init__(self, probabilities: np.ndarray):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.as_tensor(probabilities, dtype=torch.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = x[:, 0, 0, 0] if x.ndim == 4 else x[:, 0] * 32768
        assert x.dtype == (torch.uint8 if x.ndim == 4 else torch.float32)  # what the real nets are given
        return self.table[row.round().long()]


def image_data(y_val, *, size=(8, 8), channels=3) -> ImageData:
    n = len(y_val)
    x = np.random.default_rng(0).integers(0, 256, (n, *size, channels), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)  # the row of Lookup's table
    train_x = np.zeros((1, *size, channels), dtype=np.uint8)
    return ImageData(train_x, np.zeros(1, dtype=np.int64), x, np.asarray(y_val, dtype=np.int64),
                     ["cat", "dog", "fox"])


def audio_data(y_val, *, length=4000) -> AudioData:
    n = len(y_val)
    x = (np.random.default_rng(0).normal(0, 0.1, (n, length)) * 32767).astype(np.int16)
    x[:, 0] = np.arange(n)
    return AudioData(np.zeros((1, length), dtype=np.int16), np.zeros(1, dtype=np.int64), x,
                     np.asarray(y_val, dtype=np.int64), ["yes", "no", "up"])


# --- Metrics --------------------------------------------------------------------------------------


def test_per_class_precision_recall_f1_match_a_hand_computed_three_class_case():
    #           samples: 0  1  2  3  4  5
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = class_metrics(y_true, y_pred, ["a", "b", "c"])

    # a: 2 of 2 predicted right, 2 of 3 found; b: 1 of 2, 1 of 2; c: 1 of 2, 1 of 1.
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}
    for row in m["per_class"]:
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(expected[row["label"]])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)


def test_a_class_never_predicted_or_absent_scores_zero_instead_of_dividing_by_zero():
    m = class_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), ["a", "b", "c"])
    rows = {row["label"]: row for row in m["per_class"]}

    assert (rows["b"]["precision"], rows["b"]["recall"], rows["b"]["f1"]) == (0.0, 0.0, 0.0)  # never predicted
    assert (rows["c"]["precision"], rows["c"]["recall"], rows["c"]["support"]) == (0.0, 0.0, 0)  # absent
    assert rows["a"]["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert m["macro_f1"] == pytest.approx(0.8 / 3)  # absent classes count in the macro average
    assert m["weighted_f1"] == pytest.approx(2 * 0.8 / 3)
    json.dumps(m)  # plain Python types


def test_a_perfectly_calibrated_toy_has_zero_ece():
    # 80 %-sure answers right 8 times in 10, 30 %-sure answers right 3 times in 10.
    confidence = np.array([0.8] * 10 + [0.3] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 7, dtype=bool)
    c = calibration(confidence, correct)

    assert c["ece"] == pytest.approx(0.0, abs=1e-12)
    assert len(c["bins"]) == 15
    full = [b for b in c["bins"] if b["count"]]
    assert [b["count"] for b in full] == [10, 10]
    assert [(b["confidence"], b["accuracy"]) for b in full] == [pytest.approx((0.3, 0.3)), pytest.approx((0.8, 0.8))]
    assert all(b["confidence"] is None and b["accuracy"] is None for b in c["bins"] if not b["count"])
    assert c["bins"][0]["lower"] == 0.0 and c["bins"][-1]["upper"] == 1.0


def test_an_overconfident_toy_has_ece_equal_to_its_gap():
    # Always 99 % sure, right half the time: the gap is 0.49 everywhere. One 100 %-sure answer that is
    # right goes into the last bin (which includes 1.0).
    confidence = np.array([0.99] * 10 + [1.0])
    correct = np.array([1, 0] * 5 + [1], dtype=bool)
    c = calibration(confidence, correct)

    last = c["bins"][-1]
    assert last["count"] == 11 and last["confidence"] == pytest.approx((9.9 + 1.0) / 11)
    assert last["accuracy"] == pytest.approx(6 / 11)
    assert c["ece"] == pytest.approx(abs(6 / 11 - 10.9 / 11))


# --- The report with its gallery ---------------------------------------------------------------


def test_the_report_of_images_lists_the_most_confident_mistakes_first_and_writes_their_thumbnails(tmp_path):
    y_val = [0, 1, 2, 0, 1, 2]
    probs = np.array([
        [0.90, 0.05, 0.05],  # right
        [0.70, 0.20, 0.10],  # wrong: dog -> cat, 70 %
        [0.02, 0.95, 0.03],  # wrong: fox -> dog, 95 %
        [0.60, 0.30, 0.10],  # right
        [0.10, 0.10, 0.80],  # wrong: dog -> fox, 80 %
        [0.10, 0.10, 0.80],  # right
    ])
    data = image_data(y_val, size=(8, 8), channels=1)
    report = evaluation_report(Lookup(probs), data, tmp_path, max_examples=2)

    assert (report["split"], report["samples"], report["accuracy"]) == ("validation", 6, pytest.approx(0.5))
    assert report["misclassified_total"] == 3
    assert report["misclassified"] == [
        {"index": 2, "true": "fox", "predicted": "dog", "confidence": pytest.approx(0.95),
         "file": "report/miss-00.png"},
        {"index": 4, "true": "dog", "predicted": "fox", "confidence": pytest.approx(0.80),
         "file": "report/miss-01.png"},
    ]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["miss-00.png", "miss-01.png"]
    with Image.open(tmp_path / "report" / "miss-00.png") as thumb:  # 8×8 gray, scaled ×8 without blur
        assert (thumb.mode, thumb.size) == ("L", (64, 64))
        assert np.array_equal(np.asarray(thumb)[::8, ::8], data.x_val[2, :, :, 0])
    # predicted cat, cat, dog, cat, fox, fox: cat 2 of 3 right, both found; dog never right; fox 1 of 2, 1 of 2
    rows = {row["label"]: row for row in report["per_class"]}
    assert (rows["cat"]["precision"], rows["cat"]["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (rows["dog"]["precision"], rows["dog"]["recall"], rows["dog"]["f1"]) == (0.0, 0.0, 0.0)
    assert (rows["fox"]["precision"], rows["fox"]["recall"]) == (0.5, 0.5)
    assert report["calibration"]["ece"] == pytest.approx(
        abs(0.9 - 1) / 6 + abs(0.7 - 0) / 6 + abs(0.95 - 0) / 6 + abs(0.6 - 1) / 6 + abs(0.8 - 0.5) * 2 / 6)
    json.dumps(report)


def test_the_report_of_speech_writes_each_mistake_as_a_wav_and_its_spectrogram(tmp_path):
    y_val = [0, 1, 2]
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    data = audio_data(y_val)
    report = evaluation_report(Lookup(probs), data, tmp_path)

    mistakes = [(e["index"], e["true"], e["predicted"]) for e in report["misclassified"]]
    assert mistakes == [(0, "yes", "no"), (2, "up", "yes")]  # 70 % sure, then 60 %
    first = report["misclassified"][0]
    assert (first["file"], first["spectrogram"]) == ("report/miss-00.wav", "report/miss-00.png")
    wave, rate = sf.read(io.BytesIO((tmp_path / first["file"]).read_bytes()), dtype="int16")
    assert rate == 16_000 and np.array_equal(wave, data.x_val[0])  # the clip as the model heard it
    with Image.open(tmp_path / first["spectrogram"]) as spectrogram:
        assert spectrogram.format == "PNG" and spectrogram.height == 160
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["miss-00.png", "miss-00.wav",
                                                                       "miss-01.png", "miss-01.wav"]


def test_a_perfect_model_has_no_gallery_and_writes_no_example(tmp_path):
    report = evaluation_report(Lookup(np.eye(3)[[0, 1, 2]] * 0.98 + 0.01), image_data([0, 1, 2]), tmp_path)

    assert (report["accuracy"], report["misclassified_total"], report["misclassified"]) == (1.0, 0, [])
    assert list((tmp_path / "report").iterdir()) == []


def test_an_empty_validation_split_is_refused_with_a_plain_reason(tmp_path):
    with pytest.raises(ValueError, match="no validation samples"):
        evaluation_report(Lookup(np.eye(3)), image_data([]), tmp_path)


def test_the_report_of_a_trained_model_agrees_with_training_s_own_validation(tmp_path, make_brightness_data):
    data = make_brightness_data(120, 45, num_classes=3)
    result = train(TrainConfig(arch="seed_cnn", epochs=1, batch_size=32), data, device="cpu")
    report = evaluation_report(result.model, data, tmp_path, classes=result.classes)

    assert report["accuracy"] == pytest.approx(result.metrics["val_acc"])
    assert [row["support"] for row in report["per_class"]] == [sum(row) for row in result.confusion]
    assert report["misclassified_total"] == 45 - sum(result.confusion[i][i] for i in range(3))
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 45
    confidences = [e["confidence"] for e in report["misclassified"]]
    assert confidences == sorted(confidences, reverse=True)


@pytest.mark.parametrize(("shape", "size"),
                         [((28, 28, 1), (84, 84)), ((16, 12, 3), (72, 96)), ((100, 80, 3), (80, 100))])
def test_thumbnails_of_small_images_are_scaled_up_by_a_whole_factor(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    thumb = thumbnail(image)

    assert thumb.size == size  # (width, height)
    factor = size[0] // shape[1]
    assert np.array_equal(np.asarray(thumb)[::factor, ::factor].reshape(shape), image)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_report_agrees_with_the_cpu_and_leaves_the_model_on_the_cpu(tmp_path, make_brightness_data):
    data = make_brightness_data(120, 300, num_classes=3)
    result = train(TrainConfig(arch="resnet", epochs=1, batch_size=32), data, device="cuda")
    on_cpu = evaluation_report(result.model, data, tmp_path / "cpu", device="cpu")
    on_gpu = evaluation_report(result.model, data, tmp_path / "gpu", device="cuda")

    assert next(result.model.parameters()).device.type == "cpu"  # a copy ran on the GPU
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=2 / 300)  # a near tie may flip (TF32)
    assert on_gpu["calibration"]["ece"] == pytest.approx(on_cpu["calibration"]["ece"], abs=0.01)
