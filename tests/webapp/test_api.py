"""The JSON API under /api/: auth, datasets, jobs, models, predictions, schema and docs."""

import io
import json
import re
import zipfile

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from drf_spectacular.validation import validate_schema
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs.models import Job, MetricPoint
from ml.nets import ARCHITECTURES
from tests.webapp.test_registry import (  # noqa: F401 - shared fixtures
    TINY_ARCH, dataset, job, make_job, model, png, train_result)
from webapp.datasets.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def alice_api(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


@pytest.fixture
def bob_api(bob):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    return client


def image_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(6):
            zf.writestr(f"dark/{i}.png", png(10 + i))
            zf.writestr(f"bright/{i}.png", png(240 - i))
    return buffer.getvalue()


# --- Auth --------------------------------------------------------------------------------------


def test_a_token_is_obtained_with_username_and_password(api, alice):
    response = api.post("/api/token/", {"username": "alice", "password": "alice-pass-123"})

    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=alice).key}


def test_a_wrong_password_gets_no_token(api, alice):
    response = api.post("/api/token/", {"username": "alice", "password": "nope"})

    assert response.status_code == 400
    assert not Token.objects.exists()


@pytest.mark.parametrize("url", ["/api/datasets/", "/api/jobs/", "/api/models/"])
def test_unauthenticated_requests_get_401(api, url):
    response = api.get(url)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_logged_in_browser_session_works_too(client, alice):
    client.force_login(alice)

    assert client.get("/api/models/").status_code == 200


# --- Datasets ----------------------------------------------------------------------------------


@pytest.fixture
def eager():
    """Celery runs tasks in-process. Restored by hand: Celery's settings object cannot delattr."""
    from webapp.celery import app as celery_app

    saved = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = saved


def test_dataset_upload_creates_and_ingests_it(alice_api, alice, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/datasets/", {
            "name": "Shades", "file": SimpleUploadedFile("shades.zip", image_zip(), "application/zip"),
            "image_size": 8, "val_fraction": 0.25, "seed": 1,
        }, format="multipart")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Shades" and body["status"] in {"pending", "ingesting", "ready"}
    dataset = Dataset.objects.get(pk=body["id"])
    assert dataset.owner == alice
    assert dataset.options == {"image_size": 8, "val_fraction": 0.25, "seed": 1, "kind": "auto", "clip_seconds": 1.0}

    detail = alice_api.get(f"/api/datasets/{dataset.pk}/").json()
    assert detail["status"] == "ready", detail["error"]
    assert sorted(c["name"] for c in detail["classes"]) == ["bright", "dark"]
    assert detail["num_samples"] == 12 and (detail["height"], detail["width"]) == (8, 8)
    assert (detail["kind"], detail["info"]) == ("image", {})  # detected: the archive holds images


def test_dataset_upload_without_a_file_names_the_field(alice_api):
    response = alice_api.post("/api/datasets/", {"name": "Nothing"}, format="multipart")

    assert response.status_code == 400
    assert "file" in response.json()
    assert not Dataset.objects.exists()


def test_dataset_upload_with_bad_options_or_a_non_archive_names_the_fields(alice_api, settings):
    response = alice_api.post("/api/datasets/", {
        "name": "Notes", "file": SimpleUploadedFile("notes.txt", b"hello", "text/plain"), "val_fraction": 0.99,
    }, format="multipart")

    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"file", "val_fraction"}
    assert "notes.txt" in errors["file"][0]
    assert not Dataset.objects.exists()
    assert not any(settings.MEDIA_ROOT.rglob("*.*"))


def test_datasets_list_only_mine(alice_api, dataset, bob):
    Dataset.objects.create(owner=bob, name="Bob's")

    body = alice_api.get("/api/datasets/").json()
    assert [d["name"] for d in body["results"]] == ["Shades"]


def test_bob_gets_404_on_alices_dataset(bob_api, dataset):
    assert bob_api.get(f"/api/datasets/{dataset.pk}/").status_code == 404


# --- Jobs --------------------------------------------------------------------------------------


