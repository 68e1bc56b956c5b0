"""Batch prediction: an archive of files through one model in the background, into a CSV.

Celery runs eagerly here (the task is queued on commit, so the commit callbacks are executed);
tests/test_batch_chain.py runs it in a real worker.
"""

import csv
import io
import tarfile
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.audio_fixtures import CLASSES as SOUNDS
from tests.audio_fixtures import wav_bytes
from tests.webapp.test_registry import png, train_result  # noqa: F401 - shared session fixture
from tests.webapp.test_registry_audio import clear_clip, speech_result  # noqa: F401 - shared session fixture
from webapp.registry import batch as batches
from webapp.registry.batch import CSV_COLUMNS, batch_cancel, batch_create, batch_delete, batch_run
from webapp.registry.models import BatchPrediction, TrainedModel
from webapp.registry.services import model_directory, prediction_create

pytestmark = pytest.mark.django_db

Status = BatchPrediction.Status
PER_CLASS = 150  # 300 images: ten chunks, so progress is written and files are batched
# Files that cannot be predicted: each keeps a row with its reason.
BAD_IMAGES = {
    "odd/broken.png": b"\x89PNG\r\n\x1a\nnot really",
    "odd/empty.jpg": b"",
    "odd/notes.txt": b"hello",
}
# System litter: no row at all.
LITTER = {"__MACOSX/dark/._0.png": b"\x00\x05\x16\x07", "dark/.DS_Store": b"\x00", "Thumbs.db": b"\x00"}


def store_model(result, owner, *, published: bool = False) -> TrainedModel:
    """A registered model without the registration's extras (report, exports): the row and the files."""
    from ml import save_model

    kind = "audio" if result.input_spec.get("kind") == "audio" else "image"
    model = TrainedModel.objects.create(owner=owner, name=f"{kind} model", arch=result.config.arch,
                                        classes=list(result.classes), input_spec=dict(result.input_spec),
                                        published=published)
    save_model(result, model_directory(model))
    return model


@pytest.fixture
def image_model(alice, train_result):  # noqa: F811 - the fixture
    return store_model(train_result, alice)


@pytest.fixture
def eager(monkeypatch):
    """Celery runs tasks inline, as the worker would."""
    from webapp.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


def shade(i: int) -> tuple[str, bytes]:
    """Image i of the archive: dark or bright, of varied size and mode (the model squashes each to 8×8 grey)."""
    label = "dark" if i % 2 == 0 else "bright"
    value = 25 + i % 20 if label == "dark" else 215 + i % 25
    size = (8 + i % 5, 8 + i % 3)
    if i % 3 == 0:  # some RGB JPEGs among the PNGs
        buffer = io.BytesIO()
        Image.new("RGB", size, (value,) * 3).save(buffer, "JPEG")
        return f"{label}/{i:03d}.jpg", buffer.getvalue()
    return f"{label}/{i:03d}.png", png(value, size=size)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def image_members(n: int = 2 * PER_CLASS, *, bad: bool = True) -> dict[str, bytes]:
    members = dict(shade(i) for i in range(n))
    if bad:
        members.update(BAD_IMAGES)
        members.update(LITTER)
    return members


def upload(data: bytes, name: str = "photos.zip") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/zip")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def csv_rows(content: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def media_files(settings) -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "models" not in p.parts)


def run_batch(user, model, members: dict[str, bytes], capture, name: str = "photos.zip") -> BatchPrediction:
    with capture(execute=True):
        batch = batch_create(user=user, model=model, upload=upload(zip_bytes(members), name))
    batch.refresh_from_db()
    return batch


# --- The CSV ------------------------------------------------------------------------------------


