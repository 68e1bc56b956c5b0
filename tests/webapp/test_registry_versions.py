"""Registry versions: numbering, lineage, publishing, the default version, deleting, the admin."""

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.webapp.test_registry import (  # noqa: F401 - shared fixtures
    TINY_ARCH, dataset, make_job, png, train_result)
from webapp.registry import services
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_directory, model_register

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_slow_extras(monkeypatch):
    """The evaluation report and the exports have their own tests; here they would only cost
    seconds per registration."""
    monkeypatch.setattr(services, "model_evaluation", lambda **kwargs: {})
    monkeypatch.setattr(services, "model_exports", lambda **kwargs: {})


def write_dataset_files(dataset, *, seed: int = 0) -> None:
    """The dataset's ingested files (perceptor-images/1) where training reads them from, so that
    model_register fingerprints real data."""
    rng = np.random.default_rng(seed)
    folder = Path(default_storage.path(dataset.storage_dir))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8))
    np.save(folder / "labels.npy", np.array([0, 1] * 6, dtype=np.int64))
    (folder / "dataset.json").write_text(json.dumps({
        "format": "perceptor-images/1", "classes": ["dark", "bright"], "height": 8, "width": 8, "channels": 1,
        "num_train": 8, "num_val": 4, "counts": {"train": [4, 4], "val": [2, 2]}, "samples": {},
        "skipped": [], "options": {}, "resized": False}))


def register(dataset, train_result, **job_fields) -> TrainedModel:
    return model_register(job=make_job(dataset, **job_fields), result=train_result)


@pytest.fixture
def versions(dataset, train_result):
    """Alice's three versions of one name, v1..v3."""
    write_dataset_files(dataset)
    return [register(dataset, train_result) for _ in range(3)]


# --- Versions ----------------------------------------------------------------------------------


def test_versions_increment_per_name_and_the_page_lists_the_others(alice_client, versions):
    v1, v2, v3 = versions

    assert [v.version for v in versions] == [1, 2, 3] and v1.name == v3.name == f"Shades · {TINY_ARCH}"
    page = alice_client.get(reverse("models:detail", args=[v2.pk])).text
    for other in (v1, v3):
        assert f'href="{reverse("models:detail", args=[other.pk])}"' in page
    assert 'aria-current="true" data-version="2"' in page


def test_the_model_list_has_one_row_per_name(alice_client, versions):
    page = alice_client.get(reverse("models:list")).text

    assert page.count(f'data-name="{versions[0].name}"') == 1
    assert "3 versions" in page
    # The row opens the default version: the latest while the owner has chosen none.
    assert f'<a href="{reverse("models:detail", args=[versions[2].pk])}">{versions[0].name} v3</a>' in page


# --- Lineage -----------------------------------------------------------------------------------


def test_lineage_records_where_the_model_came_from(alice_client, versions, dataset, train_result):
    model = versions[0]
    lineage = model.lineage
    job = model.job
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=django_settings.BASE_DIR,
                          capture_output=True, text=True, check=True).stdout.strip()

    assert lineage["dataset"]["id"] == dataset.pk and lineage["dataset"]["name"] == "Shades"
    assert lineage["dataset"]["kind"] == "image"
    assert (lineage["dataset"]["num_train"], lineage["dataset"]["num_val"]) == (8, 4)
    assert len(lineage["dataset"]["fingerprint"]) == 16 and int(lineage["dataset"]["fingerprint"], 16) >= 0
    assert lineage["job"] == job.pk
    assert lineage["hyperparameters"] == train_result.config.to_dict()
    assert lineage["code_version"] == head
    assert lineage["torch"] == torch.__version__ and lineage["python"] == platform.python_version()
    assert lineage["device"] == "cpu"
    assert lineage["duration_s"] == pytest.approx(train_result.metrics["duration_s"])
    assert lineage["finished_at"]
    page = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert lineage["dataset"]["fingerprint"] in page and head in page and f"PyTorch {torch.__version__}" in page
    assert f"lr={train_result.config.lr}" in page


def test_the_fingerprint_is_stable_and_changes_with_the_data(versions, dataset, train_result):
    assert versions[0].lineage["dataset"]["fingerprint"] == versions[1].lineage["dataset"]["fingerprint"]
    write_dataset_files(dataset, seed=1)  # the dataset's data replaced
    assert register(dataset, train_result).lineage["dataset"]["fingerprint"] != versions[0].lineage["dataset"]["fingerprint"]


def test_the_code_version_falls_back_to_the_environment(monkeypatch, settings, tmp_path):
    settings.BASE_DIR = tmp_path  # no git repository here
    monkeypatch.setenv("PERCEPTOR_CODE_VERSION", "release-7")
    services.code_version.cache_clear()
    try:
        assert services.code_version() == "release-7"
    finally:
        services.code_version.cache_clear()


def test_without_the_dataset_files_the_lineage_says_the_fingerprint_is_unknown(alice_client, dataset,
                                                                               train_result):
    model = register(dataset, train_result)  # no dataset files in storage

    assert model.lineage["dataset"]["fingerprint"] is None
    assert model.lineage["dataset"]["fingerprint_error"] == "the dataset's files could not be read"
    assert model.lineage["job"] == model.job_id and model.lineage["code_version"]  # the rest is there
    page = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert "unknown: the dataset&#x27;s files could not be read" in page


