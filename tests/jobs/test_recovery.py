"""Leases, heartbeats, the reaper, resume/retry/clone, notices and the queue estimate, in process.
The same faults with real, killed worker processes are in test_faults.py."""

import contextlib
import os
import socket
import threading
import time
from datetime import timedelta

import ml
import pytest
from django.utils.timezone import now

from jobs import services
from jobs.models import Job, MetricPoint
from jobs.selectors import job_queue_estimate, job_queue_positions
from jobs.services import (
    JobStateError,
    job_cancel,
    job_checkpoint_path,
    job_reap,
    job_record_progress,
    job_resume,
    job_retry,
    job_run,
    job_snapshot,
)
from tests.jobs.conftest import TINY_CONFIG, progress_event
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.django_db


def held_job(owner, dataset, *, heartbeat_age_s=0.0, claimed_by="another-host:4242", attempts=1, **fields) -> Job:
    """A running job held by some process, last heard of `heartbeat_age_s` ago."""
    return Job.objects.create(
        owner=owner, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING, lease="old-lease",
        claimed_by=claimed_by, attempts=attempts, heartbeat_at=now() - timedelta(seconds=heartbeat_age_s),
        worker="celery@elsewhere", **fields)


def stale(settings) -> float:
    return settings.JOB_STALE_AFTER_S + 1


# --- The reaper --------------------------------------------------------------------------------


def test_the_reaper_requeues_a_running_job_whose_heartbeat_is_stale(alice, dataset, queued, settings, pushes,
                                                                    django_capture_on_commit_callbacks):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings))

    with django_capture_on_commit_callbacks(execute=True):
        assert job_reap() == 1

    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert (job.lease, job.claimed_by, job.heartbeat_at, job.attempts) == ("", "", None, 1)
    assert queued == [job.pk]
    assert [p["job"]["status"] for _, _, p in pushes] == ["queued"]


def test_the_reaper_leaves_a_job_with_a_fresh_heartbeat_alone(alice, dataset, queued, settings):
    job = held_job(alice, dataset, heartbeat_age_s=settings.JOB_STALE_AFTER_S / 3)

    assert job_reap() == 0

    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.lease == "old-lease" and queued == []


def test_the_reaper_takes_back_at_once_a_job_whose_process_on_this_host_is_gone(alice, dataset, queued,
                                                                                django_capture_on_commit_callbacks):
    job = held_job(alice, dataset, claimed_by=f"{socket.gethostname()}:{2**22 + 12345}")  # no such pid

    with django_capture_on_commit_callbacks(execute=True):
        assert job_reap() == 1

    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and queued == [job.pk]


def test_the_reaper_fails_a_dead_job_that_used_all_its_attempts_and_says_why(alice, dataset, queued, settings):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings), attempts=3)

    assert job_reap() == 1

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.finished_at is not None
    assert "stopped 3 times" in job.error and "at most 3 attempts" in job.error
    assert queued == []


def test_the_reaper_finishes_a_dead_job_that_was_being_cancelled_as_cancelled(alice, dataset, queued, settings):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings), cancel_requested=True)

    job_reap()

    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and queued == []


# --- The lease ---------------------------------------------------------------------------------


def test_a_task_delivered_again_does_nothing_while_the_job_runs_elsewhere_with_a_live_heartbeat(
    alice, dataset, monkeypatch, pushes
):
    job = held_job(alice, dataset)
    monkeypatch.setattr(ml, "train", lambda *a, **k: pytest.fail("trained a job that runs elsewhere"))

    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.lease == "old-lease" and job.attempts == 1
    assert pushes == []


def test_a_task_delivered_again_takes_over_a_job_whose_heartbeat_is_stale_and_counts_the_attempt(
    alice, dataset, settings
):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings))

    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 2 and job.lease != "old-lease"
    assert job.claimed_by.startswith(socket.gethostname() + ":")
    assert TrainedModel.objects.filter(job=job).count() == 1


def test_a_task_for_a_job_out_of_attempts_fails_it_without_training(alice, dataset, monkeypatch, settings):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings), attempts=3)
    monkeypatch.setattr(ml, "train", lambda *a, **k: pytest.fail("trained a poison job again"))

    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "stopped 3 times" in job.error


