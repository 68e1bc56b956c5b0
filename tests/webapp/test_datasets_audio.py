"""Speech datasets on the site: upload, ingest, the page with players and spectrograms, the clip
views, the API and the spoken-digits demo; bob never hears alice's clips."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from tests.audio_fixtures import CLASSES, speech_archive, tone, wav_bytes
from tests.webapp.test_datasets import eager, media, ready, shapes_zip, upload  # noqa: F401 - fixtures
from webapp.datasets import services
from webapp.datasets.models import Dataset
from webapp.datasets.services import dataset_create, dataset_ingest

pytestmark = pytest.mark.django_db

PER_CLASS = 12  # speech_archive's default: 3 classes × 12 one-second clips at 16 kHz

# --- Helpers ----------------------------------------------------------------------------------


def speech_zip(tmp_path, name="speech.zip", **kwargs) -> bytes:
    return speech_archive(tmp_path / name, **kwargs).read_bytes()


def ingest(owner, data: bytes, *, filename="speech.zip", **options) -> Dataset:
    """Upload as the service does and ingest right here, as a worker would."""
    dataset = dataset_create(owner=owner, name="Words", archive=upload(filename, data), options=options,
                             queue_ingest=False)
    dataset_ingest(dataset_id=dataset.pk)
    dataset.refresh_from_db()
    return dataset


def speech_commands_zip(tmp_path) -> bytes:
    """The Google Speech Commands layout: split lists at the top and a _background_noise_ folder."""
    noise = np.random.default_rng(1).normal(0, 0.1, 3 * 16_000).astype(np.float32)
    lists = {
        "validation_list.txt": "".join(f"{c}/{c}_000.wav\n{c}/{c}_001.wav\n" for c in CLASSES).encode(),
        "testing_list.txt": "".join(f"{c}/{c}_002.wav\n{c}/{c}_003.wav\n{c}/{c}_004.wav\n" for c in CLASSES).encode(),
        "_background_noise_/white_noise.wav": wav_bytes(noise),
        "_background_noise_/README.md": b"Noise for augmentation.",
    }
    return speech_zip(tmp_path, "commands.zip", extra=lists)


@pytest.fixture
def speech(alice, tmp_path):
    """Alice's ingested speech dataset: high/low/sweep × 12 clips, a corrupt file and a silent one."""
    extra = {"low/broken.wav": b"RIFF\x00\x00\x00\x00WAVEnot really", "high/silence.wav": wav_bytes(np.zeros(8000))}
    dataset = ingest(alice, speech_zip(tmp_path, extra=extra), val_fraction=0.25)
    assert dataset.status == Dataset.Status.READY, dataset.error
    return dataset


def stored_clips(settings, dataset) -> np.ndarray:
    return np.load(Path(settings.MEDIA_ROOT) / dataset.storage_dir / "audio.npy")


# --- Upload and ingest ------------------------------------------------------------------------


def test_a_speech_archive_is_detected_and_ingested_with_counts_and_info(alice, tmp_path, settings):
    dataset = ingest(alice, speech_zip(tmp_path), val_fraction=0.25)

    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.kind == Dataset.Kind.AUDIO and dataset.get_kind_display() == "Speech"
    assert dataset.options["kind"] == "auto"  # the worker looked inside
    assert [c["name"] for c in dataset.classes] == list(CLASSES)
    assert all((c["train"], c["val"], c["test"]) == (9, 3, 0) for c in dataset.classes), dataset.classes
    assert (dataset.num_samples, dataset.num_train, dataset.num_val) == (36, 27, 9)
    assert (dataset.height, dataset.width, dataset.channels) == (0, 0, 0)
    info = dataset.info
    assert (info["sample_rate"], info["clip_samples"], info["num_test"]) == (16_000, 16_000, 0)
    assert info["durations"] == pytest.approx({"min": 1.0, "mean": 1.0, "median": 1.0, "max": 1.0})
    assert (info["trimmed"], info["padded"], info["split"]) == (0, 0, "random")
    assert (info["noise_files"], info["noise_seconds"], info["warnings"]) == (0, 0.0, [])
    assert dataset.skipped == [] and dataset.clip_seconds == 1.0
    assert media(settings) == [f"datasets/{dataset.pk}/audio.npy", f"datasets/{dataset.pk}/dataset.json",
                               f"datasets/{dataset.pk}/labels.npy", f"uploads/{alice.pk}/speech.zip"]
    assert stored_clips(settings, dataset).shape == (36, 16_000)


