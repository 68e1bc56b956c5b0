"""The models API: filters, the registry fields, publish and default, and their place in the schema."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from drf_spectacular.validation import validate_schema

from tests.webapp.test_api import alice_api, api, bob_api  # noqa: F401 - shared fixtures
from tests.webapp.test_registry import (  # noqa: F401 - shared fixtures
    dataset, make_job, png, train_result)
from tests.webapp.test_registry_versions import _no_slow_extras, write_dataset_files  # noqa: F401
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_register

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(alice, dataset, train_result):
    """Alice: v1 and v2 of "Shades · …" and v1 of a second dataset's name."""
    write_dataset_files(dataset)
    other = Dataset.objects.create(owner=alice, name="Tones", status=Dataset.Status.READY)
    write_dataset_files(other)
    return [model_register(job=make_job(d), result=train_result) for d in (dataset, dataset, other)]


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return sorted(m["id"] for m in response.json()["results"])


def test_filters_by_name_dataset_and_published(alice_api, models):
    v1, v2, tones = models
    TrainedModel.objects.filter(pk=v2.pk).update(published=True)

    assert ids(alice_api.get("/api/models/")) == [v1.pk, v2.pk, tones.pk]
    assert ids(alice_api.get("/api/models/", {"name": v1.name})) == [v1.pk, v2.pk]
    assert ids(alice_api.get("/api/models/", {"dataset": tones.dataset_id})) == [tones.pk]
    assert ids(alice_api.get("/api/models/", {"published": "true"})) == [v2.pk]
    assert ids(alice_api.get("/api/models/", {"published": "false", "name": v1.name})) == [v1.pk]
    assert ids(alice_api.get("/api/models/", {"name": "nothing like it"})) == []


@pytest.mark.parametrize("params,field", [({"dataset": "abc"}, "dataset"), ({"published": "maybe"}, "published")])
def test_a_bad_filter_is_a_400_naming_it(alice_api, models, params, field):
    response = alice_api.get("/api/models/", params)

    assert response.status_code == 400
    assert field in response.json()


def test_the_fields_of_a_model(alice_api, models, train_result):
    model = models[0]
    TrainedModel.objects.filter(pk=model.pk).update(
        exports={"torchscript": {"ok": True, "file": "model.torchscript.pt", "bytes": 10, "seconds": 0.1},
                 "onnx": {"ok": False, "reason": "The ONNX graph disagrees with PyTorch on 2 of 32 samples."}},
        evaluation={"split": "validation", "samples": 16, "accuracy": 0.9375, "macro_f1": 0.93,
                    "calibration": {"ece": 0.04, "bins": []}, "per_class": []})

    body = alice_api.get(f"/api/models/{model.pk}/").json()

    assert (body["version"], body["published"], body["is_default"]) == (1, False, False)
    assert body["lineage"]["job"] == model.job_id and len(body["lineage"]["dataset"]["fingerprint"]) == 16
    assert body["lineage"]["hyperparameters"] == train_result.config.to_dict()
    assert body["exports"]["onnx"] == {"ok": False, "reason": "The ONNX graph disagrees with PyTorch on 2 of 32 samples."}
    assert body["evaluation"] == {"accuracy": 0.9375, "macro_f1": 0.93, "ece": 0.04}
    base = f"http://testserver/api/models/{model.pk}/download/"
    assert body["downloads"] == {"zip": base, "safetensors": f"{base}?file=model.safetensors",
                                 "json": f"{base}?file=model.json",
                                 "torchscript": f"{base}?file=model.torchscript.pt"}  # no ONNX: its export failed



def test_downloads_work_with_the_token_and_only_for_who_may_see_the_model(alice_api, bob_api, models):
    model = models[0]
    downloads = alice_api.get(f"/api/models/{model.pk}/").json()["downloads"]

    described = alice_api.get(downloads["json"])
    assert described.status_code == 200 and b'"classes"' in b"".join(described.streaming_content)
    assert alice_api.get(downloads["zip"])["Content-Type"] == "application/zip"
    missing = alice_api.get(downloads["zip"] + "?file=model.onnx")
    assert missing.status_code == 404 and "model.onnx" in missing.json()["detail"]
    assert bob_api.get(downloads["json"]).status_code == 404
    TrainedModel.objects.filter(pk=model.pk).update(published=True)
    assert bob_api.get(downloads["json"]).status_code == 200


def test_a_missing_evaluation_says_why(alice_api, models):
    TrainedModel.objects.filter(pk=models[0].pk).update(evaluation={"error": "ValueError: no validation split"})

    body = alice_api.get(f"/api/models/{models[0].pk}/").json()

    assert body["evaluation"] == {"accuracy": None, "macro_f1": None, "ece": None,
                                  "error": "ValueError: no validation split"}


def test_publish_shares_a_version_with_other_users(alice_api, bob_api, models):
    model = models[0]
    assert bob_api.get(f"/api/models/{model.pk}/").status_code == 404

    response = alice_api.post(f"/api/models/{model.pk}/publish/", {"published": True}, format="json")
    assert response.status_code == 200 and response.json()["published"] is True
    assert bob_api.get(f"/api/models/{model.pk}/").status_code == 200
    assert ids(bob_api.get("/api/models/")) == [model.pk]
    predicted = bob_api.post(f"/api/models/{model.pk}/predict/",
                             {"file": SimpleUploadedFile("a.png", png(3), "image/png")}, format="multipart")
    assert predicted.status_code == 200

    alice_api.post(f"/api/models/{model.pk}/publish/", {"published": False}, format="json")
    assert bob_api.get(f"/api/models/{model.pk}/").status_code == 404


def test_publish_needs_a_boolean(alice_api, models):
    response = alice_api.post(f"/api/models/{models[0].pk}/publish/", {}, format="json")

    assert response.status_code == 400 and "published" in response.json()


def test_default_moves_to_the_chosen_version(alice_api, models):
    v1, v2, _ = models
    alice_api.post(f"/api/models/{v1.pk}/default/")
    response = alice_api.post(f"/api/models/{v2.pk}/default/")

    assert response.status_code == 200 and response.json()["is_default"] is True
    assert list(TrainedModel.objects.filter(is_default=True).values_list("pk", flat=True)) == [v2.pk]


@pytest.mark.parametrize("suffix,data", [("publish/", {"published": False}), ("default/", None)])
def test_only_the_owner_publishes_or_sets_the_default(bob_api, models, suffix, data):
    model = models[0]
    TrainedModel.objects.filter(pk=model.pk).update(published=True)

    response = bob_api.post(f"/api/models/{model.pk}/{suffix}", data, format="json")

    assert response.status_code == 404
    model.refresh_from_db()
    assert (model.published, model.is_default) == (True, False)


def test_the_schema_has_the_model_paths_filters_and_fields(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    validate_schema(schema)

    assert {"/api/models/{id}/publish/", "/api/models/{id}/default/", "/api/models/{id}/download/"} <= set(schema["paths"])
    listed = {p["name"] for p in schema["paths"]["/api/models/"]["get"]["parameters"]}
    assert {"name", "dataset", "published"} <= listed
    fields = schema["components"]["schemas"]["TrainedModel"]["properties"]
    assert {"version", "published", "is_default", "lineage", "exports", "evaluation", "downloads"} <= set(fields)
    assert schema["components"]["schemas"]["Publish"]["required"] == ["published"]
