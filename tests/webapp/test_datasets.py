"""Datasets: upload, ingest, the pages, delete, admin and the demo; bob never sees alice's data."""

from pathlib import Path

import numpy as np
import pytest
from django.contrib.admin.sites import site as admin_site
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image

from jobs.models import Job
from webapp.datasets import services
from webapp.datasets.models import Dataset
from webapp.datasets.services import dataset_create, dataset_ingest

pytestmark = pytest.mark.django_db

# --- Helpers ----------------------------------------------------------------------------------


def shapes_zip(tmp_path, *, per_class=4, extra=None) -> bytes:
    """Two classes of 16×16 shapes, plus extra (name, bytes) members."""
    from ml.synthetic import render_shapes, image_bytes, write_archive

    members = [(f"{kind}/{i}.png", image_bytes(img)) for kind, i, img in
               render_shapes(classes=("circle", "square"), per_class=per_class, size=16)]
    return write_archive(tmp_path / "upload.zip", members + list((extra or {}).items())).read_bytes()


def upload(name="shapes.zip", data=b"", content_type="application/zip"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def media(settings) -> list[str]:
    """Every file under MEDIA_ROOT, relative: what a refusal must not leave behind."""
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def eager(monkeypatch):
    """Celery runs tasks inline, as the worker would."""
    from webapp.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


@pytest.fixture
def ready(alice, tmp_path):
    """Alice's ingested dataset: 2 classes × 4 images of 16×16, and one undecodable file."""
    dataset = dataset_create(owner=alice, name="Shapes", options={"val_fraction": 0.25}, queue_ingest=False,
                             archive=upload(data=shapes_zip(tmp_path, extra={"square/broken.png": b"oops"})))
    dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error
    return dataset


def post_upload(client, data: bytes, *, json=False, filename="shapes.zip", **fields):
    form = {"name": "My shapes", "image_size": 32, "val_fraction": 0.25, "seed": 0,
            "archive": upload(filename, data), **fields}
    headers = {"Accept": "application/json"} if json else {}
    return client.post(reverse("datasets:upload"), form, headers=headers)


# --- Upload -----------------------------------------------------------------------------------


def test_an_upload_is_stored_then_ingested_once_the_transaction_commits(
        alice_client, alice, tmp_path, settings, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_upload(alice_client, shapes_zip(tmp_path))
    assert len(callbacks) == 1
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == reverse("datasets:detail", args=[dataset.pk])
    assert dataset.owner == alice and dataset.name == "My shapes"
    assert dataset.options == {"image_size": 32, "val_fraction": 0.25, "seed": 0, "kind": "auto", "clip_seconds": 1.0}
    assert dataset.status == Dataset.Status.READY and dataset.progress == 1.0
    assert dataset.classes == [{"name": "circle", "train": 3, "val": 1}, {"name": "square", "train": 3, "val": 1}]
    assert (dataset.num_samples, dataset.num_train, dataset.num_val) == (8, 6, 2)
    assert (dataset.height, dataset.width, dataset.channels) == (16, 16, 3)
    assert dataset.ingested_at is not None
    assert media(settings) == [f"datasets/{dataset.pk}/dataset.json", f"datasets/{dataset.pk}/images.npy",
                               f"datasets/{dataset.pk}/labels.npy", f"uploads/{alice.pk}/shapes.zip"]


def test_an_upload_from_the_page_script_gets_json_pointing_at_the_dataset_page(alice_client, tmp_path):
    response = post_upload(alice_client, shapes_zip(tmp_path), json=True)
    dataset = Dataset.objects.get()
    assert response.status_code == 201
    assert response.json() == {"id": dataset.pk, "url": reverse("datasets:detail", args=[dataset.pk])}
    assert dataset.status == Dataset.Status.PENDING  # queued on commit; this test never commits


def test_the_upload_page_has_labelled_fields_help_and_the_upload_script(alice_client):
    response = alice_client.get(reverse("datasets:upload"))
    html = response.content.decode()
    assert response.status_code == 200
    for field in ("name", "archive", "image_size", "val_fraction", "seed"):
        assert f'for="id_{field}"' in html and f'id="id_{field}_helptext"' in html
    assert "js/upload.js" in html and 'enctype="multipart/form-data"' in html


def test_a_file_that_is_not_an_archive_is_refused_at_once_naming_the_file(alice_client, settings):
    response = post_upload(alice_client, b"hello, I am a text file" * 50, filename="notes.zip")
    assert response.status_code == 400
    assert "notes.zip: The file is not a .zip, .tar or .tar.gz archive." in response.content.decode()
    assert 'id="id_archive_error"' in response.content.decode()
    assert Dataset.objects.count() == 0
    assert media(settings) == []


def test_an_upload_over_the_size_limit_is_refused_naming_the_file_and_the_limit(alice_client, tmp_path, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    response = post_upload(alice_client, shapes_zip(tmp_path), json=True, filename="big.zip")
    assert response.status_code == 400
    [message] = response.json()["errors"]["archive"]
    assert message.startswith("big.zip is ") and message.endswith("the largest upload accepted is 1000\xa0bytes.")
    assert Dataset.objects.count() == 0
    assert media(settings) == []


def oversized_post(client, settings, *, path, declared: int | None = None, json=False, **fields):
    """A multipart upload of a file well past the limit (or one that only says so in Content-Length)."""
    settings.MAX_UPLOAD_BYTES = 1000
    body = b"PK\x03\x04" + b"x" * (services.UPLOAD_OVERHEAD_BYTES + 2000)
    extra = {"CONTENT_LENGTH": str(declared)} if declared else {}
    if json:
        extra["HTTP_ACCEPT"] = "application/json"
    return client.post(path, {"name": "Huge", **fields, "archive": upload("huge.zip", body),
                              "file": upload("huge.zip", body)}, **extra)


def test_an_upload_whose_request_is_over_the_limit_is_refused_before_the_body_is_read(
        alice, settings, monkeypatch):
    from django.test import Client

    # A CSRF-checking client without a token: had anything read the body, the CSRF check would
    # have refused it with a 403 first.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    monkeypatch.setattr("webapp.datasets.views.DatasetUploadForm.is_valid", lambda self: pytest.fail("body read"))
    response = oversized_post(client, settings, path=reverse("datasets:upload"))
    html = response.content.decode()
    assert response.status_code == 413
    assert 'id="id_archive_error"' in html
    assert "the largest upload accepted is 1000\xa0bytes. Nothing was stored." in html
    assert Dataset.objects.count() == 0
    assert media(settings) == []


def test_the_upload_script_gets_the_early_refusal_as_json_on_the_archive_field(alice_client, settings):
    response = oversized_post(alice_client, settings, path=reverse("datasets:upload"), json=True,
                              declared=50 * 1024**3)  # what the request says is enough: 50 GB
    assert response.status_code == 413
    [message] = response.json()["errors"]["archive"]
    assert message.startswith("The upload is 50.0\xa0GB; the largest upload accepted is 1000\xa0bytes.")
    assert Dataset.objects.count() == 0


def test_an_upload_within_the_limit_still_needs_the_csrf_token(alice, tmp_path):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert post_upload(client, shapes_zip(tmp_path)).status_code == 403
    assert Dataset.objects.count() == 0


def test_the_api_refuses_an_upload_over_the_limit_before_reading_it(alice, settings, monkeypatch):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from webapp.api.serializers import DatasetCreateSerializer

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    monkeypatch.setattr(DatasetCreateSerializer, "is_valid", lambda *a, **k: pytest.fail("body read"))
    response = oversized_post(client, settings, path="/api/datasets/")
    assert response.status_code == 413
    [message] = response.json()["file"]
    assert "the largest upload accepted is 1000\xa0bytes. Nothing was stored." in message
    assert Dataset.objects.count() == 0
    assert media(settings) == []


def test_options_out_of_range_are_reported_on_their_own_fields(alice_client, tmp_path, settings):
    response = post_upload(alice_client, shapes_zip(tmp_path), json=True, image_size=4, val_fraction=0.9, seed=-1)
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "image_size": ["Image size must be between 8 and 512 pixels."],
        "val_fraction": ["Validation fraction must be between 0 and 0.5."],
        "seed": ["Seed must be a whole number between 0 and 4294967295."],
    }
    assert Dataset.objects.count() == 0 and media(settings) == []


def test_without_javascript_errors_are_rendered_next_to_the_fields(alice_client, tmp_path):
    response = post_upload(alice_client, shapes_zip(tmp_path), name="  ", image_size=1000)
    html = response.content.decode()
    assert response.status_code == 400
    assert 'id="id_name_error"' in html and "This field is required." in html
    assert "Image size must be between 8 and 512 pixels." in html
    assert 'name="image_size" value="1000"' in html and 'aria-invalid="true"' in html


def test_an_upload_without_a_file_names_the_archive_field(alice_client):
    response = alice_client.post(reverse("datasets:upload"), {"name": "x", "image_size": 32, "val_fraction": 0.1,
                                                               "seed": 0}, headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"archive": ["This field is required."]}


def test_the_service_checks_option_types_and_names(alice, tmp_path):
    archive = upload(data=shapes_zip(tmp_path))
    with pytest.raises(ValidationError) as err:
        dataset_create(owner=alice, name="x", archive=archive, options={"image_size": "big", "seed": True, "lr": 1})
    assert err.value.message_dict == {"options": ["Unknown option(s): lr. Choose from: image_size, val_fraction, seed, kind, "
                                                      "clip_seconds."]}
    with pytest.raises(ValidationError) as err:
        dataset_create(owner=alice, name="x" * 121, archive=archive, options={"image_size": "big", "seed": True})
    assert err.value.message_dict == {
        "name": ["The name is 121 characters long; the most is 120."],
        "image_size": ["Image size must be a whole number, not 'big'."],
        "seed": ["Seed must be a whole number, not True."],
    }
    assert Dataset.objects.count() == 0


def test_the_service_fills_in_default_options(alice, tmp_path):
    dataset = dataset_create(owner=alice, name="x", archive=upload(data=shapes_zip(tmp_path)),
                             options={"image_size": "48"}, queue_ingest=False)
    assert dataset.options == {"image_size": 48, "val_fraction": 0.1, "seed": 0, "kind": "auto", "clip_seconds": 1.0}


# --- Ingest -----------------------------------------------------------------------------------


def test_a_refused_archive_fails_the_dataset_with_a_message_naming_the_problem(alice, tmp_path, settings):
    from ml.synthetic import image_bytes, write_archive

    data = write_archive(tmp_path / "one.zip", {"cat/1.png": image_bytes(np.zeros((8, 8), np.uint8)),
                                                "cat/2.png": image_bytes(np.ones((8, 8), np.uint8))}).read_bytes()
    dataset = dataset_create(owner=alice, name="Cats", archive=upload(data=data), options={}, queue_ingest=False)
    dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("Only one class was found ('cat')")
    assert (dataset.num_samples, dataset.classes) == (0, [])
    assert media(settings) == [f"uploads/{alice.pk}/shapes.zip"]  # the archive stays until deleted


def test_an_unexpected_error_fails_the_dataset_without_raising_in_the_worker(alice, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "ingest_image_archive", boom)
    dataset = dataset_create(owner=alice, name="x", archive=upload(data=shapes_zip(tmp_path)), options={},
                             queue_ingest=False)
    dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("The archive could not be ingested because of an internal error.")
    assert "a bug" not in dataset.error


def test_a_redelivered_task_for_a_ready_or_deleted_dataset_does_nothing(ready, monkeypatch):
    monkeypatch.setattr(services, "ingest_image_archive", lambda *a, **k: pytest.fail("ingested twice"))
    dataset_ingest(dataset_id=ready.pk)
    dataset_ingest(dataset_id=987654)  # deleted before the worker got to it
    ready.refresh_from_db()
    assert ready.status == Dataset.Status.READY


def test_a_dataset_deleted_while_ingesting_leaves_no_arrays_behind(alice, tmp_path, settings, monkeypatch):
    dataset = dataset_create(owner=alice, name="x", archive=upload(data=shapes_zip(tmp_path)), options={},
                             queue_ingest=False)
    real = services.ingest_image_archive

    def ingest_then_vanish(*args, **kwargs):
        report = real(*args, **kwargs)
        Dataset.objects.filter(pk=dataset.pk).delete()  # the user deleted it meanwhile
        return report

    monkeypatch.setattr(services, "ingest_image_archive", ingest_then_vanish)
    dataset_ingest(dataset_id=dataset.pk)
    assert not any(name.startswith("datasets/") for name in media(settings))


def test_ingest_progress_is_written_to_the_row_while_it_runs(alice, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(services, "PROGRESS_INTERVAL_S", 0.0)
    dataset = dataset_create(owner=alice, name="x", archive=upload(data=shapes_zip(tmp_path)), options={},
                             queue_ingest=False)
    dataset_ingest(dataset_id=dataset.pk,
                   progress=lambda done, total: seen.append(Dataset.objects.get(pk=dataset.pk).progress))
    assert seen[0] == 0.0 and 0 < max(seen) < 1  # the row trails the callback by one file
    dataset.refresh_from_db()
    assert dataset.progress == 1.0


# --- Pages ------------------------------------------------------------------------------------


def test_the_list_has_an_empty_state_saying_what_to_do_next(alice_client):
    response = alice_client.get(reverse("datasets:list"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "No datasets yet — upload one or use the demo." in html
    assert reverse("datasets:upload") in html and reverse("datasets:demo") in html


def test_the_list_shows_my_datasets_and_not_other_peoples(alice_client, ready, bob, tmp_path):
    dataset_create(owner=bob, name="Bob's secret", archive=upload(data=shapes_zip(tmp_path)), options={},
                   queue_ingest=False)
    html = alice_client.get(reverse("datasets:list")).content.decode()
    assert reverse("datasets:detail", args=[ready.pk]) in html and "Shapes" in html
    assert "Bob&#x27;s secret" not in html


def test_staff_see_everyones_datasets_with_their_owner(client, charlie, ready):
    client.force_login(charlie)
    html = client.get(reverse("datasets:list")).content.decode()
    assert "Shapes" in html and "<td>alice</td>" in html
    assert client.get(reverse("datasets:detail", args=[ready.pk])).status_code == 200


def test_the_dataset_page_shows_classes_samples_skipped_files_and_a_train_button(alice_client, ready):
    response = alice_client.get(reverse("datasets:detail", args=[ready.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert f'href="{reverse("jobs:new")}?dataset={ready.pk}"' in html
    assert 'id="class-table"' in html and "<th scope=\"row\">circle</th>" in html
    assert "vendor/chart.js/chart.umd.min.js" in html and 'id="class-chart-data"' in html
    assert html.count(reverse("datasets:sample", args=[ready.pk, 0]).rsplit("/", 1)[0] + "/") == 8
    assert "square/broken.png" in html and "not an image (unknown or unsupported format)" in html
    assert "16×16 px" in html and "3 (RGB)" in html


def test_a_failed_dataset_shows_the_error_naming_the_file(alice, alice_client, tmp_path):
    dataset = dataset_create(owner=alice, name="Bad", archive=upload(data=shapes_zip(tmp_path)), options={},
                             queue_ingest=False)
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.FAILED, error="Refused: the archive member '../evil.png' points outside the archive (..).")
    html = alice_client.get(reverse("datasets:detail", args=[dataset.pk])).content.decode()
    assert "points outside the archive" in html and "&#x27;../evil.png&#x27;" in html
    assert "Train a model" not in html


def test_an_ingesting_dataset_shows_a_progress_bar_that_polls_the_status(alice, alice_client, tmp_path):
    dataset = dataset_create(owner=alice, name="Busy", archive=upload(data=shapes_zip(tmp_path)), options={},
                             queue_ingest=False)
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.INGESTING, progress=0.42)
    html = alice_client.get(reverse("datasets:detail", args=[dataset.pk])).content.decode()
    assert 'id="ingest-progress" value="0.420"' in html and "42 %" in html
    assert f'data-status-url="{reverse("datasets:status", args=[dataset.pk])}"' in html


def test_the_status_is_json_for_the_progress_bar(alice_client, ready):
    response = alice_client.get(reverse("datasets:status", args=[ready.pk]))
    assert response.status_code == 200
    assert response.json() == {"id": ready.pk, "status": "ready", "status_display": "Ready", "phase": "",
                               "phase_display": "", "progress": 1.0, "error": "", "num_samples": 8}


def test_a_sample_is_a_crisp_upscaled_png_of_the_stored_pixels(alice_client, ready, settings):
    response = alice_client.get(reverse("datasets:sample", args=[ready.pk, 3]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = np.asarray(Image.open(__import__("io").BytesIO(response.content)))
    stored = np.load(Path(settings.MEDIA_ROOT) / ready.storage_dir / "images.npy")[3]
    assert image.shape == (96, 96, 3)  # 16 px × 6
    assert np.array_equal(image[::6, ::6], stored)


def test_a_sample_past_the_end_is_404(alice_client, ready):
    assert alice_client.get(reverse("datasets:sample", args=[ready.pk, 8])).status_code == 404


def test_delete_removes_the_row_the_archive_and_the_arrays(alice_client, ready, settings):
    assert media(settings)
    response = alice_client.post(reverse("datasets:delete", args=[ready.pk]))
    assert response.status_code == 302 and response.url == reverse("datasets:list")
    assert not Dataset.objects.exists()
    assert media(settings) == []
    assert "Deleted dataset Shapes." in alice_client.get(response.url).content.decode()


def test_delete_needs_a_post(alice_client, ready):
    assert alice_client.get(reverse("datasets:delete", args=[ready.pk])).status_code == 405
    assert Dataset.objects.filter(pk=ready.pk).exists()


def test_a_dataset_in_use_by_a_running_job_is_not_deleted(alice, alice_client, ready, settings):
    Job.objects.create(owner=alice, dataset=ready, config={}, status=Job.Status.RUNNING)
    files = media(settings)
    response = alice_client.post(reverse("datasets:delete", args=[ready.pk]), follow=True)
    assert "used by 1 training job that is queued or running; cancel it first" in response.content.decode()
    assert Dataset.objects.filter(pk=ready.pk).exists() and media(settings) == files


@pytest.mark.parametrize("url_name, method, args", [
    ("datasets:detail", "get", ()),
    ("datasets:sample", "get", (0,)),
    ("datasets:status", "get", ()),
    ("datasets:delete", "post", ()),
])
def test_bob_gets_404_for_alices_dataset(bob_client, ready, settings, url_name, method, args):
    files = media(settings)
    response = getattr(bob_client, method)(reverse(url_name, args=[ready.pk, *args]))
    assert response.status_code == 404
    assert Dataset.objects.filter(pk=ready.pk).exists() and media(settings) == files


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(reverse("datasets:list"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --- Admin, demo --------------------------------------------------------------------------------


def test_deleting_in_the_admin_removes_the_files_too(ready, settings, rf, charlie):
    admin = admin_site._registry[Dataset]
    admin.delete_queryset(rf.post("/"), Dataset.objects.all())
    assert not Dataset.objects.exists() and media(settings) == []


@pytest.fixture
def small_demo(monkeypatch):
    monkeypatch.setitem(services.DEMO_SHAPES, "per_class", 3)


def test_create_demo_makes_the_shapes_dataset_once(charlie, small_demo, capsys, django_user_model):
    call_command("create_demo", "--owner", "charlie", "--only", "shapes")  # both: test_datasets_audio.py
    dataset = Dataset.objects.get()
    assert (dataset.owner, dataset.name, dataset.status) == (charlie, "Shapes (demo)", Dataset.Status.READY)
    assert [c["name"] for c in dataset.classes] == ["circle", "cross", "square", "star", "triangle"]
    assert (dataset.num_samples, dataset.height, dataset.channels) == (15, 32, 3)
    assert "Shapes (demo) is ready: 15 images in 5 classes" in capsys.readouterr().out

    call_command("create_demo", "--owner", "charlie", "--only", "shapes")
    assert Dataset.objects.count() == 1
    assert "already has Shapes (demo)" in capsys.readouterr().out


def test_create_demo_names_a_missing_owner(db):
    with pytest.raises(CommandError, match="There is no user 'nobody'"):
        call_command("create_demo", "--owner", "nobody")


def test_the_demo_button_creates_the_demo_for_me_once(alice_client, alice, small_demo):
    response = alice_client.post(reverse("datasets:demo"))
    dataset = Dataset.objects.get()
    assert dataset.owner == alice and dataset.name == "Shapes (demo)"
    assert response.status_code == 302 and response.url == reverse("datasets:detail", args=[dataset.pk])
    again = alice_client.post(reverse("datasets:demo"), follow=True)
    assert Dataset.objects.count() == 1 and "You already have Shapes (demo)." in again.content.decode()


def test_the_demo_button_only_makes_the_row_and_the_worker_generates_and_ingests_it(
        alice_client, alice, small_demo, settings, eager, monkeypatch, django_capture_on_commit_callbacks):
    real = services.write_shapes_archive
    monkeypatch.setattr(services, "write_shapes_archive", lambda *a, **k: pytest.fail("generated in the request"))
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(reverse("datasets:demo"))

    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == reverse("datasets:detail", args=[dataset.pk])
    assert (dataset.status, dataset.archive.name, dataset.kind) == (Dataset.Status.PENDING, "", "image")
    assert dataset.options["demo"] == "shapes" and dataset.options["image_size"] == 32
    assert media(settings) == [] and len(callbacks) == 1  # the ingest is queued once the row is committed
    page = alice_client.get(response.url).content.decode()
    assert "Waiting for a worker to generate and ingest the demo" in page

    monkeypatch.setattr(services, "write_shapes_archive", real)
    callbacks[0]()  # the queued task, run here (eager) as a worker would
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (dataset.num_samples, len(dataset.classes), dataset.attempts) == (15, 5, 1)
    archive = f"uploads/{alice.pk}/shapes-demo.zip"
    assert dataset.archive.name == archive  # stored like an upload
    assert media(settings) == sorted([archive, *(f"datasets/{dataset.pk}/{name}" for name in (
        "dataset.json", "images.npy", "labels.npy"))])  # no hidden work folder left
    assert "Created" in alice_client.get(response.url).content.decode()


def left_ingesting(dataset: Dataset, **fields) -> None:
    """As a worker on another machine leaves it when it is killed (a stale heartbeat)."""
    from datetime import timedelta

    from django.utils import timezone

    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.INGESTING, attempts=1, lease="dead-lease", claimed_by="another-host:1",
        heartbeat_at=timezone.now() - timedelta(hours=1), progress=0.3, **fields)


def test_a_demo_whose_worker_was_killed_mid_generation_is_generated_afresh_by_the_next(alice, small_demo, settings):
    dataset, created = services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False)
    left_ingesting(dataset)
    half_written = Path(settings.MEDIA_ROOT) / "datasets" / f".{dataset.pk}.killed.tmp" / "shapes-demo.zip"
    half_written.parent.mkdir(parents=True)
    half_written.write_bytes(b"PK\x03\x04 cut short")

    dataset_ingest(dataset_id=dataset.pk)  # the redelivered task
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (dataset.attempts, dataset.num_samples, dataset.lease) == (2, 15, "")
    assert not half_written.parent.exists()


def test_a_demo_whose_worker_was_killed_after_storing_the_archive_is_not_generated_twice(
        alice, small_demo, settings, monkeypatch):
    dataset, _ = services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False)

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(services, "ingest_image_archive", killed)
    with pytest.raises(Killed):
        dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    archive = dataset.archive.name
    assert dataset.status == Dataset.Status.INGESTING and archive == f"uploads/{alice.pk}/shapes-demo.zip"
    assert dataset.progress == 0.5  # generation is the first half of the bar

    left_ingesting(dataset)
    monkeypatch.undo()
    monkeypatch.setattr(services, "write_shapes_archive", lambda *a, **k: pytest.fail("generated twice"))
    dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY and dataset.attempts == 2 and dataset.archive.name == archive


def test_a_demo_generation_that_lost_its_lease_stops_and_stores_nothing(alice, small_demo, settings, monkeypatch):
    monkeypatch.setattr(services, "PROGRESS_INTERVAL_S", 0.0)
    dataset, _ = services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False)

    def taken_over(done, total):  # the reaper and another worker took it meanwhile
        Dataset.objects.filter(pk=dataset.pk).update(lease="someone-else")

    dataset_ingest(dataset_id=dataset.pk, progress=taken_over)
    dataset.refresh_from_db()
    assert (dataset.status, dataset.lease, dataset.archive.name) == (Dataset.Status.INGESTING, "someone-else", "")
    assert media(settings) == []


def test_a_failed_demo_is_replaced_by_a_new_one_and_a_pending_one_is_kept(alice, alice_client, small_demo):
    failed, _ = services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False)
    Dataset.objects.filter(pk=failed.pk).update(status=Dataset.Status.FAILED, error="espeak-ng went away")
    page = alice_client.get(reverse("datasets:detail", args=[failed.pk])).content.decode()
    assert "espeak-ng went away" in page and "Try the demo again" in page

    fresh, created = services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False)
    assert created and fresh.pk != failed.pk and list(Dataset.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert services.dataset_create_demo(owner=alice, which="shapes", queue_ingest=False) == (fresh, False)
    with pytest.raises(ValueError, match="Unknown demo 'cats'. Choose one of: shapes, digits"):
        services.dataset_create_demo(owner=alice, which="cats")


def test_the_admin_lists_and_shows_datasets_read_only(client, charlie, ready):
    client.force_login(charlie)
    listing = client.get(reverse("admin:datasets_dataset_changelist"), {"q": "alice"})
    assert listing.status_code == 200 and "Shapes" in listing.content.decode()
    page = client.get(reverse("admin:datasets_dataset_change", args=[ready.pk]))
    assert page.status_code == 200
    assert 'name="name"' in page.content.decode() and 'name="status"' not in page.content.decode()


def test_an_unreachable_task_queue_fails_the_dataset_instead_of_the_request(
        alice_client, tmp_path, monkeypatch, django_capture_on_commit_callbacks):
    from webapp.datasets.tasks import ingest_dataset

    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(ingest_dataset, "apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_upload(alice_client, shapes_zip(tmp_path))
    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert dataset.status == Dataset.Status.FAILED and "could not be queued for ingest" in dataset.error