def test_the_upload_form_takes_the_kind_and_the_clip_length(alice_client, tmp_path, settings, eager,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("datasets:upload"), {
            "name": "Half seconds", "archive": upload("speech.zip", speech_zip(tmp_path)), "kind": "audio",
            "clip_seconds": "0.5", "image_size": 64, "val_fraction": 0.25, "seed": 3,
        }, headers={"Accept": "application/json"})

    assert response.status_code == 201, response.content
    dataset = Dataset.objects.get()
    assert dataset.options == {"image_size": 64, "val_fraction": 0.25, "seed": 3, "kind": "audio", "clip_seconds": 0.5}
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (dataset.kind, dataset.info["clip_samples"], dataset.clip_seconds) == ("audio", 8_000, 0.5)
    assert dataset.info["trimmed"] == 36 and dataset.info["padded"] == 0  # every 1 s clip cut to its loudest 0.5 s
    assert stored_clips(settings, dataset).shape == (36, 8_000)


def test_the_upload_page_offers_the_kind_and_a_clip_length_for_speech(alice_client):
    html = alice_client.get(reverse("datasets:upload")).content.decode()

    for field in ("kind", "clip_seconds"):
        assert f'for="id_{field}"' in html and f'id="id_{field}_helptext"' in html
    assert '<option value="auto" selected>Detect automatically</option>' in html
    assert '<option value="image">Images</option>' in html and '<option value="audio">Speech</option>' in html
    assert "Clip length (s)" in html and "Speech only" in html
    assert 'name="clip_seconds" value="1.0"' in html


def test_a_bad_kind_or_clip_length_is_reported_on_its_field(alice_client, tmp_path, settings):
    response = alice_client.post(reverse("datasets:upload"), {
        "name": "x", "archive": upload("speech.zip", speech_zip(tmp_path)), "kind": "video", "clip_seconds": 20,
        "image_size": 64, "val_fraction": 0.1, "seed": 0}, headers={"Accept": "application/json"})

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["clip_seconds"] == ["Clip length must be between 0.1 and 10 seconds."]
    assert "video is not one of the available choices" in errors["kind"][0]
    assert Dataset.objects.count() == 0 and media(settings) == []


def test_the_service_checks_the_kind_and_the_clip_length(alice, tmp_path):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as err:
        dataset_create(owner=alice, name="x", archive=upload(data=speech_zip(tmp_path)),
                       options={"kind": "video", "clip_seconds": "long"})
    assert err.value.message_dict == {"kind": ["Kind must be one of: auto, image, audio (not 'video')."],
                                      "clip_seconds": ["Clip seconds must be a number, not 'long'."]}
    with pytest.raises(ValidationError) as err:
        dataset_create(owner=alice, name="x", archive=upload(data=speech_zip(tmp_path)), options={"clip_seconds": 0.05})
    assert err.value.message_dict == {"clip_seconds": ["Clip length must be between 0.1 and 10 seconds."]}
    assert Dataset.objects.count() == 0


def test_a_speech_commands_archive_keeps_its_split_lists_and_noise(alice, tmp_path):
    dataset = ingest(alice, speech_commands_zip(tmp_path))

    assert dataset.status == Dataset.Status.READY, dataset.error
    assert [c["name"] for c in dataset.classes] == list(CLASSES)  # no "_background_noise_" class
    assert all((c["train"], c["val"], c["test"]) == (7, 2, 3) for c in dataset.classes), dataset.classes
    assert (dataset.num_samples, dataset.num_train, dataset.num_val) == (36, 21, 6)
    info = dataset.info
    assert (info["split"], info["num_test"], info["noise_files"]) == ("lists", 9, 1)
    assert info["noise_seconds"] == pytest.approx(3.0)


def test_corrupt_and_silent_clips_are_listed_and_the_rest_is_used(speech):
    skipped = {s["file"]: s["reason"] for s in speech.skipped}
    assert set(skipped) == {"low/broken.wav"}
    assert skipped["low/broken.wav"].startswith("not an audio file") or "corrupt" in skipped["low/broken.wav"]
    assert [w["file"] for w in speech.info["warnings"]] == ["high/silence.wav"]
    assert "silen" in speech.info["warnings"][0]["reason"]
    assert speech.num_samples == 37  # 36 clips and the silent one, kept
    assert speech.info["padded"] == 1  # the half-second silence


