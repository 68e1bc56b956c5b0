"""Exported formats in the registry: registering a model writes TorchScript and ONNX files checked on
held-out samples of its dataset; each format downloads on its own and in the zip; the page says what
each is for and how it was checked, or why it is not offered; nobody else gets them."""

import io
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
from django.urls import reverse

from jobs.models import Job
from ml import AudioData, ImageData
from tests.audio_fixtures import CLASSES, clip_arrays
from webapp.datasets.models import Dataset
from webapp.registry.services import _held_out_samples, model_directory, model_register, predictor_for

EXPORTED = ["model.onnx", "model.torchscript.pt"]
ALL_FILES = sorted(["model.json", "model.safetensors", *EXPORTED])


def shades(n_train=48, n_val=16) -> ImageData:
    """Dark and bright 8×8 grayscale images: trivially separable."""
    rng = np.random.default_rng(0)
    labels = np.arange(n_train + n_val, dtype=np.int64) % 2
    base = np.where(labels == 0, 30, 220)[:, None, None, None]
    images = np.clip(base + rng.normal(0, 15, (len(labels), 8, 8, 1)), 0, 255).astype(np.uint8)
    return ImageData(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], ["dark", "bright"])


@pytest.fixture(scope="session")
def image_run():
    from ml import TrainConfig, train

    data = shades()
    config = TrainConfig.from_dict({"arch": "seed_cnn", "epochs": 3, "batch_size": 16, "seed": 0})
    return train(config, data, device="cpu"), data


@pytest.fixture
def dataset(alice):
    return Dataset.objects.create(owner=alice, name="Shades", status=Dataset.Status.READY, height=8, width=8,
                                  channels=1, classes=[{"name": "dark", "train": 24, "val": 8},
                                                       {"name": "bright", "train": 24, "val": 8}])


def register(dataset, result, data):
    job = Job.objects.create(owner=dataset.owner, dataset=dataset, status=Job.Status.SUCCEEDED,
                             config={"arch": result.config.arch})
    return model_register(job=job, result=result, data=data)


@pytest.fixture
def model(dataset, image_run):
    return register(dataset, *image_run)


def download(client, model, name=None):
    return client.get(reverse("models:download", args=[model.pk]), {"file": name} if name else {})


def content(response) -> bytes:
    return b"".join(response.streaming_content)


# --- Registering ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_registering_with_the_data_records_both_formats_checked_on_the_validation_images(model):
    model.refresh_from_db()
    directory = model_directory(model)
    onnx_entry, torchscript = model.exports["onnx"], model.exports["torchscript"]

    assert sorted(p.name for p in directory.iterdir() if p.is_file()) == ALL_FILES
    assert onnx_entry["ok"] and torchscript["ok"]
    assert (onnx_entry["input"], onnx_entry["output"]) == ("pixels", "probabilities")
    assert onnx_entry["bytes"] == (directory / "model.onnx").stat().st_size
    assert torchscript["bytes"] == (directory / "model.torchscript.pt").stat().st_size
    # All 16 validation images, every answer alike.
    assert onnx_entry["parity"] == {**onnx_entry["parity"], "samples": 16, "top1_agree": 16, "passed": True,
                                    "tolerance": 1e-4, "split": "validation"}
    assert onnx_entry["parity"]["max_abs_diff"] <= 1e-4
    assert model.size_bytes == sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.mark.django_db
def test_the_registered_onnx_file_answers_like_the_server(model, image_run):
    _, data = image_run
    session = ort.InferenceSession(str(model_directory(model) / "model.onnx"), providers=["CPUExecutionProvider"])
    images = data.x_val[:4]

    got = session.run(["probabilities"], {"pixels": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})[0]

    predictor = predictor_for(model)
    for image, probs in zip(images, got, strict=True):
        server = dict(predictor.predict(image, top_k=None))
        assert probs == pytest.approx([server[c] for c in predictor.classes], abs=1e-4)


@pytest.mark.django_db
def test_a_speech_model_exports_a_graph_that_takes_the_waveform(alice):
    from ml import TrainConfig, train

    x, y = clip_arrays(48, seed=0)
    data = AudioData(x_train=x[:36], y_train=y[:36], x_val=x[36:], y_val=y[36:], classes=list(CLASSES))
    result = train(TrainConfig.from_dict({"arch": "cnn_mel", "epochs": 1, "batch_size": 12}, modality="audio"),
                   data, device="cpu")
    dataset = Dataset.objects.create(owner=alice, name="Tones", kind=Dataset.Kind.AUDIO,
                                     status=Dataset.Status.READY)

    model = register(dataset, result, data)

    onnx_entry = model.exports["onnx"]
    assert onnx_entry["ok"] and onnx_entry["input"] == "waveform", onnx_entry
    assert (onnx_entry["parity"]["samples"], onnx_entry["parity"]["top1_agree"]) == (12, 12)
    session = ort.InferenceSession(str(model_directory(model) / "model.onnx"), providers=["CPUExecutionProvider"])
    wave = x[40:41].astype(np.float32) / 32768.0
    got = session.run(["probabilities"], {"waveform": wave})[0][0]
    server = dict(predictor_for(model).predict(wave[0], top_k=None))
    assert got == pytest.approx([server[c] for c in CLASSES], abs=1e-4)