def test_job_create_queues_a_job_with_defaults_for_omitted_hyperparameters(alice_api, dataset):
    response = alice_api.post("/api/jobs/", {"dataset": dataset.pk, "arch": TINY_ARCH, "epochs": 2}, format="json")

    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.owner, job.dataset, job.status) == (dataset.owner, dataset, Job.Status.QUEUED)
    assert job.config["arch"] == TINY_ARCH and job.config["epochs"] == 2
    assert job.config["augment"] is True  # the default, even though a form would read "absent" as off
    assert job.config["ema"] == 0.0  # weight averaging: off for images
    assert response.json()["status"] == "queued"


def test_job_create_takes_multipart_too(alice_api, dataset):
    response = alice_api.post("/api/jobs/", {"dataset": dataset.pk, "lr": "0.01"}, format="multipart")

    assert response.status_code == 201, response.content
    assert Job.objects.get().config["lr"] == 0.01
    assert Job.objects.get().config["augment"] is True


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({"lr": -1}, "lr", "Must be between 1e-06 and 10."),
    ({"seed": -1}, "seed", "Must be between 0 and 2147483647."),
    ({"epochs": 0}, "epochs", "between 1 and 500"),
    ({"arch": "transformer"}, "arch", "Choose one of: seed_cnn, resnet"),
    ({"optimizer": "lion"}, "optimizer", "Choose one of: sgd, adam, adamw"),
    ({"ema": 1}, "ema", "Must be between 0 and 0.9999."),
])
def test_job_create_with_bad_hyperparameters_names_the_field_and_what_is_allowed(alice_api, dataset, payload,
                                                                                 field, words):
    response = alice_api.post("/api/jobs/", {"dataset": dataset.pk, **payload}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert words in response.json()[field][0]
    assert not Job.objects.exists()


def test_job_create_on_a_dataset_that_is_not_ready_says_so(alice_api, alice):
    pending = Dataset.objects.create(owner=alice, name="Later", status=Dataset.Status.PENDING)

    response = alice_api.post("/api/jobs/", {"dataset": pending.pk}, format="json")

    assert response.status_code == 400
    assert "not ready" in response.json()["dataset"][0]
    assert not Job.objects.exists()


def test_job_create_on_bobs_dataset_is_refused_like_a_missing_one(alice_api, bob):
    bobs = Dataset.objects.create(owner=bob, name="Bob's", status=Dataset.Status.READY)

    response = alice_api.post("/api/jobs/", {"dataset": bobs.pk}, format="json")

    assert response.status_code == 400
    assert response.json()["dataset"] == [f'Invalid pk "{bobs.pk}" - object does not exist.']
    assert not Job.objects.exists()


def test_job_get_has_status_progress_history_and_model_id(alice_api, model, job):
    Job.objects.filter(pk=job.pk).update(progress=1.0, epoch=4, step=12, total_steps=12)
    MetricPoint.objects.create(job=job, kind="step", epoch=1, step=3, train_loss=0.7, train_acc=0.5)
    MetricPoint.objects.create(job=job, kind="epoch", epoch=1, step=3, train_loss=0.6, train_acc=0.6,
                               val_loss=0.5, val_acc=0.75)

    body = alice_api.get(f"/api/jobs/{job.pk}/").json()

    assert body["status"] == "succeeded" and body["progress"] == 1.0
    assert body["model_id"] == model.pk
    assert body["dataset"] == job.dataset_id and body["config"]["arch"] == TINY_ARCH
    assert [(p["kind"], p["val_acc"]) for p in body["points"]] == [("step", None), ("epoch", 0.75)]


def test_jobs_list_has_no_points(alice_api, job):
    body = alice_api.get("/api/jobs/").json()

    assert [j["id"] for j in body["results"]] == [job.pk]
    assert "points" not in body["results"][0]


def test_cancelling_a_finished_job_is_a_409(alice_api, job):
    response = alice_api.post(f"/api/jobs/{job.pk}/cancel/")

    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_cancelling_a_queued_job_cancels_it(alice_api, dataset):
    queued = make_job(dataset, status=Job.Status.QUEUED)

    response = alice_api.post(f"/api/jobs/{queued.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    queued.refresh_from_db()
    assert queued.status == Job.Status.CANCELLED


@pytest.mark.parametrize("method,suffix", [("get", ""), ("post", "cancel/")])
def test_bob_gets_404_on_alices_job(bob_api, job, method, suffix):
    response = getattr(bob_api, method)(f"/api/jobs/{job.pk}/{suffix}")

    assert response.status_code == 404
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_staff_see_everyones_jobs(api, charlie, job):
    api.force_authenticate(charlie)

    assert api.get(f"/api/jobs/{job.pk}/").status_code == 200


# --- Models and predictions --------------------------------------------------------------------


def test_models_list_and_get(alice_api, model):
    listed = alice_api.get("/api/models/").json()
    detail = alice_api.get(f"/api/models/{model.pk}/").json()

    assert [m["id"] for m in listed["results"]] == [model.pk]
    assert detail["name"] == model.name and detail["version"] == 1
    assert detail["classes"] == ["dark", "bright"] and detail["job"] == model.job_id


def test_predict_returns_labels_with_probabilities(alice_api, model):
    response = alice_api.post(f"/api/models/{model.pk}/predict/",
                              {"file": SimpleUploadedFile("night.png", png(3), "image/png")}, format="multipart")

    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["file"]) == (model.pk, "night.png")
    assert body["predictions"][0]["label"] == "dark"
    assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert "heard" not in body  # speech models only


def test_predict_on_a_non_image_is_a_400_naming_the_file(alice_api, model):
    response = alice_api.post(f"/api/models/{model.pk}/predict/",
                              {"file": SimpleUploadedFile("notes.txt", b"hello", "text/plain")}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {"file": ["notes.txt: not an image (unknown or unsupported format)."]}


def test_predict_on_an_oversized_file_is_a_400(alice_api, model, settings):
    settings.MAX_PREDICT_BYTES = 10
    response = alice_api.post(f"/api/models/{model.pk}/predict/",
                              {"file": SimpleUploadedFile("big.png", png(0), "image/png")}, format="multipart")

    assert response.status_code == 400
    assert "big.png: the file is larger than the 10 bytes limit" in response.json()["file"][0]


@pytest.mark.parametrize("method,suffix", [("get", ""), ("post", "predict/")])
def test_bob_gets_404_on_alices_model(bob_api, model, method, suffix):
    data = {"file": SimpleUploadedFile("a.png", png(0), "image/png")} if method == "post" else None
    response = getattr(bob_api, method)(f"/api/models/{model.pk}/{suffix}", data, format="multipart")

    assert response.status_code == 404


# --- Schema and docs ---------------------------------------------------------------------------

PATHS = ["/api/token/", "/api/datasets/", "/api/datasets/{id}/", "/api/jobs/", "/api/jobs/{id}/",
         "/api/jobs/{id}/cancel/", "/api/models/", "/api/models/{id}/", "/api/models/{id}/predict/"]


def test_the_schema_is_valid_openapi_in_json_and_yaml(api):
    as_json = api.get("/api/schema/", {"format": "json"})
    as_yaml = api.get("/api/schema/")

    assert as_json.status_code == as_yaml.status_code == 200
    schema = json.loads(as_json.content)
    validate_schema(schema)
    assert yaml.safe_load(as_yaml.content) == schema
    assert set(PATHS) <= set(schema["paths"])
    assert "/ws/jobs/{id}/" in schema["info"]["description"]
    assert "drf_create_token" in schema["info"]["description"]
    job_fields = schema["components"]["schemas"]["JobCreate"]["properties"]
    assert {"dataset", "arch", "epochs", "lr", "augment"} <= set(job_fields)
    assert schema["components"]["schemas"]["ArchEnum"]["enum"] == list(ARCHITECTURES)  # image and speech networks
    assert {"DatasetStatusEnum", "JobStatusEnum"} <= set(schema["components"]["schemas"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_the_schema_describes_dataset_kinds_and_the_speech_options(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    components = schema["components"]["schemas"]
    upload = components["DatasetCreate"]["properties"]
    assert {"kind", "clip_seconds", "image_size", "val_fraction", "seed"} <= set(upload)
    assert components["UploadKindEnum"]["enum"] == ["auto", "image", "audio"]
    assert components["DatasetKindEnum"]["enum"] == ["image", "audio"]
    assert "info" in components["Dataset"]["properties"]


def test_the_docs_page_uses_only_local_assets(client):
    response = client.get(reverse("api-docs"))

    assert response.status_code == 200
    html = response.text
    assert "swagger-ui" in html
    assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", html)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static/") for a in assets if not a.startswith("data:")), assets