def test_a_clip_longer_than_the_configured_maximum_is_skipped_with_the_reason(alice, tmp_path, settings):
    settings.MAX_CLIP_SECONDS = 2
    data = speech_zip(tmp_path, per_class=4, extra={"low/lecture.wav": wav_bytes(tone(300, 2.5))})

    dataset = ingest(alice, data)

    assert dataset.status == Dataset.Status.READY
    assert dataset.skipped == [{"file": "low/lecture.wav", "reason": "clip is 2.5 s long; the longest accepted is 2 s"}]
    assert dataset.num_samples == 4 * len(CLASSES)


def test_an_archive_without_audio_in_class_folders_fails_with_the_reason(alice, tmp_path, settings):
    from ml.synthetic import write_archive

    data = write_archive(tmp_path / "notes.zip", {"yes/a.txt": b"hello", "no/b.txt": b"world"}).read_bytes()
    dataset = ingest(alice, data, kind="audio")

    assert dataset.status == Dataset.Status.FAILED
    assert "a.txt" in dataset.error or "audio" in dataset.error.lower(), dataset.error
    assert (dataset.num_samples, dataset.classes, dataset.info) == (0, [], {})
    assert media(settings) == [f"uploads/{alice.pk}/speech.zip"]  # no arrays


def test_a_speech_archive_of_one_class_fails_naming_it(alice, tmp_path):
    dataset = ingest(alice, speech_zip(tmp_path, classes=("low",)))

    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("Only one class was found ('low')"), dataset.error


def test_an_archive_of_only_corrupt_clips_fails_naming_a_file_and_why(alice, tmp_path):
    from ml.synthetic import write_archive

    bad = {f"{c}/{i}.wav": b"RIFF\x24\x00\x00\x00WAVEjunk" for c in ("yes", "no") for i in range(3)}
    dataset = ingest(alice, write_archive(tmp_path / "bad.zip", bad).read_bytes(), kind="audio")

    assert dataset.status == Dataset.Status.FAILED
    assert ".wav" in dataset.error, dataset.error


def test_speech_forced_to_be_images_fails_with_the_images_message(alice, tmp_path):
    dataset = ingest(alice, speech_zip(tmp_path), kind="image")

    assert dataset.status == Dataset.Status.FAILED
    assert dataset.kind == Dataset.Kind.IMAGE
    assert "image" in dataset.error.lower(), dataset.error


def test_images_are_still_detected_as_images(alice, tmp_path):
    dataset = ingest(alice, shapes_zip(tmp_path), filename="shapes.zip")

    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (dataset.kind, dataset.info, dataset.height) == ("image", {}, 16)
    assert "test" not in dataset.classes[0]


def test_the_detected_kind_is_written_before_the_clips_are_decoded(alice, tmp_path, monkeypatch):
    from ml import ingest_audio

    seen = []
    real = ingest_audio.ingest_audio_archive

    def spy(*args, **kwargs):
        seen.append(Dataset.objects.get().kind)  # what the page polling the row shows meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_audio, "ingest_audio_archive", spy)
    assert ingest(alice, speech_zip(tmp_path)).status == Dataset.Status.READY
    assert seen == ["audio"]


# --- Pages ------------------------------------------------------------------------------------


def test_the_speech_page_shows_counts_durations_players_and_spectrograms(alice_client, speech):
    response = alice_client.get(reverse("datasets:detail", args=[speech.pk]))
    html = response.content.decode()

    assert response.status_code == 200
    assert 'id="class-table"' in html and '<th scope="row">sweep</th>' in html and 'id="class-chart-data"' in html
    assert "<dt>Clips</dt><dd>37</dd>" in html and "<dd>1 s</dd>" in html and "<dd>16 kHz</dd>" in html
    assert 'id="dataset-durations"' in html and "<dt>Shortest</dt><dd>0.50 s</dd>" in html
    assert 'id="clips-padded">1<' in html and 'id="clips-trimmed">0<' in html
    assert "Split at random with seed 0: 25 % of each class held out" in html
    assert "No background noise in the archive" in html
    # Four clips per class, each a player and its mel spectrogram.
    assert html.count("<audio controls") == 12 and html.count('alt="Mel spectrogram of ') == 12
    clip = reverse("datasets:clip_wav", args=[speech.pk, 0]).rsplit("/", 1)[0] + "/"
    assert html.count(clip) == 24
    assert "low/broken.wav" in html and 'id="warnings"' in html and "high/silence.wav" in html
    assert "Image size" not in html and reverse("datasets:sample", args=[speech.pk, 0]) not in html
    assert f'href="{reverse("jobs:new")}?dataset={speech.pk}"' in html


