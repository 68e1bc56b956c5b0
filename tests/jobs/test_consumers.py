"""The job websocket: history from the database, then the live events; 4404 for anyone else.

In-memory channel layer and Channels' communicator; the Redis path is in test_integration.py.
transactional_db: the consumer reads the database from another thread (database_sync_to_async).
"""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.utils.timezone import now

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
    # Held by a worker with a live heartbeat, as a running job is: the rows are committed, and the
    # reaper of an integration test's worker on the same database requeues a running job without one.
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING, total_steps=8,
                             lease="a-lease", claimed_by="another-host:4242", heartbeat_at=now())
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


def test_a_resumed_run_tells_the_page_to_drop_the_points_past_the_checkpoint(alice, job, monkeypatch):
    import ml

    from jobs.services import _prepare_resume, job_checkpoint_path

    MetricPoint.objects.create(job=job, kind="step", epoch=2, step=6, train_loss=0.5, train_acc=0.8)
    path = job_checkpoint_path(job.id)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"checkpoint")
    monkeypatch.setattr(ml, "read_checkpoint_info", lambda p: {"epoch": 1, "step": 4, "total_steps": 8})

    @async_to_sync
    async def scenario():
        comm = communicator(job.id, alice)
        await comm.connect()
        await comm.receive_json_from(timeout=5)  # history: steps 1, 4 and 6
        await sync_to_async(_prepare_resume)(job, path)
        rewind = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        # A page that reconnects now gets the trimmed curve from the database.
        comm = communicator(job.id, alice)
        await comm.connect()
        history = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return rewind, history

    rewind, history = scenario()

    assert rewind["type"] == "status" and rewind["rewind_to_step"] == 4 and rewind["job"]["step"] == 4
    assert [p["step"] for p in history["points"]] == [1, 4]


def test_a_client_that_reconnects_gets_the_history_then_live_points_with_no_gap_or_repeat(alice, job):
    @async_to_sync
    async def scenario():
        comm = communicator(job.id, alice)
        await comm.connect()
        first = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        # While nobody watches, training goes on.
        await sync_to_async(job_record_progress)(job=job, event=progress_event(step=5, total_steps=8))
        comm = communicator(job.id, alice)
        await comm.connect()
        again = await comm.receive_json_from(timeout=5)
        from jobs.services import _throttle

        _throttle.clear()
        await sync_to_async(job_record_progress)(job=job, event=progress_event(kind="epoch", epoch=2, step=8,
                                                                             total_steps=8, val_loss=0.4, val_acc=0.8))
        live = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return first, again, live

    first, again, live = scenario()

    assert [p["step"] for p in first["points"]] == [1, 4]
    assert [p["step"] for p in again["points"]] == [1, 4, 5]  # what happened while away, from the database
    assert live["type"] == "progress" and live["point"]["step"] == 8
    steps = [p["step"] for p in again["points"]] + [live["point"]["step"]]
    assert steps == sorted(set(steps))