@pytest.mark.django_db
def test_without_the_dataset_nothing_is_exported_and_the_page_says_why(alice_client, dataset, image_run):
    result, _ = image_run
    model = register(dataset, result, None)  # the dataset's files are not in storage

    assert model.exports == {"error": "the dataset's files could not be read, so the exported "
                                      "files could not be checked"}
    assert sorted(p.name for p in model_directory(model).iterdir() if p.is_file()) == [
        "model.json", "model.safetensors"]
    html = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert "the dataset&#x27;s files could not be read" in html.split('data-format="onnx"')[1].split("</tr>")[0]
    for name in EXPORTED:
        assert download(alice_client, model, name).status_code == 404


@pytest.mark.django_db
def test_a_format_that_fails_is_not_offered_and_the_page_gives_the_reason(alice_client, dataset, image_run,
                                                                           monkeypatch):
    import ml.export

    def no_translation(model, path, example):
        raise RuntimeError("No ONNX function found for aten.something")

    monkeypatch.setattr(ml.export, "export_onnx", no_translation)
    model = register(dataset, *image_run)

    assert model.exports["onnx"] == {
        "ok": False, "reason": "The ONNX export failed: RuntimeError: No ONNX function found for aten.something"}
    assert model.exports["torchscript"]["ok"]
    assert not (model_directory(model) / "model.onnx").exists()
    assert download(alice_client, model, "model.onnx").status_code == 404
    assert download(alice_client, model, "model.torchscript.pt").status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(content(download(alice_client, model))))
    assert sorted(archive.namelist()) == ["model.json", "model.safetensors", "model.torchscript.pt"]
    row = alice_client.get(reverse("models:detail", args=[model.pk])).text.split('data-format="onnx"')[1]
    row = row.split("</tr>")[0]
    assert "Not offered." in row and "No ONNX function found for aten.something" in row
    assert "?file=model.onnx" not in row


# --- Downloads and the page -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_owner_downloads_each_format_and_the_zip_holds_them_all(alice_client, model):
    directory = model_directory(model)
    for name in ALL_FILES:
        response = download(alice_client, model, name)
        assert response.status_code == 200, name
        assert content(response) == (directory / name).read_bytes()
        assert f'filename="shades-seed_cnn-v1-{name}"' in response["Content-Disposition"]

    archive = zipfile.ZipFile(io.BytesIO(content(download(alice_client, model))))
    assert sorted(archive.namelist()) == ALL_FILES
    assert archive.read("model.onnx") == (directory / "model.onnx").read_bytes()
    assert download(alice_client, model, "model.onnx.data").status_code == 404


@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_downloaded_torchscript_runs_without_perceptor(alice_client, model, image_run, tmp_path):
    _, data = image_run
    path = tmp_path / "downloaded.pt"
    path.write_bytes(content(download(alice_client, model, "model.torchscript.pt")))
    pixels = torch.from_numpy(np.ascontiguousarray(data.x_val[:3].transpose(0, 3, 1, 2)))

    got = torch.jit.load(str(path))(pixels)

    predictor = predictor_for(model)
    for image, probs in zip(data.x_val[:3], got.tolist(), strict=True):
        server = dict(predictor.predict(image, top_k=None))
        assert probs == pytest.approx([server[c] for c in predictor.classes], abs=1e-5)


@pytest.mark.django_db
def test_bob_gets_404_for_every_file_of_an_unpublished_model(bob_client, model):
    assert download(bob_client, model).status_code == 404
    for name in ALL_FILES:
        assert download(bob_client, model, name).status_code == 404, name


@pytest.mark.django_db
def test_bob_downloads_the_formats_of_a_published_model(bob_client, model):
    model.published = True
    model.save(update_fields=["published"])

    assert content(download(bob_client, model, "model.onnx")) == (model_directory(model) / "model.onnx").read_bytes()


@pytest.mark.django_db
def test_the_page_lists_each_format_with_its_size_use_and_check(alice_client, model):
    html = alice_client.get(reverse("models:detail", args=[model.pk])).text
    section = html.split('id="model-formats"')[1].split("</section>")[0]
    rows = {fmt: section.split(f'data-format="{fmt}"')[1].split("</tr>")[0]
            for fmt in ("safetensors", "torchscript", "onnx")}
    url = reverse("models:download", args=[model.pk])

    assert f"{url}?file=model.safetensors" in rows["safetensors"] and f"{url}?file=model.json" in rows["safetensors"]
    assert "Perceptor" in rows["safetensors"]
    assert f"{url}?file=model.torchscript.pt" in rows["torchscript"] and "C++" in rows["torchscript"]
    assert f"{url}?file=model.onnx" in rows["onnx"]
    assert "<code>pixels</code> uint8 N × 1 × 8 × 8" in rows["onnx"]
    assert "<code>probabilities</code> N × 2" in rows["onnx"]
    assert "checked on 16 validation images: top-1 agrees on 16/16, largest probability difference" in rows["onnx"]
    assert "KB" in rows["onnx"] or "bytes" in rows["onnx"]  # the file's size


def test_the_held_out_samples_are_what_the_graphs_take():
    images, split = _held_out_samples(shades(n_train=48, n_val=40))
    assert (images.dtype, images.shape, split) == (np.uint8, (32, 1, 8, 8), "validation")

    no_val = shades(n_train=10, n_val=0)
    images, split = _held_out_samples(no_val)
    assert split == "training" and np.array_equal(images, no_val.x_train.transpose(0, 3, 1, 2))

    x, y = clip_arrays(6, seed=0)
    waves, split = _held_out_samples(AudioData(x[:3], y[:3], x[3:], y[3:], list(CLASSES)))
    assert (waves.dtype, waves.shape, split) == (np.float32, (3, 16_000), "validation")
    np.testing.assert_array_equal(waves, x[3:] / np.float32(32768))