def test_the_speech_commands_page_names_the_lists_the_test_split_and_the_noise(alice, alice_client, tmp_path):
    dataset = ingest(alice, speech_commands_zip(tmp_path))
    html = alice_client.get(reverse("datasets:detail", args=[dataset.pk])).content.decode()

    assert "<code>validation_list.txt</code> and <code>testing_list.txt</code>" in html
    assert "Background noise: 1 file from <code>_background_noise_/</code> (3.0 s)" in html
    assert '<th scope="col" class="num">Test</th>' in html and "21 / 6 / 9" in html
    assert '"test": [3, 3, 3]' in html  # the chart's third series


def test_the_list_shows_the_kind_of_each_dataset(alice_client, speech, ready):
    html = alice_client.get(reverse("datasets:list")).content.decode()

    assert "<td>Speech</td>" in html and "<td>Images</td>" in html
    assert "1 s clips" in html and "16×16 RGB" in html


def test_a_clip_is_a_wav_of_the_stored_samples(alice_client, speech, settings):
    index = speech.num_samples - 1
    response = alice_client.get(reverse("datasets:clip_wav", args=[speech.pk, index]))

    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    assert response["Cache-Control"] == "private, max-age=86400"
    samples, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 16_000 and samples.shape == (16_000,)
    assert np.array_equal(samples, stored_clips(settings, speech)[index])


def test_a_clips_spectrogram_is_a_png_of_the_stored_samples(alice_client, speech, settings):
    from ml.audio import from_int16, spectrogram_png

    response = alice_client.get(reverse("datasets:clip_png", args=[speech.pk, 5]))

    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "private, max-age=86400"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (303, 160) and image.mode == "RGB"  # 1 s: 101 frames × 3 px, 40 bands × 4 px
    assert response.content == spectrogram_png(from_int16(stored_clips(settings, speech)[5]))


@pytest.mark.parametrize("url_name", ["datasets:clip_wav", "datasets:clip_png"])
def test_a_clip_past_the_end_is_404(alice_client, speech, url_name):
    assert alice_client.get(reverse(url_name, args=[speech.pk, speech.num_samples])).status_code == 404
    assert alice_client.get(reverse(url_name, args=[speech.pk, speech.num_samples - 1])).status_code == 200


@pytest.mark.parametrize("url_name", ["datasets:clip_wav", "datasets:clip_png"])
def test_an_image_dataset_has_no_clips(alice_client, ready, url_name):
    assert alice_client.get(reverse(url_name, args=[ready.pk, 0])).status_code == 404


@pytest.mark.parametrize("url_name", ["datasets:clip_wav", "datasets:clip_png", "datasets:detail"])
def test_bob_gets_404_for_alices_clips(bob_client, speech, url_name):
    args = [speech.pk] if url_name == "datasets:detail" else [speech.pk, 0]
    assert bob_client.get(reverse(url_name, args=args)).status_code == 404


def test_an_image_sample_of_a_speech_dataset_is_404(alice_client, speech):
    assert alice_client.get(reverse("datasets:sample", args=[speech.pk, 0])).status_code == 404


# --- API --------------------------------------------------------------------------------------


@pytest.fixture
def alice_api(alice):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


def test_the_api_uploads_speech_and_shows_its_kind_and_info(alice_api, tmp_path, eager,
                                                             django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/datasets/", {
            "name": "Commands", "file": SimpleUploadedFile("commands.zip", speech_commands_zip(tmp_path)),
            "kind": "audio", "clip_seconds": 1.5,
        }, format="multipart")

    assert response.status_code == 201, response.content
    body = alice_api.get(f"/api/datasets/{response.json()['id']}/").json()
    assert body["status"] == "ready", body["error"]
    assert (body["kind"], body["options"]["kind"], body["options"]["clip_seconds"]) == ("audio", "audio", 1.5)
    assert body["classes"][0] == {"name": "high", "train": 7, "val": 2, "test": 3}
    assert (body["height"], body["width"], body["channels"]) == (0, 0, 0)
    assert set(body["info"]) == set(services.SPEECH_INFO_KEYS)
    assert (body["info"]["clip_samples"], body["info"]["padded"], body["info"]["split"]) == (24_000, 36, "lists")