def test_a_batch_of_300_images_has_one_correct_row_per_file(
        alice, image_model, eager, django_capture_on_commit_callbacks):
    members = image_members()
    batch = run_batch(alice, image_model, members, django_capture_on_commit_callbacks)

    assert batch.status == Status.SUCCEEDED, batch.error
    real = {name: data for name, data in members.items() if name not in LITTER}
    assert batch.total == batch.done == len(real) == 2 * PER_CLASS + len(BAD_IMAGES)
    rows = read_csv(batches.batch_csv_path(batch))
    assert [r["file"] for r in rows] == list(real)  # every file once, in archive order, no litter
    for row in rows:
        if row["file"] in BAD_IMAGES:
            continue
        expected = prediction_create(model=image_model, data=real[row["file"]], filename=row["file"])
        top5 = [item.split(":") for item in row["top5"].split(";")]
        assert row["error"] == ""
        assert row["top1"] == expected[0]["label"] == top5[0][0]
        assert float(row["probability"]) == pytest.approx(expected[0]["probability"], abs=1e-5)
        assert [label for label, _ in top5] == [p["label"] for p in expected]
        assert [float(p) for _, p in top5] == pytest.approx([p["probability"] for p in expected], abs=1e-4)
    right = sum(row["top1"] == row["file"].split("/")[0] for row in rows if row["file"] not in BAD_IMAGES)
    assert right >= 0.95 * 2 * PER_CLASS  # the model was trained on exactly this task

    skipped = {row["file"]: row for row in rows if row["error"]}
    assert set(skipped) == set(BAD_IMAGES)
    assert all(row["top1"] == row["probability"] == row["top5"] == "" for row in skipped.values())
    assert skipped["odd/empty.jpg"]["error"] == "the file is empty."
    assert skipped["odd/notes.txt"]["error"].startswith("not one of the model's images: .txt files are not used")
    assert "image" in skipped["odd/broken.png"]["error"]  # the decoder's own words
    assert batch.skipped == [{"file": row["file"], "reason": row["error"]} for row in skipped.values()]
    assert not (batches.batch_directory(batch) / batches.ARCHIVE).exists()  # the upload goes once it is done


def test_a_speech_model_predicts_a_batch_of_recordings(
        alice, speech_result, eager, django_capture_on_commit_callbacks):  # noqa: F811 - the fixture
    model = store_model(speech_result, alice)
    members = {f"clips/{label}-{i}.wav": wav_bytes(clear_clip(label, seconds=0.8 + 0.2 * i))
               for i in range(3) for label in SOUNDS}
    members["clips/8k.wav"] = wav_bytes(clear_clip("low", sample_rate=8000), sample_rate=8000)  # resampled
    members["clips/broken.wav"] = b"RIFF\x00\x00\x00\x00WAVEjunk"
    members["clips/cover.png"] = png(100)

    batch = run_batch(alice, model, members, django_capture_on_commit_callbacks, name="clips.zip")

    assert batch.status == Status.SUCCEEDED, batch.error
    rows = {row["file"]: row for row in read_csv(batches.batch_csv_path(batch))}
    assert list(rows) == list(members)
    for name, data in members.items():
        if name.endswith(("broken.wav", ".png")):
            continue
        expected = prediction_create(model=model, data=data, filename=name)
        assert rows[name]["top1"] == expected[0]["label"]
        assert float(rows[name]["probability"]) == pytest.approx(expected[0]["probability"], abs=1e-4)
        if "-" in name:
            assert rows[name]["top1"] == name.split("/")[1].split("-")[0]
    assert rows["clips/broken.wav"]["error"] and not rows["clips/broken.wav"]["top1"]
    assert rows["clips/cover.png"]["error"].startswith("not one of the model's audio clips: .png files are not used")
    assert {s["file"] for s in batch.skipped} == {"clips/broken.wav", "clips/cover.png"}


def test_a_tar_gz_archive_works_like_a_zip(alice, image_model, eager, django_capture_on_commit_callbacks):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in image_members(6, bad=False).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with django_capture_on_commit_callbacks(execute=True):
        batch = batch_create(user=alice, model=image_model, upload=upload(buffer.getvalue(), "photos.tar.gz"))
    batch.refresh_from_db()

    assert batch.status == Status.SUCCEEDED and batch.done == batch.total == 6
    assert len(read_csv(batches.batch_csv_path(batch))) == 6


