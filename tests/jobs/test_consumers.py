"""The job websocket: history from the database, then the live events; 4404 for anyone else.

In-memory channel layer and Channels' communicator; the Redis path is in test_integration.py.
transactional_db: the consumer reads the database from another thread (database_sync_to_async).
"""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from jobs.consumers import CLOSE_NOT_FOUND
from jobs.models import Job, MetricPoint
from jobs.routing import websocket_urlpatterns
from jobs.services import job_cancel, job_record_progress
from tests.jobs.conftest import TINY_CONFIG, progress_event

pytestmark = pytest.mark.django_db(transaction=True)

application = URLRouter(websocket_urlpatterns)


def communicator(job_id, user) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/")
    comm.scope["user"] = user  # what AuthMiddlewareStack puts there in the real stack
    return comm


@pytest.fixture
def job(alice, dataset):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING, total_steps=8)
    MetricPoint.objects.create(job=job, kind="step", epoch=1, step=1, train_loss=0.9, train_acc=0.4)
    MetricPoint.objects.create(job=job, kind="epoch", epoch=1, step=4, train_loss=0.6, train_acc=0.7, val_loss=0.5, val_acc=0.75)
    return job


def test_the_owner_gets_the_history_first_then_live_progress_and_status(alice, job):
    @async_to_sync
    async def scenario():
        comm = communicator(job.id, alice)
        connected, _ = await comm.connect()
        assert connected
        history = await comm.receive_json_from(timeout=5)
        # The worker reports a step, then the user cancels: both arrive, in order.
        await sync_to_async(job_record_progress)(job=job, event=progress_event(step=5, total_steps=8))
        progress = await comm.receive_json_from(timeout=5)
        await sync_to_async(job_cancel)(job=job)
        status = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return history, progress, status

    history, progress, status = scenario()

    assert history["type"] == "history"
    assert history["job"]["id"] == job.id and history["job"]["status"] == "running"
    assert [(p["kind"], p["step"], p["val_acc"]) for p in history["points"]] == [("step", 1, None), ("epoch", 4, 0.75)]
    assert progress["type"] == "progress"
    assert progress["job"]["step"] == 5 and progress["job"]["progress"] == 0.625
    assert progress["point"] == {
        "kind": "step", "epoch": 1, "step": 5, "train_loss": 0.7, "train_acc": 0.5, "val_loss": None,
        "val_acc": None, "lr": 0.001, "samples_per_s": 100.0,
    }
    assert status == {"type": "status", "job": {**progress["job"], "cancel_requested": True}}


def test_staff_may_watch_anyones_job(charlie, job):
    @async_to_sync
    async def scenario():
        comm = communicator(job.id, charlie)
        await comm.connect()
        message = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return message

    assert scenario()["type"] == "history"


@pytest.mark.parametrize("who", ["bob", "anonymous", "missing job"])
def test_anyone_else_is_closed_with_4404_and_hears_nothing(who, bob, job):
    user = {"bob": bob, "anonymous": AnonymousUser(), "missing job": bob}[who]
    job_id = job.id + 1000 if who == "missing job" else job.id

    @async_to_sync
    async def scenario():
        comm = communicator(job_id, user)
        await comm.connect()
        closed = await comm.receive_output(timeout=5)
        # Even if the job then makes progress, nothing reaches this socket.
        await sync_to_async(job_record_progress)(job=job, event=progress_event(step=5))
        silent = await comm.receive_nothing(timeout=0.2)
        await comm.disconnect()
        return closed, silent

    closed, silent = scenario()

    assert (closed["type"], closed["code"]) == ("websocket.close", CLOSE_NOT_FOUND)
    assert silent
