"""Ingest faults: a worker killed mid-ingest, a stale ingest taken over, an archive that kills its
worker every time. The leases, heartbeats and reaper are those of jobs (README "Jobs and faults").

    .venv/bin/pytest tests/webapp/test_datasets_faults.py                 # unit tests, a few seconds
    .venv/bin/pytest -m integration tests/webapp/test_datasets_faults.py  # plus a real worker killed
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from tests.jobs.test_faults import WAIT_S, faults  # noqa: F401 - the fixture: workers on their own queue
from tests.webapp.test_datasets import shapes_zip, upload
from webapp.datasets import services
from webapp.datasets.models import Dataset
from webapp.datasets.services import MAX_INGEST_ATTEMPTS, dataset_create, dataset_ingest, dataset_reap

ELSEWHERE = "another-host:1"  # a holder on another machine: only its heartbeat tells whether it lives


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def pending(alice, tmp_path):
    return dataset_create(owner=alice, name="Shapes", archive=upload(data=shapes_zip(tmp_path)), options={},
                          queue_ingest=False)


def left_ingesting(dataset: Dataset, *, attempts: int, claimed_by: str = ELSEWHERE, age_s: float = 3600) -> None:
    """As a worker leaves it when it is killed mid-ingest."""
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.INGESTING, attempts=attempts, lease="dead-lease", claimed_by=claimed_by,
        heartbeat_at=timezone.now() - timedelta(seconds=age_s), progress=0.4)


# --- Claims ---------------------------------------------------------------------------------------


def test_an_ingest_counts_its_attempt_and_leaves_no_lease_behind(pending):
    dataset_ingest(dataset_id=pending.pk)
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.READY, pending.error
    assert pending.attempts == 1 and pending.lease == "" and pending.heartbeat_at is None


def test_a_redelivered_ingest_takes_over_a_dataset_whose_heartbeat_is_stale(pending):
    left_ingesting(pending, attempts=1)
    dataset_ingest(dataset_id=pending.pk)
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.READY, pending.error
    assert pending.attempts == 2 and pending.num_samples == 8 and pending.error == ""


def test_a_redelivered_ingest_takes_over_at_once_when_the_holder_pid_on_this_host_is_gone(pending):
    left_ingesting(pending, attempts=1, claimed_by=f"{socket.gethostname()}:{dead_pid()}", age_s=0)
    dataset_ingest(dataset_id=pending.pk)
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.READY and pending.attempts == 2


def test_an_ingest_with_a_live_heartbeat_is_left_to_its_holder(pending, monkeypatch):
    monkeypatch.setattr(services, "ingest_image_archive", lambda *a, **k: pytest.fail("ingested twice"))
    left_ingesting(pending, attempts=1, age_s=0)
    dataset_ingest(dataset_id=pending.pk)
    assert dataset_reap() == 0
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.INGESTING and pending.attempts == 1 and pending.lease == "dead-lease"


def test_an_archive_that_stopped_its_worker_three_times_fails_with_the_reason(pending, monkeypatch):
    monkeypatch.setattr(services, "ingest_image_archive", lambda *a, **k: pytest.fail("tried a fourth time"))
    left_ingesting(pending, attempts=MAX_INGEST_ATTEMPTS)
    dataset_ingest(dataset_id=pending.pk)
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.FAILED and pending.attempts == 3 and pending.lease == ""
    assert "stopped 3 times" in pending.error and "at most 3 attempts" in pending.error


def test_an_ingest_that_lost_its_lease_stops_and_writes_nothing(pending, monkeypatch):
    monkeypatch.setattr(services, "PROGRESS_INTERVAL_S", 0.0)

    def taken_over(done, total):  # the reaper and another worker took it meanwhile
        Dataset.objects.filter(pk=pending.pk).update(lease="someone-else")

    dataset_ingest(dataset_id=pending.pk, progress=taken_over)
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.INGESTING and pending.lease == "someone-else"
    assert pending.num_samples == 0 and pending.error == ""


# --- The reaper -----------------------------------------------------------------------------------


def test_the_reaper_queues_a_dead_ingest_again(pending, monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr(services, "_queue_ingest", lambda dataset_id, queue: queued.append(dataset_id))
    left_ingesting(pending, attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert dataset_reap() == 1
    pending.refresh_from_db()
    assert queued == [pending.pk]
    assert pending.status == Dataset.Status.PENDING and pending.lease == "" and pending.attempts == 1
    dataset_ingest(dataset_id=pending.pk)  # what the queued task does
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.READY and pending.attempts == 2


def test_the_reaper_fails_a_dead_ingest_out_of_attempts(pending, monkeypatch):
    monkeypatch.setattr(services, "_queue_ingest", lambda dataset_id, queue: pytest.fail("queued again"))
    left_ingesting(pending, attempts=MAX_INGEST_ATTEMPTS)
    assert dataset_reap() == 1
    pending.refresh_from_db()
    assert pending.status == Dataset.Status.FAILED and "stopped 3 times" in pending.error


# --- A real worker, killed --------------------------------------------------------------------------


def slow_archive(tmp_path) -> bytes:
    """Many members sharing a few rendered images: quick to write, a few seconds to ingest."""
    from ml.synthetic import image_bytes, render_shapes, write_archive

    images = [(f"{kind}/{i}", image_bytes(img)) for kind, i, img in render_shapes(classes=("circle", "square"),
                                                                                   per_class=8, size=64)]
    members = [(f"{stem}_{n}.png", data) for n in range(400) for stem, data in images]  # 6,400 files
    return write_archive(tmp_path / "slow.zip", members).read_bytes()


@pytest.mark.integration
def test_a_dataset_whose_ingest_worker_is_killed_ends_ready_after_a_new_worker_starts(faults, alice, tmp_path):  # noqa: F811
    faults.start_worker("first")
    dataset = dataset_create(owner=alice, name="Slow", options={"image_size": 32},
                             archive=SimpleUploadedFile("slow.zip", slow_archive(tmp_path), "application/zip"))

    def state() -> Dataset:
        return Dataset.objects.get(pk=dataset.pk)

    faults.wait_for(lambda: (d := state()).status == Dataset.Status.INGESTING and d.progress > 0, timeout=WAIT_S,
                    what="the ingest to be under way")
    faults.kill("first")
    killed = time.monotonic()
    assert state().status == Dataset.Status.INGESTING and state().progress < 0.99, "killed too late"

    faults.start_worker("second")
    ready = faults.wait_for(lambda: (d := state()).status in (Dataset.Status.READY, Dataset.Status.FAILED) and d,
                            timeout=WAIT_S, what="the ingest to finish on the new worker")

    assert ready.status == Dataset.Status.READY, ready.error
    assert ready.attempts == 2 and ready.num_samples == 6400 and ready.lease == ""
    leftovers = [p.name for p in (faults.media_root / "datasets").iterdir() if p.name != str(dataset.pk)]
    assert leftovers == []  # the killed worker's half-written hidden folder is gone
    print(f"\nFAULTS ingest_sigkill_to_ready_s={time.monotonic() - killed:.1f} (includes starting a worker)")
