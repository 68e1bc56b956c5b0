"""Batch prediction faults: a worker killed mid-batch, a stale batch taken back by the reaper, an
archive that stops its worker every time, a run that lost its batch. The leases, heartbeats and
reaper are those of jobs and ingests (README "Jobs and faults").

    .venv/bin/pytest tests/webapp/test_batch_faults.py                 # unit tests, some seconds
    .venv/bin/pytest -m integration tests/webapp/test_batch_faults.py  # plus a real worker killed
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.jobs.test_faults import WAIT_S, faults  # noqa: F401 - the fixture: workers on their own queue
from tests.webapp.test_batch import (  # noqa: F401 - fixtures
    LITTER,
    image_members,
    image_model,
    on_chunk,
    queued_batch,
    read_csv,
    store_model,
    upload,
    zip_bytes,
)
from tests.webapp.test_datasets_faults import ELSEWHERE, dead_pid
from tests.webapp.test_registry import train_result  # noqa: F401 - shared session fixture
from webapp.registry import batch as batches
from webapp.registry.batch import MAX_BATCH_ATTEMPTS, batch_create, batch_reap, batch_run
from webapp.registry.models import BatchPrediction

Status = BatchPrediction.Status
FILES = 40  # + 3 files that cannot be predicted: two chunks


@pytest.fixture
def queued(alice, image_model, monkeypatch, django_capture_on_commit_callbacks):
    return queued_batch(alice, image_model, image_members(FILES), monkeypatch, django_capture_on_commit_callbacks)


@pytest.fixture
def requeued(monkeypatch) -> list[tuple[int, str]]:
    """What the reaper sends back to the queue: (batch id, queue)."""
    sent = []
    monkeypatch.setattr(batches, "_queue", lambda batch_id, queue: sent.append((batch_id, queue)))
    return sent


def left_running(batch: BatchPrediction, *, attempts: int, claimed_by: str = ELSEWHERE, age_s: float = 3600,
                 cancel_requested: bool = False) -> None:
    """As a worker leaves a batch when it is killed mid-run: RUNNING, half done, its partial CSV."""
    BatchPrediction.objects.filter(pk=batch.pk).update(
        status=Status.RUNNING, attempts=attempts, lease="dead-lease", claimed_by=claimed_by,
        heartbeat_at=timezone.now() - timedelta(seconds=age_s), started_at=timezone.now() - timedelta(seconds=age_s),
        done=20, skipped=[{"file": "x", "reason": "y"}], cancel_requested=cancel_requested)
    (batches.batch_directory(batch) / "predictions.csv.dead-lease.part").write_text("file,top1\nhalf,done\n")


def rows_expected(members: dict[str, bytes]) -> list[str]:
    """The CSV's files, in archive order: every member but the system litter."""
    return [name for name in members if name not in LITTER]


def files_of(batch: BatchPrediction) -> list[str]:
    return sorted(p.name for p in batches.batch_directory(batch).iterdir())


def assert_complete(batch: BatchPrediction, *, attempts: int) -> None:
    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED, batch.error
    assert (batch.attempts, batch.lease, batch.heartbeat_at) == (attempts, "", None)
    assert batch.done == batch.total == FILES + 3 and len(batch.skipped) == 3
    assert [row["file"] for row in read_csv(batches.batch_csv_path(batch))] == rows_expected(image_members(FILES))
    assert files_of(batch) == ["predictions.csv"]  # no .part of any run, no archive


# --- Claims ---------------------------------------------------------------------------------------


def test_a_batch_remembers_its_queue_counts_its_attempt_and_leaves_no_lease_behind(queued):
    from webapp.celery import app

    assert queued.queue == (app.conf.task_default_queue or "") and queued.attempts == 0
    batch_run(batch_id=queued.pk)
    assert_complete(queued, attempts=1)


def test_a_claim_takes_a_new_lease_and_nobody_else_can_claim_while_its_holder_lives(queued):
    claimed = batches._claim(queued.pk)

    assert claimed.status == Status.RUNNING and len(claimed.lease) == 32 and claimed.attempts == 1
    assert claimed.claimed_by.startswith(f"{socket.gethostname()}:") and claimed.heartbeat_at is not None
    assert batches._claim(queued.pk) is None  # this very process holds it, alive
    assert batch_reap() == 0
    BatchPrediction.objects.filter(pk=queued.pk).update(claimed_by=ELSEWHERE)  # alive elsewhere: a fresh heartbeat
    assert batches._claim(queued.pk) is None and batch_reap() == 0
    queued.refresh_from_db()
    assert (queued.status, queued.lease, queued.attempts) == (Status.RUNNING, claimed.lease, 1)