def test_the_api_names_a_bad_kind_or_clip_length(alice_api, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_api.post("/api/datasets/", {
        "name": "x", "file": SimpleUploadedFile("s.zip", speech_zip(tmp_path)), "kind": "movie",
    }, format="multipart")
    assert response.status_code == 400 and set(response.json()) == {"kind"}
    response = alice_api.post("/api/datasets/", {
        "name": "x", "file": SimpleUploadedFile("s.zip", speech_zip(tmp_path)), "clip_seconds": 11,
    }, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"clip_seconds": ["Clip length must be between 0.1 and 10 seconds."]}
    assert Dataset.objects.count() == 0


# --- Demo -------------------------------------------------------------------------------------


def _espeak_missing() -> str | None:
    try:
        from ml.tts import synthesize

        wave, _ = synthesize("one")
    except Exception as exc:  # ImportError, OSError: no library or no voice data
        return f"espeak-ng is unavailable ({type(exc).__name__}: {exc}); the package espeakng-loader provides it"
    return None if len(wave) else "espeak-ng produced no samples"


@pytest.fixture
def small_demos(monkeypatch):
    reason = _espeak_missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setitem(services.DEMO_SHAPES, "per_class", 3)
    monkeypatch.setitem(services.DEMO_DIGITS, "per_class", 3)


def test_create_demo_makes_the_shapes_and_the_spoken_digits_once(charlie, small_demos, capsys):
    call_command("create_demo", "--owner", "charlie")

    shapes, digits = Dataset.objects.get(name="Shapes (demo)"), Dataset.objects.get(name="Spoken digits (demo)")
    assert Dataset.objects.count() == 2
    assert (shapes.kind, shapes.status, shapes.num_samples) == ("image", "ready", 15)
    assert (digits.owner, digits.kind, digits.status) == (charlie, "audio", "ready")
    assert [c["name"] for c in digits.classes] == ["eight", "five", "four", "nine", "one", "seven", "six", "three",
                                                   "two", "zero"]
    assert digits.num_samples == 30 and digits.info["clip_samples"] == 16_000
    assert digits.options["demo"] == "digits" and digits.archive.name == f"uploads/{charlie.pk}/digits-demo.zip"
    out = capsys.readouterr().out
    assert "Generating and ingesting" in out and "%" in out  # with a progress bar
    assert "Spoken digits (demo) is ready: 30 clips in 10 classes" in out

    call_command("create_demo", "--owner", "charlie")
    assert Dataset.objects.count() == 2
    out = capsys.readouterr().out
    assert "already has Shapes (demo)" in out and "already has Spoken digits (demo)" in out


def test_create_demo_can_make_only_the_speech_demo(charlie, small_demos):
    call_command("create_demo", "--owner", "charlie", "--only", "digits")
    assert list(Dataset.objects.values_list("name", "kind")) == [("Spoken digits (demo)", "audio")]


def no_espeak(monkeypatch):
    """The speech synthesiser cannot be loaded on this machine (as ml.tts says it)."""
    import ml.synthetic_speech

    def write_digits_archive(path, **kwargs):
        raise RuntimeError("Could not load the espeak-ng library libespeak-ng.so.1: cannot open shared object file")

    monkeypatch.setattr(ml.synthetic_speech, "write_digits_archive", write_digits_archive)


def test_create_demo_says_why_the_speech_demo_cannot_be_generated_and_makes_the_rest(charlie, monkeypatch, capsys):
    no_espeak(monkeypatch)
    monkeypatch.setitem(services.DEMO_SHAPES, "per_class", 3)
    call_command("create_demo", "--owner", "charlie")  # does not fail: `make run` still starts the server
    assert "Spoken digits (demo) could not be generated on this machine: Could not load the espeak-ng library" \
        in capsys.readouterr().err
    assert dict(Dataset.objects.values_list("name", "status")) == {"Shapes (demo)": "ready",
                                                                    "Spoken digits (demo)": "failed"}


def test_a_speech_demo_that_cannot_be_generated_fails_with_the_reason_on_its_page(
        alice_client, alice, monkeypatch, settings, eager, django_capture_on_commit_callbacks):
    no_espeak(monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("datasets:demo"), {"which": "digits"})

    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == reverse("datasets:detail", args=[dataset.pk])
    assert (dataset.status, dataset.archive.name, dataset.lease) == (Dataset.Status.FAILED, "", "")
    assert dataset.error.startswith("Spoken digits (demo) could not be generated on this machine: Could not load "
                                    "the espeak-ng library libespeak-ng.so.1")
    assert media(settings) == []  # no half-written archive left
    page = alice_client.get(response.url).content.decode()
    assert "This demo could not be generated." in page and "libespeak-ng.so.1" in page
    assert "Try the demo again" in page

    monkeypatch.undo()
    monkeypatch.setattr("ml.synthetic_speech.write_digits_archive", lambda *a, **k: pytest.fail("generated in the request"))
    again = alice_client.post(reverse("datasets:demo"), {"which": "digits"})  # the failed one is replaced
    fresh = Dataset.objects.get()
    assert fresh.pk != dataset.pk and fresh.status == Dataset.Status.PENDING
    assert again.url == reverse("datasets:detail", args=[fresh.pk])


def test_the_speech_demo_button_returns_at_once_and_a_worker_generates_and_ingests_it(
        alice_client, alice, small_demos, settings, eager, monkeypatch, django_capture_on_commit_callbacks):
    import ml.synthetic_speech

    real = ml.synthetic_speech.write_digits_archive
    monkeypatch.setattr(ml.synthetic_speech, "write_digits_archive",
                        lambda *a, **k: pytest.fail("espeak-ng ran in the web request"))
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(reverse("datasets:demo"), {"which": "digits"})

    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == reverse("datasets:detail", args=[dataset.pk])
    assert (dataset.owner, dataset.name, dataset.kind, dataset.status) == (alice, "Spoken digits (demo)", "audio",
                                                                           "pending")
    assert dataset.options["demo"] == "digits" and dataset.options["kind"] == "audio"
    assert dataset.archive.name == "" and media(settings) == [] and len(callbacks) == 1
    again = alice_client.post(reverse("datasets:demo"), {"which": "digits"}, follow=True)
    assert Dataset.objects.count() == 1 and "You already have Spoken digits (demo)." in again.content.decode()

    monkeypatch.setattr(ml.synthetic_speech, "write_digits_archive", real)
    callbacks[0]()  # the queued task, run here (eager) as a worker would
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (len(dataset.classes), dataset.num_samples, dataset.attempts) == (10, 30, 1)
    assert dataset.archive.name == f"uploads/{alice.pk}/digits-demo.zip"  # kept, like an upload
    with zipfile.ZipFile(Path(settings.MEDIA_ROOT) / dataset.archive.name) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".wav")]) == 30
    assert not [p for p in (Path(settings.MEDIA_ROOT) / "datasets").iterdir() if p.name.startswith(".")]


