"""The speech chain over the real parts, as a script would drive it through the JSON API.

Daphne serves HTTP and the websocket, a Celery worker process ingests and trains, channels-redis
carries the progress (tests/live.py). Token → upload an archive of class folders of clips → the
worker ingests it as speech → a cnn_mel job → live events → stored model → the API predicts the
right class of clear clips (and refuses a file that is not audio).
"""

import numpy as np
import pytest

from jobs.models import Job
from tests.audio_fixtures import CLASSES, chirp, speech_archive, tone, wav_bytes
from tests.test_golden_chain import Api
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.integration

PER_CLASS = 40  # 120 one-second clips: seconds to ingest, well under a minute to train on a CPU


def clear_clip(label: str, rate: int = 16_000) -> np.ndarray:
    sound = {"low": tone(320, 0.6, rate), "high": tone(2200, 0.6, rate), "sweep": chirp(300, 3000, 0.6, rate)}[label]
    out = np.random.default_rng(11).normal(0, 0.01, rate).astype(np.float32)  # the training clips' noise floor
    out[rate // 5:rate // 5 + len(sound)] += sound
    return out


def test_upload_ingest_train_stream_store_and_predict_speech_through_the_api(live, alice, tmp_path):
    status, body = Api(live.url).call("POST", "/api/token/", data={"username": "alice", "password": "alice-pass-123"})
    assert status == 200, body
    api = Api(live.url, body["token"])

    archive = speech_archive(tmp_path / "tones.zip", per_class=PER_CLASS, seed=5).read_bytes()
    status, dataset = api.call("POST", "/api/datasets/", data={"name": "Tones"}, files={"file": ("tones.zip", archive)})
    assert status == 201, dataset
    dataset = live.wait_for(
        lambda: (d := api.call("GET", f"/api/datasets/{dataset['id']}/")[1])["status"] in ("ready", "failed") and d,
        timeout=180, what="the worker to ingest the speech archive",
    )
    assert dataset["status"] == "ready", dataset
    assert dataset["kind"] == "audio"  # detected from the archive: nobody said so
    assert dataset["num_samples"] == PER_CLASS * len(CLASSES)
    assert [c["name"] for c in dataset["classes"]] == sorted(CLASSES)
    assert (dataset["info"]["sample_rate"], dataset["info"]["clip_samples"]) == (16_000, 16_000)

    # Two synthetic clips per class: the real synthesis path, in seconds (the default is 1,000).
    config = {"arch": "cnn_mel", "epochs": 8, "batch_size": 8, "lr": 0.003, "augment": True, "synthetic_voices": 2}

    def start_job() -> int:
        status, job = api.call("POST", "/api/jobs/", data={"dataset": dataset["id"], **config})
        assert status == 201, job
        return job["id"]

    messages = live.follow_job(start_job, user=alice, timeout=180)
    job_id = messages[0]["job"]["id"]

    assert messages[0]["type"] == "history" and messages[0]["job"]["status"] == "queued"
    assert any(m["type"] == "status" and m["job"]["status"] == "running" for m in messages)
    # Speaking the clips is reported live, before the first point.
    spoken = 2 * len(CLASSES)
    phases = [(i, m["phase"]) for i, m in enumerate(messages) if m["type"] == "progress" and m.get("phase")]
    assert [p for _, p in phases] == [{"message": f"Speaking synthetic voices: {spoken} of {spoken} clips",
                                       "progress": 1.0}]
    assert phases[0][0] < min(i for i, m in enumerate(messages) if m["type"] == "progress" and m["point"])
    epochs = [m["point"]["epoch"] for m in messages if m["type"] == "progress" and m["point"] and m["point"]["kind"] == "epoch"]
    assert epochs == list(range(1, 9))
    assert messages[-1]["type"] == "status" and messages[-1]["job"]["status"] == "succeeded", messages[-1]

    status, job = api.call("GET", f"/api/jobs/{job_id}/")
    assert status == 200 and job["status"] == Job.Status.SUCCEEDED
    assert job["config"]["arch"] == "cnn_mel"
    assert [p["epoch"] for p in job["points"] if p["kind"] == "epoch"] == list(range(1, 9))  # stored, not only pushed
    model = TrainedModel.objects.get(pk=job["model_id"])
    assert model.kind == "audio" and model.classes == sorted(CLASSES)
    status, described = api.call("GET", f"/api/models/{model.pk}/")
    assert status == 200 and described["input_spec"]["kind"] == "audio"
    assert described["metrics"]["synthetic_clips"] == 2 * len(CLASSES)

    for label in CLASSES:
        status, prediction = api.call("POST", f"/api/models/{model.pk}/predict/",
                                      files={"file": (f"{label}.wav", wav_bytes(clear_clip(label)))})
        assert status == 200, prediction
        assert prediction["predictions"][0]["label"] == label, prediction

    status, refused = api.call("POST", f"/api/models/{model.pk}/predict/", files={"file": ("notes.txt", b"hello")})
    assert status == 400 and refused["file"][0].startswith("notes.txt: not an audio file"), refused
