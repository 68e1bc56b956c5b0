"""Jobs on speech datasets: defaults and architectures follow the dataset's kind, in the service, the
form and the page's script data; a job on an ingested speech dataset trains and stores a speech model."""

import json
import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.urls import reverse

from jobs.models import Job
from jobs.services import job_create, job_run, synthetic_cache_dir
from tests.audio_fixtures import CLASSES, speech_archive
from tests.jobs.conftest import make_ready_dataset
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.django_db


def audio_dataset(owner, *, name="tones") -> Dataset:
    """A ready speech dataset row (no files: creating a job reads none)."""
    return Dataset.objects.create(owner=owner, name=name, kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY,
                                  classes=[{"name": c, "train": 10, "val": 2} for c in CLASSES])


def ingested_audio_dataset(owner, tmp_path, *, per_class=12) -> Dataset:
    """A ready speech dataset whose files were written by the real ingest, from a generated archive."""
    from ml.ingest_audio import ingest_audio_archive

    dataset = Dataset.objects.create(owner=owner, name="tones", kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY)
    archive = speech_archive(tmp_path / "tones.zip", per_class=per_class, seed=3)
    report = ingest_audio_archive(archive, default_storage.path(dataset.storage_dir), val_fraction=0.25, seed=0)
    assert report.kind == "audio" and report.num_samples == per_class * len(CLASSES)
    return dataset


# --- job_create --------------------------------------------------------------------------------


def test_a_job_on_a_speech_dataset_gets_the_speech_defaults(alice, queued):
    from ml.config import config_defaults
    from ml.nets import DEFAULT_ARCH, architectures_for

    job = job_create(user=alice, dataset=audio_dataset(alice), config={"epochs": 3})

    assert job.config == {**config_defaults("audio"), "epochs": 3}
    assert job.config["arch"] == DEFAULT_ARCH["audio"] and job.config["arch"] in architectures_for("audio")
    assert config_defaults("audio") != config_defaults("image")  # else this test proves nothing


def test_a_job_on_an_image_dataset_still_gets_the_image_defaults(alice, dataset, queued):
    from ml.config import config_defaults

    job = job_create(user=alice, dataset=dataset, config={})

    assert job.config == config_defaults("image")
    assert job.config["arch"] == "resnet"


@pytest.mark.parametrize("kind, arch", [("audio", "resnet"), ("audio", "seed_cnn"), ("image", "cnn_mel"),
                                        ("image", "seed_lstm")])
def test_an_architecture_of_the_other_kind_is_refused_naming_those_that_fit(alice, kind, arch, queued):
    from ml.nets import architectures_for

    target = audio_dataset(alice) if kind == "audio" else make_ready_dataset(alice)

    with pytest.raises(ValidationError) as caught:
        job_create(user=alice, dataset=target, config={"arch": arch})

    message = caught.value.message_dict["arch"][0]
    assert message.startswith(f"{arch} is ")
    assert f"“{target.name}” holds" in message
    assert message.endswith(f"Choose one of: {', '.join(architectures_for(kind))}.")
    assert not Job.objects.exists() and queued == []


def test_every_speech_architecture_is_accepted_on_a_speech_dataset(alice, queued):
    from ml.nets import architectures_for

    speech = audio_dataset(alice)
    archs = architectures_for("audio")
    assert {"seed_lstm", "cnn_mel", "crnn"} <= set(archs)
    for arch in archs:
        assert job_create(user=alice, dataset=speech, config={"arch": arch}).config["arch"] == arch


# --- The form ----------------------------------------------------------------------------------


def selected_option(html: str, name: str) -> str:
    select = re.search(rf'<select name="{name}".*?</select>', html, re.S).group(0)
    return re.search(r'<option value="([^"]+)" selected>', select).group(1)