def test_the_speech_demo_progress_is_generation_then_ingest_with_the_phase_named(
        alice_client, alice, small_demos, monkeypatch):
    monkeypatch.setattr(services, "PROGRESS_INTERVAL_S", 0.0)
    dataset, created = services.dataset_create_demo(owner=alice, which="digits", queue_ingest=False)
    status_url = reverse("datasets:status", args=[dataset.pk])
    assert alice_client.get(status_url).json()["phase"] == "waiting"
    seen = []  # (fraction reported, phase on the status URL)

    def progress(done, total):
        status = alice_client.get(status_url).json()
        if not seen:  # the page says so too
            page = alice_client.get(reverse("datasets:detail", args=[dataset.pk])).content.decode()
            assert 'data-phase="generating">Generating clips: synthesising the words zero to nine' in page
        seen.append((done / total, status["phase"], status["phase_display"]))

    services.dataset_ingest(dataset_id=dataset.pk, progress=progress)
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error

    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    generating = [f for f, phase, _ in seen if phase == "generating"]
    ingesting = [f for f, phase, _ in seen if phase == "ingesting"]
    assert len(generating) == 30 and max(generating) == 0.5  # one call per clip, the first half of the bar
    assert ingesting and min(ingesting) >= 0.5 and len(generating) + len(ingesting) == len(seen)
    labels = {phase: label for _, phase, label in seen}
    assert labels["generating"].startswith("Generating clips") and "step 1 of 2" in labels["generating"]
    assert labels["ingesting"].startswith("Ingesting") and "step 2 of 2" in labels["ingesting"]
    assert alice_client.get(status_url).json()["phase"] == ""


def test_an_unknown_demo_is_404(alice_client):
    assert alice_client.post(reverse("datasets:demo"), {"which": "cats"}).status_code == 404
