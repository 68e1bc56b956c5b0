"""The whole chain over the real parts, as a script would drive it through the JSON API.

Daphne serves HTTP and the websocket, a Celery worker process ingests and trains, channels-redis
carries the progress (tests/live.py). Upload → ingest → train → live events → stored model →
prediction of the right class on an easy task (class = the bright colour channel).
"""

import io
import json
import urllib.error
import urllib.request
import uuid
import zipfile

import numpy as np
import pytest
from PIL import Image

from jobs.models import Job
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.integration

CLASSES = ("red", "green", "blue")


def colour_image(channel: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
    pixels[:, :, channel] += 150
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def colour_archive(per_class: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for channel, name in enumerate(CLASSES):
            for i in range(per_class):
                archive.writestr(f"colours/{name}/{i:03d}.png", colour_image(channel, rng))
    return buffer.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Api:
    """A token-authenticated JSON client talking HTTP to the live Daphne server."""

    def __init__(self, url: str, token: str | None = None):
        self.url, self.token = url, token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, *, data: dict | None = None, files: dict | None = None):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        body = None
        if files is not None:
            body, headers["Content-Type"] = multipart({k: str(v) for k, v in (data or {}).items()}, files)
        elif data is not None:
            body, headers["Content-Type"] = json.dumps(data).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def test_upload_ingest_train_stream_store_and_predict_through_the_api(live, alice):
    status, body = Api(live.url).call("POST", "/api/token/", data={"username": "alice", "password": "alice-pass-123"})
    assert status == 200, body
    api = Api(live.url, body["token"])

    status, dataset = api.call("POST", "/api/datasets/", data={"name": "Colours"},
                               files={"file": ("colours.zip", colour_archive(per_class=24))})
    assert status == 201, dataset
    dataset = live.wait_for(
        lambda: (d := api.call("GET", f"/api/datasets/{dataset['id']}/")[1])["status"] in ("ready", "failed") and d,
        timeout=120, what="the worker to ingest the upload",
    )
    assert dataset["status"] == "ready", dataset
    assert dataset["num_samples"] == 72 and [c["name"] for c in dataset["classes"]] == sorted(CLASSES)

    config = {"arch": "seed_cnn", "epochs": 3, "batch_size": 8, "augment": False}

    def start_job() -> int:
        status, job = api.call("POST", "/api/jobs/", data={"dataset": dataset["id"], **config})
        assert status == 201, job
        return job["id"]

    messages = live.follow_job(start_job, user=alice, timeout=120)
    job_id = messages[0]["job"]["id"]

    assert messages[0]["type"] == "history" and messages[0]["job"]["status"] == "queued"
    epochs = [m["point"]["epoch"] for m in messages if m["type"] == "progress" and m["point"] and m["point"]["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert messages[-1]["type"] == "status" and messages[-1]["job"]["status"] == "succeeded", messages[-1]

    status, job = api.call("GET", f"/api/jobs/{job_id}/")
    assert status == 200 and job["status"] == Job.Status.SUCCEEDED
    assert [p["epoch"] for p in job["points"] if p["kind"] == "epoch"] == [1, 2, 3]  # stored, not only pushed
    model = TrainedModel.objects.get(pk=job["model_id"])
    assert model.classes == sorted(CLASSES)

    rng = np.random.default_rng(99)
    for channel, name in enumerate(CLASSES):
        status, prediction = api.call("POST", f"/api/models/{model.pk}/predict/",
                                      files={"file": (f"{name}.png", colour_image(channel, rng))})
        assert status == 200, prediction
        assert prediction["predictions"][0]["label"] == name, prediction
