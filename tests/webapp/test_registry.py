"""Model registry: registering, deleting, cached predictors, predictions, and the pages."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.urls import reverse
from PIL import Image

from jobs.models import Job
from webapp.datasets.models import Dataset
from webapp.registry import services
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_delete, model_directory, model_register, prediction_create, predictor_for

# --- A tiny trained model, trained once per test session ---------------------------------------


def png(value: int, *, size=(8, 8), mode="L") -> bytes:
    """A flat image: dark (value ~0) or bright (~255) is the whole task."""
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def train_result(tmp_path_factory):
    """Two trivially separable classes of 8x8 grayscale images, written in the documented
    perceptor-images/1 format and trained for a few epochs on CPU (about a second)."""
    from ml import TrainConfig, load_image_dataset, train

    rng = np.random.default_rng(0)
    n_train, n_val = 48, 16
    labels = np.array([i % 2 for i in range(n_train + n_val)], dtype=np.int64)
    base = np.where(labels == 0, 30, 220)[:, None, None, None]
    images = np.clip(base + rng.normal(0, 15, (len(labels), 8, 8, 1)), 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("tiny-dataset")
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    (folder / "dataset.json").write_text(json.dumps({
        "format": "perceptor-images/1", "classes": ["dark", "bright"], "height": 8, "width": 8, "channels": 1,
        "num_train": n_train, "num_val": n_val,
        "counts": {"train": [n_train // 2] * 2, "val": [n_val // 2] * 2},
        "samples": {"dark": [0, 2], "bright": [1, 3]}, "skipped": [],
        "options": {"image_size": 8, "val_fraction": 0.25, "seed": 0}, "resized": False,
    }))
    config = TrainConfig.from_dict({"arch": TINY_ARCH, "epochs": 4, "batch_size": 16, "seed": 0})
    return train(config, load_image_dataset(folder), device="cpu")


TINY_ARCH = "seed_cnn"


@pytest.fixture
def dataset(alice):
    return Dataset.objects.create(owner=alice, name="Shades", status=Dataset.Status.READY, height=8, width=8,
                                  channels=1, classes=[{"name": "dark", "train": 24, "val": 8},
                                                       {"name": "bright", "train": 24, "val": 8}])


def make_job(dataset, **fields) -> Job:
    fields.setdefault("status", Job.Status.SUCCEEDED)
    return Job.objects.create(owner=dataset.owner, dataset=dataset, config={"arch": TINY_ARCH, "epochs": 4}, **fields)


@pytest.fixture
def job(dataset):
    return make_job(dataset)


@pytest.fixture
def model(job, train_result):
    return model_register(job=job, result=train_result)


# --- model_register / model_delete ------------------------------------------------------------


@pytest.mark.django_db
def test_register_writes_the_files_and_fills_the_row(job, train_result):
    model = model_register(job=job, result=train_result)

    model.refresh_from_db()
    directory = model_directory(model)
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    assert model.name == f"Shades · {TINY_ARCH}" and model.version == 1
    assert (model.owner, model.job, model.dataset) == (job.owner, job, job.dataset)
    assert model.arch == TINY_ARCH
    assert model.classes == ["dark", "bright"]
    assert (model.input_spec["height"], model.input_spec["width"], model.input_spec["channels"]) == (8, 8, 1)
    assert 0.0 <= model.metrics["val_acc"] <= 1.0
    assert sum(map(sum, model.confusion)) == 16  # every validation sample, rows = true class
    assert model.size_bytes == sum(p.stat().st_size for p in directory.iterdir())
    json.loads((directory / "model.json").read_text())  # the files are what ml wrote, complete


@pytest.mark.django_db
def test_versions_increment_per_owner_and_name(dataset, bob, train_result):
    first = model_register(job=make_job(dataset), result=train_result)
    second = model_register(job=make_job(dataset), result=train_result)
    bobs_dataset = Dataset.objects.create(owner=bob, name="Shades", status=Dataset.Status.READY)
    bobs = model_register(job=make_job(bobs_dataset), result=train_result)

    assert (first.version, second.version) == (1, 2)
    assert first.name == second.name == bobs.name
    assert bobs.version == 1  # versions count per owner


@pytest.mark.django_db
def test_a_failed_save_leaves_neither_row_nor_files(job, train_result, monkeypatch, settings):
    import ml

    def broken_save(result, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ml, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model_register(job=job, result=train_result)

    assert not TrainedModel.objects.exists()
    assert list((settings.MEDIA_ROOT / "models").iterdir()) == []


@pytest.mark.django_db
def test_a_refused_row_leaves_no_files(model, job, train_result, settings):
    # A job has at most one model: registering it twice is refused by the database.
    with pytest.raises(IntegrityError):
        model_register(job=job, result=train_result)

    assert list(TrainedModel.objects.all()) == [model]
    assert [p.name for p in (settings.MEDIA_ROOT / "models").iterdir()] == [str(model.pk)]


@pytest.mark.django_db
def test_delete_removes_the_row_and_then_the_files(model, django_capture_on_commit_callbacks):
    directory = model_directory(model)
    with django_capture_on_commit_callbacks(execute=True):
        model_delete(model=model)

    assert not TrainedModel.objects.exists()
    assert not directory.exists()


# --- Predictors and predictions ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_predictor_is_loaded_once_and_cached(model):
    assert predictor_for(model) is predictor_for(TrainedModel.objects.get(pk=model.pk))


@pytest.mark.django_db
def test_the_predictor_is_reloaded_after_its_files_change(model):
    first = predictor_for(model)
    weights = model_directory(model) / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    second = predictor_for(model)
    assert second is not first
    assert predictor_for(model) is second
    assert len(services._cache._entries) == 1  # the stale one is dropped, not kept alongside


@pytest.mark.django_db
def test_prediction_returns_probabilities_summing_to_one_most_probable_first(model):
    predictions = prediction_create(model=model, data=png(10), filename="night.png")

    assert [p["label"] for p in predictions][:1] == ["dark"]
    assert sorted(p["label"] for p in predictions) == ["bright", "dark"]  # top 5 of 2 classes is 2
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.django_db
def test_prediction_resizes_and_converts_any_image_inside_the_predictor(model):
    predictions = prediction_create(model=model, data=png(245, size=(40, 24), mode="RGB"), filename="day.png")

    assert predictions[0]["label"] == "bright"


@pytest.mark.django_db
def test_prediction_of_a_non_image_names_the_file_and_the_reason(model):
    with pytest.raises(ValidationError) as caught:
        prediction_create(model=model, data=b"%PDF-1.7 not a picture", filename="report.pdf")

    assert "report.pdf" in caught.value.messages[0]
    assert "not an image" in caught.value.messages[0]


@pytest.mark.django_db
def test_prediction_of_an_oversized_file_is_refused_before_decoding(model, settings, monkeypatch):
    settings.MAX_PREDICT_BYTES = 100
    monkeypatch.setattr(services, "predictor_for", lambda model: pytest.fail("must not load or decode"))
    with pytest.raises(ValidationError) as caught:
        prediction_create(model=model, data=b"x" * 101, filename="huge.png")

    assert caught.value.messages == ["huge.png: the file is larger than the 100 bytes limit for predictions."]


# --- Pages ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_has_an_empty_state_pointing_to_training(alice_client):
    response = alice_client.get(reverse("models:list"))

    assert response.status_code == 200
    assert "No models yet" in response.text
    assert reverse("jobs:new") in response.text and reverse("datasets:list") in response.text


@pytest.mark.django_db
def test_the_list_shows_only_my_models(model, bob, client):
    client.force_login(bob)
    assert model.name not in client.get(reverse("models:list")).text

    client.force_login(model.owner)
    response = client.get(reverse("models:list"))
    assert f"{model.name} v1" in response.text
    assert reverse("models:detail", args=[model.pk]) in response.text


@pytest.mark.django_db
def test_the_detail_page_shows_the_model_and_its_confusion_matrix(alice_client, dataset, job):
    model = TrainedModel.objects.create(
        owner=dataset.owner, job=job, dataset=dataset, name="Shades · seed_cnn", version=3, arch="seed_cnn",
        classes=["dark", "bright"], input_spec={"height": 8, "width": 8, "channels": 1},
        metrics={"val_acc": 0.875, "val_loss": 0.3}, confusion=[[7, 1], [1, 7]], size_bytes=2048)

    response = alice_client.get(reverse("models:detail", args=[model.pk]))

    assert response.status_code == 200
    html = response.text
    assert "<h1>Shades · seed_cnn <small class=\"muted\">v3</small></h1>" in html
    assert '<dd data-metric="val_acc">87.5 %</dd>' in html and "8 × 8 pixels, grayscale" in html
    assert f'<a href="{reverse("datasets:detail", args=[dataset.pk])}" id="model-dataset">Shades</a>' in html
    assert f'<a href="{reverse("jobs:detail", args=[job.pk])}" id="model-job">' in html
    # Counts with row-normalised shading: 7 of 8 on the diagonal, 1 of 8 off it.
    assert 'class="hot diag strong" style="--v: 0.875" title="true dark, predicted dark: 7 of 8">7<' in html
    assert 'class="hot" style="--v: 0.125" title="true dark, predicted bright: 1 of 8">1<' in html
    assert reverse("models:download", args=[model.pk]) in html
    assert f'action="{reverse("models:predict", args=[model.pk])}"' in html
    assert "vendor/chart.js/chart.umd.min.js" in html


@pytest.mark.django_db
def test_download_is_a_zip_of_the_weights_and_the_description(alice_client, model):
    response = alice_client.get(reverse("models:download", args=[model.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert 'filename="shades-seed_cnn-v1.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert sorted(archive.namelist()) == ["model.json", "model.safetensors"]
    directory = model_directory(model)
    assert archive.read("model.safetensors") == (directory / "model.safetensors").read_bytes()


@pytest.mark.django_db
def test_download_of_one_file(alice_client, model):
    url = reverse("models:download", args=[model.pk])
    response = alice_client.get(url, {"file": "model.json"})

    assert response.status_code == 200
    assert json.loads(b"".join(response.streaming_content)) == json.loads(
        (model_directory(model) / "model.json").read_text())
    assert alice_client.get(url, {"file": "../../settings.py"}).status_code == 404


@pytest.mark.django_db
def test_predict_answers_json_to_fetch(alice_client, model):
    response = alice_client.post(reverse("models:predict", args=[model.pk]),
                                 {"file": upload("night.png", png(5))}, headers={"Accept": "application/json"})

    assert response.status_code == 200
    body = response.json()
    assert body["file"] == "night.png"
    assert body["predictions"][0]["label"] == "dark"
    assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.django_db
def test_predict_without_javascript_renders_the_page_with_results(alice_client, model):
    response = alice_client.post(reverse("models:predict", args=[model.pk]), {"file": upload("day.png", png(250))})

    assert response.status_code == 200
    assert '<strong id="top-label">bright</strong>' in response.text
    assert 'src="data:image/png;base64,' in response.text  # the preview of the uploaded image


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_predict_on_a_non_image_says_which_file_and_why(alice_client, model, accept):
    response = alice_client.post(reverse("models:predict", args=[model.pk]),
                                 {"file": upload("notes.txt", b"just some text")}, headers={"Accept": accept})

    assert response.status_code == 400
    message = "notes.txt: not an image (unknown or unsupported format)."
    if accept == "application/json":
        assert response.json() == {"file": "notes.txt", "error": message}
    else:
        assert f'role="alert">{message}</p>' in response.text


@pytest.mark.django_db
def test_predict_on_an_oversized_file_is_a_400(alice_client, model, settings):
    settings.MAX_PREDICT_BYTES = 50
    response = alice_client.post(reverse("models:predict", args=[model.pk]), {"file": upload("big.png", png(0))},
                                 headers={"Accept": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"] == "big.png: the file is larger than the 50 bytes limit for predictions."


@pytest.mark.django_db
def test_predict_without_a_file_asks_for_one(alice_client, model):
    response = alice_client.post(reverse("models:predict", args=[model.pk]), headers={"Accept": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"] == "Choose an image file to upload."


@pytest.mark.django_db
def test_a_model_whose_files_vanished_says_so_instead_of_crashing(alice_client, model):
    for path in model_directory(model).iterdir():
        path.unlink()

    response = alice_client.post(reverse("models:predict", args=[model.pk]), {"file": upload("a.png", png(0))},
                                 headers={"Accept": "application/json"})
    assert response.status_code == 410
    assert "missing" in response.json()["error"]
    download = alice_client.get(reverse("models:download", args=[model.pk]), follow=True)
    assert "missing from storage" in download.text


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["models:detail", "models:download", "models:predict"])
def test_bob_gets_404_on_alices_model(bob_client, model, name):
    url = reverse(name, args=[model.pk])
    response = bob_client.post(url, {"file": upload("a.png", png(0))}) if name == "models:predict" else bob_client.get(url)

    assert response.status_code == 404


@pytest.mark.django_db
def test_staff_see_everyones_models(client, charlie, model):
    client.force_login(charlie)

    assert client.get(reverse("models:detail", args=[model.pk])).status_code == 200
    assert f"{model.name} v1" in client.get(reverse("models:list")).text


@pytest.mark.django_db
def test_deleting_in_the_admin_removes_the_files(client, charlie, model, django_capture_on_commit_callbacks):
    client.force_login(charlie)
    directory = model_directory(model)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:registry_trainedmodel_changelist"),
                               {"action": "delete_selected", "_selected_action": [model.pk], "post": "yes"})

    assert response.status_code == 302
    assert not TrainedModel.objects.exists()
    assert not directory.exists()


def upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png" if name.endswith(".png") else "text/plain")
