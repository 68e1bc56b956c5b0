"""The real thing: Redis, a Celery worker process, channels-redis and Daphne (tests/live.py).

    .venv/bin/pytest -m integration tests/jobs
"""

import time

import pytest
from websockets.exceptions import ConnectionClosed

from jobs.models import Job
from jobs.services import job_cancel, job_create
from jobs.workers import worker_list
from tests.jobs.conftest import TINY_CONFIG, make_ready_dataset
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.integration

IDLE_S = 6


def test_a_queued_job_streams_history_progress_and_success_to_a_real_websocket(live, alice):
    dataset = make_ready_dataset(alice, num_train=64)
    messages = []
    # The worker holds off until the page is watching, so every event of the run is seen live.
    with live.paused_worker():
        job = job_create(user=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 2})
        ws_context = live.websocket(f"/ws/jobs/{job.pk}/", user=alice)
        ws = ws_context.__enter__()
        messages.append(live.receive_json(ws))
        # Idle for longer than the channel layer's 5 s blocking pop: the feed must survive it
        # (redis-py 8's default 5 s socket timeout used to kill it, django/channels_redis#422).
        time.sleep(IDLE_S)
    try:
        while not messages or messages[-1]["job"]["status"] not in ("succeeded", "failed", "cancelled"):
            messages.append(live.receive_json(ws, timeout=120))
    finally:
        ws_context.__exit__(None, None, None)

    history, *live_messages = messages
    assert history["type"] == "history"
    assert history["job"]["status"] == "queued" and history["points"] == []
    assert [m["job"]["status"] for m in live_messages if m["type"] == "status"] == ["running", "succeeded"]
    progress = [m for m in live_messages if m["type"] == "progress"]
    assert [m["point"]["epoch"] for m in progress if m["point"] and m["point"]["kind"] == "epoch"] == [1, 2]
    assert progress[-1]["job"]["progress"] == 1.0
    final = live_messages[-1]["job"]
    assert final["error"] == "" and final["device"] == "cpu"
    model = TrainedModel.objects.get(job_id=job.pk)
    assert final["model_id"] == model.pk
    assert (live.media_root / model.storage_dir / "model.safetensors").is_file()
    # Everything pushed was stored first: the page after a reload draws the same curve.
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert [m["point"]["step"] for m in progress if m["point"]] == list(job.points.values_list("step", flat=True))
    status, html = live.get(f"/jobs/{job.pk}/", user=alice)
    assert status == 200 and "status-succeeded" in html


def test_cancelling_a_running_job_reaches_cancelled_within_seconds(live, alice):
    dataset = make_ready_dataset(alice, num_train=64)
    job = job_create(user=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 500, "batch_size": 4})
    live.wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, step__gt=0).exists(),
                  timeout=60, what="the job to start training")

    started = time.monotonic()
    job_cancel(job=job)
    live.wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.CANCELLED).exists(),
                  timeout=10, what="the worker to cancel the job")

    assert time.monotonic() - started < 10
    job.refresh_from_db()
    assert job.cancel_requested and job.finished_at is not None and job.error == ""
    assert not TrainedModel.objects.filter(job_id=job.pk).exists()


def test_bob_is_refused_alices_websocket_with_4404(live, alice, bob):
    job = Job.objects.create(owner=alice, dataset=make_ready_dataset(alice), config=TINY_CONFIG,
                             status=Job.Status.CANCELLED)

    with live.websocket(f"/ws/jobs/{job.pk}/", user=bob) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)

    assert closed.value.rcvd.code == 4404
    with live.websocket(f"/ws/jobs/{job.pk}/") as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)  # not logged in at all
    assert closed.value.rcvd.code == 4404


def test_the_workers_page_finds_the_live_worker(live, alice):
    workers = {w.name: w for w in worker_list(timeout=2)}

    assert live.worker_name in workers
    assert workers[live.worker_name].device == "cpu"
    status, html = live.get("/jobs/workers/", user=alice)
    assert status == 200 and live.worker_name in html
