"""A real websocket (Daphne, channels-redis, a Celery worker) that disconnects mid-training and
reconnects: history from the database, then live events, steps monotonic, nothing lost or repeated.

    .venv/bin/pytest -m integration tests/jobs/test_reconnect.py
"""

import time

import pytest

from jobs.models import Job
from jobs.services import job_create
from tests.jobs.conftest import TINY_CONFIG, make_ready_dataset

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")


def read_until(live, ws, stop, timeout=120):
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages.append(live.receive_json(ws, timeout=timeout))
        if stop(messages[-1]):
            return messages
    raise AssertionError(f"gave up after {timeout} s: {messages[-3:]}")


def test_a_client_that_reconnects_mid_training_gets_history_then_live_events_without_gaps(live, alice):
    dataset = make_ready_dataset(alice, num_train=512, size=16)
    job = job_create(user=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 3, "batch_size": 4})

    with live.websocket(f"/ws/jobs/{job.pk}/", user=alice) as ws:
        first = read_until(live, ws, lambda m: m["type"] == "progress" and m["point"] and m["point"]["step"] > 0)
    time.sleep(1.0)  # training goes on while nobody watches
    with live.websocket(f"/ws/jobs/{job.pk}/", user=alice) as ws:
        history, *after = read_until(live, ws, lambda m: m["job"]["status"] in FINISHED, timeout=300)

    assert first[0]["type"] == "history" and history["type"] == "history"
    stored_by_then = [p["step"] for p in history["points"]]
    assert stored_by_then == sorted(stored_by_then) and stored_by_then  # everything so far, in order
    live_points = [m["point"] for m in after if m["type"] == "progress" and m["point"]]
    # The consumer joins the group before reading the history, so a point may come twice (the page
    # drops it by (kind, step)); after that, steps only go up.
    seen = {(p["kind"], p["step"]) for p in history["points"]}
    fresh = [p for p in live_points if (p["kind"], p["step"]) not in seen]
    assert [p["step"] for p in fresh] == sorted(p["step"] for p in fresh)
    assert not fresh or fresh[0]["step"] >= stored_by_then[-1]
    # No gap: the page ends with exactly the curve the database holds.
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    drawn = sorted(seen | {(p["kind"], p["step"]) for p in fresh}, key=lambda k: (k[1], k[0]))
    assert drawn == sorted(job.points.values_list("kind", "step"), key=lambda k: (k[1], k[0]))