def test_a_worker_that_lost_its_lease_writes_no_progress(alice, dataset):
    job = held_job(alice, dataset)
    stale_copy = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(lease="new-holder")  # requeued and claimed by someone else

    assert job_record_progress(job=stale_copy, event=progress_event(kind="epoch", step=4)) is False

    assert not MetricPoint.objects.exists()
    job.refresh_from_db()
    assert job.step == 0


# --- Checkpoints: cancel keeps one, resume continues from it, retry starts over ---------------


def cancel_after_first_epoch(monkeypatch):
    """The user presses Cancel as soon as epoch 1 is recorded."""
    monkeypatch.setattr(services, "CANCEL_POLL_S", 0.0)
    real = services.job_record_progress

    def record(*, job, event):
        stored = real(job=job, event=event)
        if event.kind == "epoch" and event.epoch == 1:
            Job.objects.filter(pk=job.pk).update(cancel_requested=True)
        return stored

    monkeypatch.setattr(services, "job_record_progress", record)


def test_a_cancelled_job_keeps_its_checkpoint_and_resume_continues_the_curve_from_it(
    alice, dataset, monkeypatch, queued, django_capture_on_commit_callbacks
):
    job = Job.objects.create(owner=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 3})
    cancel_after_first_epoch(monkeypatch)
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job_checkpoint_path(job.pk).is_file() and job_snapshot(job)["can_resume"] is True
    before = list(job.points.values_list("kind", "step"))
    monkeypatch.setattr(services, "job_record_progress", job_record_progress)  # no more cancelling

    with django_capture_on_commit_callbacks(execute=True):
        job = job_resume(job=job)
    assert job.status == Job.Status.QUEUED and not job.cancel_requested and queued == [job.pk]
    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 1
    points = list(job.points.values_list("kind", "step"))
    assert points[: len(before)] == before  # the curve before the cancel is kept as it was
    assert [e for e in job.points.filter(kind="epoch").values_list("epoch", flat=True)] == [1, 2, 3]
    steps = [s for k, s in points if k == "step"]
    assert steps == sorted(set(steps))
    assert any("Resumed from the checkpoint" in n["message"] for n in job.notices)
    assert not job_checkpoint_path(job.pk).exists()  # gone once the model is stored
    assert TrainedModel.objects.filter(job=job).count() == 1


def test_retry_discards_the_checkpoint_and_the_curve(alice, dataset, monkeypatch, queued):
    job = Job.objects.create(owner=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 3})
    cancel_after_first_epoch(monkeypatch)
    job_run(job_id=job.pk)

    job = job_retry(job=Job.objects.get(pk=job.pk))

    assert job.status == Job.Status.QUEUED and (job.step, job.epoch, job.progress, job.attempts) == (0, 0, 0.0, 0)
    assert not job.points.exists() and not job_checkpoint_path(job.pk).exists()


def test_a_checkpoint_that_does_not_match_is_discarded_and_training_starts_over(alice, dataset):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    path = job_checkpoint_path(job.pk)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")

    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert list(job.points.filter(kind="epoch").values_list("epoch", flat=True)) == [1, 2]


def test_resume_refuses_a_job_without_a_checkpoint_and_a_running_job(alice, dataset):
    cancelled = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.CANCELLED)
    running = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING)

    with pytest.raises(JobStateError, match="no checkpoint to resume from"):
        job_resume(job=cancelled)
    with pytest.raises(JobStateError, match="cannot be retried: it is running"):
        job_retry(job=running)
    assert Job.objects.get(pk=cancelled.pk).status == Job.Status.CANCELLED


# --- Notices -----------------------------------------------------------------------------------


def test_a_notice_from_training_is_recorded_on_the_job_and_is_not_a_point(alice, dataset, monkeypatch, pushes):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    notice = ml.ProgressEvent(kind="notice", epoch=1, epochs=2, step=5, total_steps=8, train_loss=float("nan"),
                              train_acc=float("nan"), val_loss=None, val_acc=None, lr=1e-3, samples_per_s=0.0,
                              elapsed_s=1.0, message="Out of GPU memory at batch 8: continuing with 2 × 4")

    def train(config, data, *, callbacks=(), **kwargs):
        for callback in callbacks:
            callback(notice)
        raise ml.Cancelled("stop here")

    monkeypatch.setattr(ml, "train", train)
    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert [n["message"] for n in job.notices] == ["Out of GPU memory at batch 8: continuing with 2 × 4"]
    assert (job.notices[0]["epoch"], job.notices[0]["step"]) == (1, 5)
    assert not job.points.exists()
    assert any(p["job"]["notices"] for _, _, p in pushes)