def test_an_archive_of_files_that_all_fail_ends_failed_with_the_csv_of_reasons(
        alice, image_model, eager, django_capture_on_commit_callbacks):
    batch = run_batch(alice, image_model, {"a.png": b"\x89PNGnope", "b.png": b"GIF89a"},
                      django_capture_on_commit_callbacks)

    assert batch.status == Status.FAILED
    assert batch.error == "None of the 2 files could be predicted; the CSV gives each reason."
    assert [r["file"] for r in read_csv(batches.batch_csv_path(batch))] == ["a.png", "b.png"]


# --- Refusals at upload ------------------------------------------------------------------------


def empty_zip() -> bytes:
    return zip_bytes({})


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("photos.zip", png(10), "photos.zip: The file is a PNG image, not a .zip, .tar or .tar.gz archive."),
    ("photos.zip", b"", "photos.zip: The file is empty; upload a .zip, .tar or .tar.gz archive."),
    ("photos.zip", empty_zip(), "photos.zip: The archive is empty: it contains no files."),
    ("photos.zip", zip_bytes(LITTER), "photos.zip: the archive holds only system files"),
    ("photos.zip", zip_bytes({"a.txt": b"x", "b/c.wav": b"RIFF"}),
     "photos.zip: none of its 2 files is one of the model's images (JPEG, PNG, BMP, WebP, GIF); for example 'a.txt'."),
    ("photos.zip", b"PK\x03\x04" + b"\x00" * 40, "photos.zip: The zip archive is corrupt"),
])
def test_bad_archives_are_refused_with_the_reason_and_nothing_is_stored(
        alice_client, image_model, settings, name, data, reason, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = alice_client.post(reverse("models:batch_new", args=[image_model.pk]),
                                     {"archive": upload(data, name)}, headers={"Accept": "application/json"})

    assert response.status_code == 400
    message = response.json()["errors"]["archive"][0]
    assert message.startswith(reason), message
    assert not BatchPrediction.objects.exists() and not callbacks
    assert media_files(settings) == []


def test_a_refused_upload_without_javascript_says_why_on_the_model_page(alice_client, image_model):
    response = alice_client.post(reverse("models:batch_new", args=[image_model.pk]),
                                 {"archive": upload(b"plain text", "notes.zip")}, follow=True)

    assert response.redirect_chain[-1][0] == reverse("models:detail", args=[image_model.pk]) + "#batch"
    assert "notes.zip: The file is not a .zip, .tar or .tar.gz archive." in response.content.decode()
    assert not BatchPrediction.objects.exists()


def test_an_upload_over_the_limit_is_refused_before_it_is_read(alice_client, image_model, settings):
    settings.MAX_UPLOAD_BYTES = 1024
    response = alice_client.post(reverse("models:batch_new", args=[image_model.pk]),
                                 {"archive": upload(b"x" * 200_000)}, headers={"Accept": "application/json"})

    assert response.status_code == 413
    assert "the largest upload accepted is 1.0 KB" in response.json()["errors"]["archive"][0].replace("\xa0", " ")
    assert not BatchPrediction.objects.exists()


# --- Pages --------------------------------------------------------------------------------------


def test_the_page_upload_queues_a_batch_whose_page_shows_progress_then_the_csv(
        alice_client, alice, image_model, eager, django_capture_on_commit_callbacks, monkeypatch):
    queued = []
    # Held: the page is seen while it waits.
    monkeypatch.setattr(batches, "_queue", lambda batch_id, queue: queued.append(batch_id))
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("models:batch_new", args=[image_model.pk]),
                                     {"archive": upload(zip_bytes(image_members(40)))},
                                     headers={"Accept": "application/json"})
    assert response.status_code == 201
    batch = BatchPrediction.objects.get()
    assert response.json() == {"id": batch.pk, "url": reverse("models:batch", args=[batch.pk])}
    assert (batch.owner, batch.model, batch.status, batch.total, batch.filename) == (
        alice, image_model, Status.QUEUED, 43, "photos.zip")
    assert queued == [batch.pk]

    page = alice_client.get(response.json()["url"]).content.decode()
    assert 'id="batch-progress" value="0" max="43"' in page and "Waiting for a worker" in page
    assert 'id="batch-csv"' not in page
    status = alice_client.get(reverse("models:batch_status", args=[batch.pk])).json()
    assert (status["status"], status["done"], status["total"], status["finished"]) == ("queued", 0, 43, False)
    assert alice_client.get(reverse("models:batch_csv", args=[batch.pk])).status_code == 404  # not yet

    batch_run(batch_id=batch.pk)

    status = alice_client.get(reverse("models:batch_status", args=[batch.pk])).json()
    assert (status["status"], status["done"], status["total"], status["skipped"], status["finished"]) == (
        "succeeded", 43, 43, 3, True)
    page = alice_client.get(reverse("models:batch", args=[batch.pk])).content.decode()
    assert 'id="batch-csv"' in page and "odd/notes.txt" in page and 'id="batch-progress"' not in page
    download = alice_client.get(reverse("models:batch_csv", args=[batch.pk]))
    assert download.status_code == 200 and download["Content-Type"] == "text/csv"
    assert 'filename="photos-predictions.csv"' in download["Content-Disposition"]
    assert len(csv_rows(b"".join(download.streaming_content))) == 43

    model_page = alice_client.get(reverse("models:detail", args=[image_model.pk])).content.decode()
    assert "Predict a whole archive" in model_page and reverse("models:batch", args=[batch.pk]) in model_page
    assert reverse("models:batch_csv", args=[batch.pk]) in model_page