def input_value(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def test_the_form_for_a_speech_dataset_starts_from_the_speech_defaults(alice, alice_client, dataset):
    from ml.config import config_defaults

    speech = audio_dataset(alice)
    defaults = config_defaults("audio")

    response = alice_client.get(reverse("jobs:new") + f"?dataset={speech.pk}")

    html = response.text
    assert response.status_code == 200
    assert selected_option(html, "dataset") == str(speech.pk)
    assert selected_option(html, "arch") == defaults["arch"]
    assert input_value(html, "epochs") == str(defaults["epochs"])
    assert input_value(html, "batch_size") == str(defaults["batch_size"])
    assert "A speech dataset" in html


def test_the_form_groups_the_architectures_by_kind_and_embeds_each_kinds_defaults(alice, alice_client, dataset):
    from ml.config import config_defaults
    from ml.nets import architectures_for

    speech = audio_dataset(alice)

    response = alice_client.get(reverse("jobs:new") + f"?dataset={dataset.pk}")

    html = response.text
    assert selected_option(html, "arch") == "resnet"  # an image dataset is shown
    for label, kind in (("For images", "image"), ("For speech", "audio")):
        group = re.search(rf'<optgroup label="{label}">(.*?)</optgroup>', html, re.S).group(1)
        assert re.findall(r'<option value="([^"]+)"', group) == architectures_for(kind)
    data = json.loads(re.search(r'<script id="job-kinds" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert data["datasets"] == {str(dataset.pk): "image", str(speech.pk): "audio"}
    assert data["shown"] == "image"
    for kind in ("image", "audio"):
        assert data["kinds"][kind]["archs"] == architectures_for(kind)
        assert data["kinds"][kind]["defaults"] == config_defaults(kind)
    assert "cdn" not in html.lower()


def test_submitting_a_wrong_kind_architecture_shows_the_reason_next_to_the_field(alice, alice_client, queued):
    speech = audio_dataset(alice, name="digits")
    form = {"dataset": speech.pk, "arch": "resnet", "epochs": "2", "batch_size": "8", "lr": "0.003",
            "optimizer": "adamw", "weight_decay": "0.05", "label_smoothing": "0.1", "seed": "0",
            "ema": "0.99"}

    response = alice_client.post(reverse("jobs:new"), form)

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == ["arch"] and "“digits” holds speech" in errors["arch"][0]
    assert "cnn_mel" in errors["arch"][0]
    # The form comes back for the speech dataset: its choices lead with the speech networks.
    assert response.context["form"].kind == "audio"
    assert not Job.objects.exists() and queued == []


def test_submitting_the_form_for_a_speech_dataset_queues_a_speech_job(alice, alice_client, queued,
                                                                      django_capture_on_commit_callbacks):
    speech = audio_dataset(alice)
    form = {"dataset": speech.pk, "arch": "crnn", "epochs": "2", "batch_size": "8", "lr": "0.003",
            "optimizer": "adamw", "weight_decay": "0.05", "augment": "on", "label_smoothing": "0.1", "seed": "0",
            "ema": "0.99"}

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("jobs:new"), form)

    job = Job.objects.get()
    assert response.status_code == 302 and job.dataset == speech
    assert job.config["arch"] == "crnn" and job.config["ema"] == 0.99 and queued == [job.pk]
    assert "Clips / s" in alice_client.get(response.url).text


@pytest.mark.parametrize("name, value", [("synthetic_voices", 50), ("mixup", 0.3)])
def test_speech_only_settings_are_refused_for_images(name, value, alice, alice_client, dataset, queued):
    html = alice_client.get(reverse("jobs:new") + f"?dataset={dataset.pk}").text
    field = re.search(rf'<input[^>]*name="{name}"[^>]*>', html).group(0)
    assert 'data-only-for="audio"' in field and re.search(r'value="0(\.0)?"', field)  # hidden for images

    with pytest.raises(ValidationError) as info:
        job_create(user=alice, dataset=dataset, config={name: value})
    assert "speech datasets only" in info.value.message_dict[name][0]
    assert job_create(user=alice, dataset=audio_dataset(alice), config={name: value}).config[name] == value
    assert not Job.objects.filter(dataset=dataset).exists()


# --- job_run -----------------------------------------------------------------------------------


def test_a_job_on_an_ingested_speech_dataset_trains_and_stores_a_speech_model(alice, alice_client, tmp_path, pushes,
                                                                              queued):
    import ml

    dataset = ingested_audio_dataset(alice, tmp_path)
    job = job_create(user=alice, dataset=dataset,
                     config={"arch": "cnn_mel", "epochs": 2, "batch_size": 8, "lr": 3e-3, "augment": False,
                             "synthetic_voices": 2})

    job_run(job_id=job.id)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert [p.epoch for p in job.points.filter(kind="epoch")] == [1, 2]
    model = TrainedModel.objects.get(job=job)
    assert model.arch == "cnn_mel" and model.kind == "audio"
    assert model.classes == sorted(CLASSES)
    assert model.input_spec["kind"] == "audio"
    assert (model.input_spec["sample_rate"], model.input_spec["clip_samples"]) == (16_000, 16_000)
    assert model.clip_seconds == 1.0
    stored = json.loads(Path(default_storage.path(dataset.storage_dir), "dataset.json").read_text())
    assert sum(map(sum, model.confusion)) == stored["num_val"] > 0  # every validation clip
    meta = json.loads(Path(default_storage.path(model.storage_dir), "model.json").read_text())
    assert meta["input"]["kind"] == "audio"
    predictor = ml.load_predictor(default_storage.path(model.storage_dir))
    assert predictor.modality == "audio"
    # espeak-ng spoke each class name twice into the training split; the model page says so.
    assert model.metrics["synthetic_clips"] == 2 * len(CLASSES)
    assert "Adding 2 synthetic clips of each of 3 class names" in job.notices[0]["message"]
    # ... and kept them for the next job on these class names (a resume reads them back too).
    assert len(list(synthetic_cache_dir().glob("*.npy"))) == 1
    page = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert f"plus {2 * len(CLASSES)} synthetic clips spoken by espeak-ng" in page


# --- The API -----------------------------------------------------------------------------------


def test_an_api_job_on_a_speech_dataset_gets_the_speech_defaults_for_what_it_leaves_out(alice, queued):
    from ml.config import config_defaults
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    speech = audio_dataset(alice)

    response = client.post("/api/jobs/", {"dataset": speech.pk, "epochs": 3}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["config"] == {**config_defaults("audio"), "epochs": 3}
    refused = client.post("/api/jobs/", {"dataset": speech.pk, "arch": "resnet"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["arch"][0].startswith("resnet is an image network; dataset “tones” holds speech.")