# --- The queue ---------------------------------------------------------------------------------


def test_queued_jobs_know_their_place_and_the_next_ones_when_they_start(alice, dataset):
    Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING, eta_s=120.0)
    Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.RUNNING, eta_s=30.0)
    first, second, third = (Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG) for _ in range(3))

    assert job_queue_estimate(job=first) == {"queue_position": 1, "starts_in_s": 30.0}
    assert job_queue_estimate(job=second) == {"queue_position": 2, "starts_in_s": 120.0}
    assert job_queue_estimate(job=third) == {"queue_position": 3, "starts_in_s": None}  # unknown, not a guess
    assert job_queue_positions() == {first.pk: 1, second.pk: 2, third.pk: 3}
    job_cancel(job=first)
    assert job_snapshot(second)["queue_position"] == 1


# --- The heartbeat thread ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_beats_while_training_and_notices_a_lost_lease(alice, dataset, settings):
    import time

    settings.JOB_HEARTBEAT_S = 0.05
    # Committed (a transactional test), so the reaper of a live worker from an earlier test, which
    # shares the test database, sees it too: a heartbeat younger than its stale limit keeps it away.
    job = held_job(alice, dataset, heartbeat_age_s=20)
    first = job.heartbeat_at

    with services._Heartbeat(job) as heartbeat:
        time.sleep(0.3)
        beaten = Job.objects.get(pk=job.pk).heartbeat_at
        Job.objects.filter(pk=job.pk).update(lease="someone-else")
        time.sleep(0.3)

    assert beaten > first + timedelta(seconds=19)
    assert heartbeat.lost is True


def test_a_job_whose_worker_died_after_storing_the_model_finishes_without_training_again(
    alice, dataset, monkeypatch, settings
):
    job = held_job(alice, dataset, heartbeat_age_s=stale(settings))
    TrainedModel.objects.create(owner=alice, job=job, dataset=dataset, name="brightness · seed_cnn", arch="seed_cnn")
    monkeypatch.setattr(ml, "train", lambda *a, **k: pytest.fail("trained a job whose model is stored"))

    job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.progress == 1.0 and job.error == ""
    assert TrainedModel.objects.filter(job=job).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_child_forked_while_the_reaper_writes_can_still_write(alice, monkeypatch):
    # The prefork pool forks a new child whenever one dies (a job that kills its worker). A child
    # forked in the middle of a reaper's SQLite write used to inherit a lock nobody releases and fail
    # every write with "database is locked"; the fork now waits for the reaper's round to end.
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    from jobs import tasks

    holding = threading.Event()

    def reap_holding_a_write():
        if holding.is_set():
            return
        with transaction.atomic():
            User.objects.filter(pk=alice.pk).update(first_name="reaper")
            holding.set()
            time.sleep(0.5)

    monkeypatch.setattr(services, "job_reap", reap_holding_a_write)
    reaper = threading.Thread(target=tasks._reap_forever, args=(0.01,))
    reaper.start()
    try:
        assert holding.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: drop the parent's connection as Celery does, then write
            code = 1
            try:
                # Closing the inherited socket first: a goodbye to PostgreSQL would end the parent's session.
                with contextlib.suppress(AttributeError, OSError):
                    os.close(connection.connection.fileno())
                with contextlib.suppress(Exception):
                    connection.close()
                if connection.vendor == "sqlite":  # fail in seconds, not after the 30 s busy timeout
                    connection.settings_dict["OPTIONS"] = {**connection.settings_dict["OPTIONS"], "timeout": 3}
                User.objects.filter(pk=alice.pk).update(last_name="child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        tasks._reaper_stop.set()
        reaper.join(30)
        tasks._reaper_stop.clear()

    assert os.waitstatus_to_exitcode(status) == 0, "the forked child could not write"
    assert User.objects.get(pk=alice.pk).last_name == "child"