def test_cancel_and_delete_from_the_page(alice_client, alice, image_model, settings, monkeypatch,
                                         django_capture_on_commit_callbacks):
    monkeypatch.setattr(batches, "_queue", lambda batch_id, queue: None)
    with django_capture_on_commit_callbacks(execute=True):
        batch = batch_create(user=alice, model=image_model, upload=upload(zip_bytes(image_members(4))))

    response = alice_client.post(reverse("models:batch_cancel", args=[batch.pk]), follow=True)
    batch.refresh_from_db()
    assert batch.status == Status.CANCELLED and "Cancelled." in response.content.decode()
    batch_run(batch_id=batch.pk)  # the task arrives after the cancel: nothing happens
    batch.refresh_from_db()
    assert batch.status == Status.CANCELLED and batches.batch_csv_path(batch) is None

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("models:batch_delete", args=[batch.pk]))
    assert response.status_code == 302 and not BatchPrediction.objects.exists()
    assert media_files(settings) == []


def test_another_user_gets_404_on_the_page_status_csv_cancel_delete_and_the_api(
        alice, bob, bob_client, image_model, eager, django_capture_on_commit_callbacks):
    batch = run_batch(alice, image_model, image_members(4), django_capture_on_commit_callbacks)
    assert batch.status == Status.SUCCEEDED
    for name in ("batch", "batch_status", "batch_csv"):
        assert bob_client.get(reverse(f"models:{name}", args=[batch.pk])).status_code == 404, name
    for name in ("batch_cancel", "batch_delete"):
        assert bob_client.post(reverse(f"models:{name}", args=[batch.pk])).status_code == 404, name
    api = token_client(bob)
    for path in (f"/api/batches/{batch.pk}/", f"/api/batches/{batch.pk}/csv/"):
        assert api.get(path).status_code == 404, path
    assert api.post(f"/api/batches/{batch.pk}/cancel/").status_code == 404
    assert api.delete(f"/api/batches/{batch.pk}/").status_code == 404
    assert api.get("/api/batches/").json()["results"] == []
    model_page = bob_client.get(reverse("models:detail", args=[image_model.pk]))
    assert model_page.status_code == 404  # a private model: bob cannot batch-predict with it either
    assert bob_client.post(reverse("models:batch_new", args=[image_model.pk]),
                           {"archive": upload(zip_bytes(image_members(2)))}).status_code == 404
    assert api.post(f"/api/models/{image_model.pk}/batches/",
                    {"archive": upload(zip_bytes(image_members(2)))}, format="multipart").status_code == 404
    batch.refresh_from_db()
    assert BatchPrediction.objects.count() == 1 and batch.status == Status.SUCCEEDED