def test_a_lineage_that_could_not_be_made_says_why(alice_client, dataset, train_result, monkeypatch):
    def broken(**kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(services, "model_lineage", broken)
    model = register(dataset, train_result)

    assert "The lineage of this model could not be recorded: OSError: no space left" in alice_client.get(
        reverse("models:detail", args=[model.pk])).text


# --- Publishing --------------------------------------------------------------------------------


def test_publishing_shares_a_version_and_unpublishing_hides_it_again(alice_client, client, bob, versions):
    model = versions[0]
    detail = reverse("models:detail", args=[model.pk])
    client.force_login(bob)
    assert client.get(detail).status_code == 404

    client.force_login(model.owner)
    assert client.post(reverse("models:publish", args=[model.pk]), {"published": "1"}).status_code == 302
    client.force_login(bob)
    page = client.get(detail)
    assert page.status_code == 200 and "Shared by alice" in page.text
    assert 'id="version-actions"' not in page.text  # read-only for bob: no publish, default, delete
    assert 'id="model-default"' not in page.text  # alice's default is still her newest (private) version
    assert client.get(reverse("models:download", args=[model.pk]) + "?file=model.json").status_code == 200
    predicted = client.post(reverse("models:predict", args=[model.pk]), {"file": _upload()},
                            HTTP_ACCEPT="application/json")
    assert predicted.status_code == 200 and predicted.json()["predictions"]
    listed = client.get(reverse("models:list")).text
    assert "Shared with you" in listed and f'href="{detail}"' in listed
    assert reverse("models:detail", args=[versions[1].pk]) not in listed  # unpublished versions stay hidden

    client.force_login(model.owner)
    client.post(reverse("models:publish", args=[model.pk]), {"published": "0"})
    client.force_login(bob)
    assert client.get(detail).status_code == 404
    assert "Shared with you" not in client.get(reverse("models:list")).text


def _upload():
    return SimpleUploadedFile("night.png", png(3), "image/png")


@pytest.mark.parametrize("action,data", [("publish", {"published": "1"}), ("default", {}), ("delete", {})])
def test_only_the_owner_changes_a_version_others_get_404(client, bob, versions, action, data):
    model = versions[0]
    TrainedModel.objects.filter(pk=model.pk).update(published=True)  # even a shared one
    client.force_login(bob)

    assert client.post(reverse(f"models:{action}", args=[model.pk]), data).status_code == 404
    model.refresh_from_db()
    assert (model.published, model.is_default) == (True, False)
    assert model_directory(model).is_dir()


def test_staff_may_change_any_version(client, charlie, versions):
    client.force_login(charlie)
    client.post(reverse("models:default", args=[versions[0].pk]))
    client.post(reverse("models:publish", args=[versions[0].pk]), {"published": "1"})

    versions[0].refresh_from_db()
    assert versions[0].is_default and versions[0].published


# --- Default version ---------------------------------------------------------------------------


def test_set_default_moves_the_flag(alice_client, versions):
    v1, v2, v3 = versions
    alice_client.post(reverse("models:default", args=[v1.pk]))
    alice_client.post(reverse("models:default", args=[v2.pk]))

    assert list(TrainedModel.objects.filter(is_default=True).values_list("pk", flat=True)) == [v2.pk]
    listed = alice_client.get(reverse("models:list")).text
    assert f'<a href="{reverse("models:detail", args=[v2.pk])}">{v2.name} v2</a>' in listed
    assert 'id="model-default"' in alice_client.get(reverse("models:detail", args=[v2.pk])).text
    assert 'id="model-default"' not in alice_client.get(reverse("models:detail", args=[v3.pk])).text


# --- Deleting ----------------------------------------------------------------------------------


def test_delete_removes_the_version_and_its_files(alice_client, versions, django_capture_on_commit_callbacks):
    v1, v2, v3 = versions
    directory = model_directory(v3)
    (directory / "report").mkdir()
    (directory / "report" / "miss-00.png").write_bytes(png(0))  # what the report leaves there

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("models:delete", args=[v3.pk]))

    assert response.status_code == 302 and response.url == reverse("models:detail", args=[v2.pk])
    assert not TrainedModel.objects.filter(pk=v3.pk).exists() and not directory.exists()
    assert model_directory(v2).is_dir()


def test_deleting_the_last_version_goes_back_to_the_list(alice_client, dataset, train_result,
                                                         django_capture_on_commit_callbacks):
    model = register(dataset, train_result)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("models:delete", args=[model.pk]))

    assert response.url == reverse("models:list")
    assert not TrainedModel.objects.exists()


# --- Admin -------------------------------------------------------------------------------------


def _admin_action(client, action: str, models) -> str:
    response = client.post(reverse("admin:registry_trainedmodel_changelist"),
                           {"action": action, "_selected_action": [m.pk for m in models]}, follow=True)
    assert response.status_code == 200
    return response.text


def test_admin_publishes_unpublishes_and_sets_the_default(client, charlie, versions):
    client.force_login(charlie)
    v1, v2, v3 = versions
    _admin_action(client, "publish", [v1, v2])
    assert set(TrainedModel.objects.filter(published=True).values_list("pk", flat=True)) == {v1.pk, v2.pk}
    _admin_action(client, "unpublish", [v1])
    assert list(TrainedModel.objects.filter(published=True).values_list("pk", flat=True)) == [v2.pk]

    page = _admin_action(client, "make_default", [v1, v3])
    assert "at most one version per name" in page
    assert not TrainedModel.objects.filter(is_default=True).exists()
    _admin_action(client, "make_default", [v3])
    _admin_action(client, "make_default", [v1])
    assert list(TrainedModel.objects.filter(is_default=True).values_list("pk", flat=True)) == [v1.pk]


def test_admin_delete_removes_the_files(client, charlie, versions, django_capture_on_commit_callbacks):
    client.force_login(charlie)
    directory = model_directory(versions[0])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:registry_trainedmodel_delete", args=[versions[0].pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not TrainedModel.objects.filter(pk=versions[0].pk).exists() and not directory.exists()