def test_a_redelivered_task_takes_over_a_batch_whose_heartbeat_is_stale(queued):
    left_running(queued, attempts=1)
    batch_run(batch_id=queued.pk)
    assert_complete(queued, attempts=2)


def test_a_redelivered_task_takes_over_at_once_when_the_holder_pid_on_this_host_is_gone(queued):
    left_running(queued, attempts=1, claimed_by=f"{socket.gethostname()}:{dead_pid()}", age_s=0)
    batch_run(batch_id=queued.pk)
    assert_complete(queued, attempts=2)


# --- The reaper -----------------------------------------------------------------------------------


def test_the_reaper_queues_a_stale_batch_again_to_its_queue_and_the_next_run_starts_over(
        queued, requeued, django_capture_on_commit_callbacks):
    BatchPrediction.objects.filter(pk=queued.pk).update(queue="gpu-box")
    left_running(queued, attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert batch_reap() == 1

    queued.refresh_from_db()
    assert requeued == [(queued.pk, "gpu-box")]
    assert (queued.status, queued.lease, queued.claimed_by, queued.heartbeat_at) == (Status.QUEUED, "", "", None)
    assert queued.attempts == 1 and batch_reap() == 0  # a queued batch is no one's to reap
    batch_run(batch_id=queued.pk)  # what the queued task does
    assert_complete(queued, attempts=2)


def test_the_reaper_takes_back_at_once_a_batch_whose_holder_pid_on_this_host_is_gone(queued, requeued):
    left_running(queued, attempts=1, claimed_by=f"{socket.gethostname()}:{dead_pid()}", age_s=0)
    assert batch_reap() == 1
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED


@pytest.mark.parametrize("by", ["the reaper", "a redelivered task"])
def test_a_batch_whose_worker_stopped_three_times_fails_with_the_reason(queued, requeued, by, monkeypatch):
    monkeypatch.setattr(batches, "_predict_archive", lambda *args: pytest.fail("tried a fourth time"))
    left_running(queued, attempts=MAX_BATCH_ATTEMPTS)
    if by == "the reaper":
        assert batch_reap() == 1
    else:
        batch_run(batch_id=queued.pk)

    queued.refresh_from_db()
    assert queued.status == Status.FAILED and queued.finished_at is not None
    assert (queued.attempts, queued.lease, queued.heartbeat_at) == (3, "", None)
    assert queued.error.startswith("The worker running this batch stopped 3 times before it finished")
    assert "at most 3 attempts" in queued.error
    assert requeued == [] and batches.batch_csv_path(queued) is None
    assert files_of(queued) == []  # neither the dead run's rows nor the archive are kept


def test_a_dead_batch_whose_cancel_was_asked_for_is_cancelled_not_queued_again(queued, requeued):
    left_running(queued, attempts=1, cancel_requested=True)
    assert batch_reap() == 1
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED and queued.finished_at is not None and requeued == []
    assert files_of(queued) == []


# --- A run that lost its batch ------------------------------------------------------------------


def test_a_run_whose_batch_was_reaped_and_claimed_again_writes_nothing_over_the_new_holder(
        queued, requeued, monkeypatch):
    """The run's worker was presumed dead (its heartbeat late: a stalled machine) while it still ran:
    the reaper queued the batch again and another run claimed it. The old run's next write is refused;
    it stops, keeps away from the new run's files and leaves it the archive."""
    new = {}

    def presumed_dead(number: int) -> None:
        if number == 2:
            BatchPrediction.objects.filter(pk=queued.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
            assert batch_reap() == 1
            new["batch"] = batches._claim(queued.pk)
            (batches.batch_directory(queued) / f"predictions.csv.{new['batch'].lease}.part").write_text("new run\n")

    on_chunk(monkeypatch, presumed_dead)
    batch_run(batch_id=queued.pk)

    queued.refresh_from_db()
    assert (queued.status, queued.lease, queued.attempts, queued.done) == (Status.RUNNING, new["batch"].lease, 2, 0)
    assert queued.started_at == new["batch"].started_at and queued.finished_at is None and queued.skipped == []
    assert files_of(queued) == ["archive", f"predictions.csv.{new['batch'].lease}.part"]
    # Nor can a finish or a progress write of the old run's lease touch it.
    old = BatchPrediction(pk=queued.pk, lease="an-old-lease")
    batches._finish(batches._held(old), batches._Tally(predicted=5), Status.SUCCEEDED)
    assert BatchPrediction.objects.get(pk=queued.pk).status == Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_of_a_run_that_lost_its_batch_does_not_renew_the_new_holder(
        alice, image_model, settings, monkeypatch, django_capture_on_commit_callbacks):
    from jobs.services import LeaseHeartbeat

    settings.JOB_HEARTBEAT_S = 0.05
    batch = queued_batch(alice, image_model, image_members(4), monkeypatch, django_capture_on_commit_callbacks)
    old = batches._claim(batch.pk)
    with LeaseHeartbeat(batches._held(old), name="old run") as heartbeat:
        time.sleep(0.3)
        beaten = BatchPrediction.objects.get(pk=batch.pk).heartbeat_at
        # A fresh-looking time: an hour-old heartbeat was reaped (set to None) by a live stack's
        # worker from an earlier test, whose reaper shares the test database.
        earlier = timezone.now() - timedelta(seconds=2)
        BatchPrediction.objects.filter(pk=batch.pk).update(lease="new-holder", heartbeat_at=earlier)
        time.sleep(0.3)

    assert beaten > old.heartbeat_at and heartbeat.lost is True
    assert BatchPrediction.objects.get(pk=batch.pk).heartbeat_at == earlier  # not renewed by the old run


# --- A real worker, killed --------------------------------------------------------------------------

KILLED_FILES = 300  # 8×8 images: ten chunks, each slowed to 0.3 s in the workers (tests/jobs/fault_hooks.py)
SLOW_CHUNKS = {"PERCEPTOR_TEST_BATCH_CHUNK_S": "0.3"}


@pytest.mark.integration
def test_a_batch_whose_worker_is_killed_finishes_with_a_complete_csv_after_a_new_worker_starts(
        faults, alice, train_result):  # noqa: F811 - the fixtures
    faults.start_worker("first", env=SLOW_CHUNKS)
    model = store_model(train_result, alice)
    members = image_members(KILLED_FILES)
    batch = batch_create(user=alice, model=model, upload=upload(zip_bytes(members)))  # queued on commit

    def state() -> BatchPrediction:
        return BatchPrediction.objects.get(pk=batch.pk)

    faults.wait_for(lambda: (b := state()).status == Status.RUNNING and b.done > 0, timeout=WAIT_S,
                    what="the batch to be under way")
    faults.kill("first")
    killed = time.monotonic()
    left = state()
    assert left.status == Status.RUNNING and 0 < left.done < left.total, "killed too late"
    assert left.attempts == 1 and list(batches.batch_directory(left).glob("*.part"))  # the dead run's rows

    faults.start_worker("second", env=SLOW_CHUNKS)
    ended = faults.wait_for(lambda: (b := state()).is_finished and b, timeout=WAIT_S,
                            what="the batch to finish on the new worker")

    assert ended.status == Status.SUCCEEDED, ended.error
    expected = rows_expected(members)
    assert (ended.attempts, ended.lease, ended.done, ended.total) == (2, "", len(expected), len(expected))
    rows = read_csv(batches.batch_csv_path(ended))
    assert [row["file"] for row in rows] == expected  # each file once, in archive order: nothing of the dead run
    assert sum(1 for row in rows if row["error"]) == 3 and len(ended.skipped) == 3
    assert sum(row["top1"] == row["file"].split("/")[0] for row in rows if not row["error"]) >= 0.9 * KILLED_FILES
    assert files_of(ended) == ["predictions.csv"]  # the killed run's .part and the archive are gone
    print(f"\nFAULTS batch_sigkill_to_succeeded_s={time.monotonic() - killed:.1f} (includes starting a worker)")