def test_a_published_model_takes_batches_from_anyone_and_they_are_theirs(
        alice, bob, bob_client, train_result, eager,  # noqa: F811 - the fixture
        django_capture_on_commit_callbacks):
    shared = store_model(train_result, alice, published=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = bob_client.post(reverse("models:batch_new", args=[shared.pk]),
                                   {"archive": upload(zip_bytes(image_members(4)))})
    batch = BatchPrediction.objects.get()
    assert response.status_code == 302 and batch.owner == bob and batch.status == Status.SUCCEEDED
    assert bob_client.get(reverse("models:batch_csv", args=[batch.pk])).status_code == 200
    # Alice owns the model, not bob's batch: it is not hers to see, nor listed on her model page.
    alice_client = Client()
    alice_client.force_login(alice)
    assert alice_client.get(reverse("models:batch", args=[batch.pk])).status_code == 404
    assert reverse("models:batch", args=[batch.pk]) not in alice_client.get(
        reverse("models:detail", args=[shared.pk])).content.decode()


def test_deleting_the_model_or_the_user_deletes_their_batches_with_the_files(
        alice, bob, train_result, settings, eager, django_capture_on_commit_callbacks):  # noqa: F811 - the fixture
    from webapp.accounts.services import user_delete
    from webapp.registry.services import model_delete

    shared = store_model(train_result, alice, published=True)
    bobs_model = store_model(train_result, bob)
    on_alices = run_batch(bob, shared, image_members(2), django_capture_on_commit_callbacks)
    on_his = run_batch(bob, bobs_model, image_members(2), django_capture_on_commit_callbacks)
    assert batches.batch_csv_path(on_alices) and batches.batch_csv_path(on_his)

    with django_capture_on_commit_callbacks(execute=True):
        model_delete(model=shared)  # bob's batch on it goes too, files and all
    assert list(BatchPrediction.objects.all()) == [on_his]
    assert not batches.batch_directory(on_alices).exists()

    with django_capture_on_commit_callbacks(execute=True):
        user_delete(user=bob)
    assert not BatchPrediction.objects.exists() and media_files(settings) == []


# --- The run: cancel, redelivery, failures --------------------------------------------------------


def queued_batch(user, model, members, monkeypatch, capture) -> BatchPrediction:
    monkeypatch.setattr(batches, "_queue", lambda batch_id, queue: None)
    with capture(execute=True):
        return batch_create(user=user, model=model, upload=upload(zip_bytes(members)))


def on_chunk(monkeypatch, action) -> None:
    """Call `action(number)` as the run starts each chunk (1-based): someone acting mid-run. Progress
    is written after every chunk here, so the run notices at the end of that chunk."""
    monkeypatch.setattr(batches, "PROGRESS_INTERVAL_S", 0.0)
    real_chunk, chunks = batches._predict_chunk, []

    def chunk(*args):
        chunks.append(1)
        action(len(chunks))
        return real_chunk(*args)

    monkeypatch.setattr(batches, "_predict_chunk", chunk)


def test_a_cancel_during_the_run_stops_it_and_keeps_the_rows_done(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(), monkeypatch, django_capture_on_commit_callbacks)
    # The user presses Cancel while the second chunk is predicted.
    on_chunk(monkeypatch, lambda n: n == 2 and batch_cancel(batch=BatchPrediction.objects.get(pk=batch.pk)))
    batch_run(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Status.CANCELLED and batch.finished_at is not None
    assert batch.done == 2 * batches.CHUNK < batch.total
    assert len(read_csv(batches.batch_csv_path(batch))) == batch.done
    assert sorted(p.name for p in batches.batch_directory(batch).iterdir()) == ["predictions.csv"]
    with pytest.raises(batches.BatchStateError, match="already cancelled"):
        batch_cancel(batch=batch)


def test_progress_is_written_while_it_runs(alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(), monkeypatch, django_capture_on_commit_callbacks)
    seen = []
    on_chunk(monkeypatch, lambda n: seen.append(BatchPrediction.objects.values_list("status", "done").get(pk=batch.pk)))
    batch_run(batch_id=batch.pk)

    assert seen[0] == (Status.RUNNING, 0)
    assert [done for _, done in seen] == [i * batches.CHUNK for i in range(len(seen))]  # after every chunk here
    batch.refresh_from_db()
    assert (batch.status, batch.done) == (Status.SUCCEEDED, batch.total)


def test_a_redelivered_task_starts_over_and_a_finished_batch_is_left_alone(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(40), monkeypatch, django_capture_on_commit_callbacks)
    # A worker died mid-run: RUNNING, half done, its partial CSV left behind.
    dead_start = timezone.now() - timedelta(minutes=5)
    BatchPrediction.objects.filter(pk=batch.pk).update(status=Status.RUNNING, started_at=dead_start, done=20,
                                                       skipped=[{"file": "x", "reason": "y"}])
    stale = batches.batch_directory(batch) / f"predictions.csv.{dead_start.timestamp():.6f}.part"
    stale.write_text("file,top1\nhalf,done\n")

    batch_run(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED and batch.started_at > dead_start
    assert batch.done == batch.total == 43 and len(batch.skipped) == 3
    first = batches.batch_csv_path(batch).read_bytes()
    assert len(csv_rows(first)) == 43 and not stale.exists()

    batch_run(batch_id=batch.pk)  # delivered once more: already finished

    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED and batches.batch_csv_path(batch).read_bytes() == first


def test_a_run_that_was_taken_over_stops_and_leaves_the_archive_to_the_new_run(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(), monkeypatch, django_capture_on_commit_callbacks)

    def take_over(number: int) -> None:  # this run was presumed dead (its heartbeat late) and claimed again
        if number == 2:
            BatchPrediction.objects.filter(pk=batch.pk).update(claimed_by="another-host:1",
                                                               heartbeat_at=timezone.now() - timedelta(hours=1))
            assert batches._claim(batch.pk) is not None

    on_chunk(monkeypatch, take_over)
    batch_run(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Status.RUNNING and batch.done == 0  # the new run's, untouched by the old one
    assert (batches.batch_directory(batch) / batches.ARCHIVE).exists()
    assert batches.batch_csv_path(batch) is None
    monkeypatch.undo()
    BatchPrediction.objects.filter(pk=batch.pk).update(heartbeat_at=None)  # that claim ran nothing: let go

    batch_run(batch_id=batch.pk)  # (standing in for the new run, which starts over)

    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED and len(read_csv(batches.batch_csv_path(batch))) == batch.total


def test_a_batch_deleted_while_running_stops_and_leaves_no_files(
        alice, image_model, settings, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(), monkeypatch, django_capture_on_commit_callbacks)

    def delete(number: int) -> None:
        if number == 1:
            with django_capture_on_commit_callbacks(execute=True):
                batch_delete(batch=BatchPrediction.objects.get(pk=batch.pk))

    on_chunk(monkeypatch, delete)
    batch_run(batch_id=batch.pk)

    assert not BatchPrediction.objects.exists()
    assert media_files(settings) == []


def test_a_model_whose_files_are_gone_fails_the_batch_with_the_reason(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(4), monkeypatch, django_capture_on_commit_callbacks)
    (model_directory(image_model) / "model.safetensors").unlink()

    batch_run(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Status.FAILED
    assert batch.error == f"The files of {image_model} are missing from storage. Nothing was predicted."
    assert batches.batch_csv_path(batch) is None


def test_an_unexpected_error_fails_the_batch_without_raising(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    batch = queued_batch(alice, image_model, image_members(4), monkeypatch, django_capture_on_commit_callbacks)
    monkeypatch.setattr(batches, "_predict_chunk", lambda *args: 1 / 0)

    batch_run(batch_id=batch.pk)  # the worker lives on

    batch.refresh_from_db()
    assert batch.status == Status.FAILED and "internal error" in batch.error and "worker log" in batch.error


# --- API ----------------------------------------------------------------------------------------


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_the_api_creates_lists_shows_cancels_and_serves_the_csv(
        alice, image_model, eager, django_capture_on_commit_callbacks):
    api = token_client(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/models/{image_model.pk}/batches/",
                            {"archive": upload(zip_bytes(image_members(20)))}, format="multipart")
    assert response.status_code == 202, response.content
    queued = response.json()
    assert (queued["model"], queued["status"], queued["total"], queued["done"], queued["csv"]) == (
        image_model.pk, "queued", 23, 0, None)  # answered before the commit that queues the task

    body = api.get(f"/api/batches/{queued['id']}/").json()
    assert (body["status"], body["total"], body["done"], body["progress"]) == ("succeeded", 23, 23, 1.0)
    assert body["csv"] == f"http://testserver/api/batches/{body['id']}/csv/"
    assert [s["file"] for s in body["skipped"]] == list(BAD_IMAGES)

    assert [b["id"] for b in api.get("/api/batches/").json()["results"]] == [body["id"]]
    download = api.get(body["csv"])
    assert download.status_code == 200 and download["Content-Type"] == "text/csv"
    assert len(csv_rows(b"".join(download.streaming_content))) == 23

    refused = api.post(f"/api/batches/{body['id']}/cancel/")
    assert refused.status_code == 409 and "already succeeded" in refused.json()["detail"]


def test_the_api_cancels_a_queued_batch_and_has_no_csv_before_the_end(
        alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    api = token_client(alice)
    monkeypatch.setattr(batches, "_queue", lambda batch_id, queue: None)
    with django_capture_on_commit_callbacks(execute=True):
        body = api.post(f"/api/models/{image_model.pk}/batches/",
                        {"archive": upload(zip_bytes(image_members(4)))}, format="multipart").json()
    assert body["status"] == "queued" and body["csv"] is None

    early = api.get(f"/api/batches/{body['id']}/csv/")
    assert early.status_code == 409 and early.json()["detail"] == "No CSV yet: the batch is queued."
    cancelled = api.post(f"/api/batches/{body['id']}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/batches/{body['id']}/").status_code == 204
    assert not BatchPrediction.objects.exists()


def test_the_api_refuses_a_bad_archive_with_the_reason(alice, image_model, settings):
    response = token_client(alice).post(f"/api/models/{image_model.pk}/batches/",
                                        {"archive": upload(png(3), "pics.zip")}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {"archive": ["pics.zip: The file is a PNG image, not a .zip, .tar or .tar.gz archive."]}
    assert not BatchPrediction.objects.exists() and media_files(settings) == []


def test_the_api_refuses_an_upload_over_the_limit_before_reading_it(alice, image_model, settings):
    settings.MAX_UPLOAD_BYTES = 1024
    response = token_client(alice).post(f"/api/models/{image_model.pk}/batches/",
                                        {"archive": upload(b"x" * 200_000)}, format="multipart")

    assert response.status_code == 413
    assert "the largest upload accepted is 1.0" in response.json()["archive"][0]
    assert not BatchPrediction.objects.exists()


def test_the_batch_endpoints_are_in_the_schema(alice):
    schema = token_client(alice).get("/api/schema/", {"format": "json"}).json()

    for path, method in [("/api/models/{id}/batches/", "post"), ("/api/batches/", "get"),
                         ("/api/batches/{id}/", "get"), ("/api/batches/{id}/csv/", "get"),
                         ("/api/batches/{id}/cancel/", "post")]:
        assert method in schema["paths"][path], path
    assert "202" in schema["paths"]["/api/models/{id}/batches/"]["post"]["responses"]
    assert "text/csv" in schema["paths"]["/api/batches/{id}/csv/"]["get"]["responses"]["200"]["content"]
