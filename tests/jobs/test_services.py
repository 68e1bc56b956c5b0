"""jobs.services: creating, running, reporting, cancelling. Real ml on tiny data where it matters;
a scripted fake `ml.train` where the test is about what the job system does with its events."""

import math
from datetime import timedelta

import ml
import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.utils.timezone import now

from jobs import services
from jobs.models import Job, MetricPoint
from jobs.services import (
    JobStateError,
    job_cancel,
    job_create,
    job_requeue_orphans,
    job_record_progress,
    job_run,
    job_snapshot,
)
from tests.jobs.conftest import TINY_CONFIG, progress_event
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.django_db


def running_job(owner, dataset, **config) -> Job:
    return Job.objects.create(owner=owner, dataset=dataset, config={**TINY_CONFIG, **config}, status=Job.Status.RUNNING)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def scripted_train(events, *, during=None):
    """A stand-in for ml.train that feeds `events` to the callbacks, calling during(i) before each."""
    calls = []

    def train(config, data, *, callbacks=(), device="auto", **kwargs):
        calls.append(config)
        for i, event in enumerate(events):
            if during:
                during(i)
            for callback in callbacks:
                callback(event)
        raise AssertionError("scripted_train ends by raising; tests never reach registration")

    return train, calls


# --- job_create --------------------------------------------------------------------------------


def test_create_saves_a_queued_job_with_the_full_config_and_queues_it_after_commit(
    alice, dataset, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = job_create(user=alice, dataset=dataset, config={"epochs": 3, "arch": "seed_cnn"})

    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert job.owner == alice and job.dataset == dataset
    assert job.config == {**ml.TrainConfig().to_dict(), "epochs": 3, "arch": "seed_cnn"}
    assert len(callbacks) == 1
    assert queued == [job.id]


def test_create_names_the_field_and_the_allowed_range_of_a_bad_hyperparameter(alice, dataset, queued):
    with pytest.raises(ValidationError) as caught:
        job_create(user=alice, dataset=dataset, config={"epochs": 0})

    assert list(caught.value.message_dict) == ["epochs"]
    assert "between 1 and 500" in caught.value.message_dict["epochs"][0]
    assert not Job.objects.exists()
    assert queued == []


def test_create_names_an_unknown_hyperparameter(alice, dataset):
    with pytest.raises(ValidationError) as caught:
        job_create(user=alice, dataset=dataset, config={"learning_rate": 0.1})

    assert "learning_rate" in caught.value.message_dict
    assert "Choose from" in caught.value.message_dict["learning_rate"][0]
    assert not Job.objects.exists()


def test_create_refuses_a_config_that_is_not_an_object(alice, dataset):
    with pytest.raises(ValidationError) as caught:
        job_create(user=alice, dataset=dataset, config=["epochs", 3])

    assert list(caught.value.message_dict) == ["config"]
    assert not Job.objects.exists()


def test_create_refuses_a_dataset_that_is_not_ready(alice, dataset):
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.INGESTING)

    with pytest.raises(ValidationError) as caught:
        job_create(user=alice, dataset=dataset, config={})  # the stale instance still says READY

    assert caught.value.message_dict == {"dataset": ["Dataset “brightness” is not ready yet (ingesting)."]}
    assert not Job.objects.exists()


def test_create_refuses_someone_elses_dataset(bob, dataset):
    with pytest.raises(ValidationError) as caught:
        job_create(user=bob, dataset=dataset, config={})

    assert caught.value.message_dict == {"dataset": ["Choose one of your datasets."]}
    assert not Job.objects.exists()


def test_staff_may_train_on_anyones_dataset(charlie, dataset, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = job_create(user=charlie, dataset=dataset, config={})

    assert job.owner == charlie
    assert queued == [job.id]


def test_a_job_that_cannot_be_queued_fails_with_a_message_instead_of_waiting_forever(
    alice, dataset, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(args, **kwargs):
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("jobs.tasks.run_job.apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_create(user=alice, dataset=dataset, config={})

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The job queue could not be reached, so the job was not started. Try again."


# --- job_run -----------------------------------------------------------------------------------


def test_run_trains_on_the_dataset_stores_the_curve_and_registers_a_model(alice, dataset, pushes):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    job_run(job_id=job.id)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.error == ""
    assert (job.progress, job.epoch, job.step, job.eta_s) == (1.0, 2, job.total_steps, 0.0)
    assert job.total_steps == 8  # 32 images / 8 per batch * 2 epochs
    assert job.device == "cpu" and job.worker
    assert job.started_at <= job.finished_at
    epochs = job.points.filter(kind=MetricPoint.Kind.EPOCH)
    assert [(p.epoch, p.step) for p in epochs] == [(1, 4), (2, 8)]
    assert all(p.val_loss is not None and 0 <= p.val_acc <= 1 for p in epochs)
    model = TrainedModel.objects.get(job=job)
    assert model.owner == alice and model.arch == "seed_cnn" and model.classes == ["dark", "bright"]
    assert default_storage.exists(f"{model.storage_dir}/model.safetensors")
    statuses = [p["job"]["status"] for _, type, p in pushes if type == "job.status"]
    assert statuses == ["running", "succeeded"]
    assert pushes[-1][2]["job"]["model_id"] == model.id
    pushed_points = [p["point"] for _, type, p in pushes if type == "job.progress" and p["point"]]
    assert pushed_points == [services.point_dict(p) for p in job.points.all()]


def test_run_reports_progress_with_eta_and_speed_while_training(alice, dataset, monkeypatch, pushes):
    clock = FakeClock()
    monkeypatch.setattr(services.time, "monotonic", clock)
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    seen = []

    def train(config, data, *, callbacks=(), device="auto", **kwargs):
        for step in (1, 2):
            clock.now += 0.1
            callbacks[0](progress_event(step=step, total_steps=8, elapsed_s=step * 0.5, samples_per_s=64.0))
            seen.append(Job.objects.values("status", "step", "progress", "eta_s", "samples_per_s").get(pk=job.pk))
        raise ml.Cancelled("stop here")

    monkeypatch.setattr(ml, "train", train)
    job_run(job_id=job.id)

    assert seen[0] == {"status": "running", "step": 1, "progress": 0.125, "eta_s": 3.5, "samples_per_s": 64.0}
    assert seen[1] == seen[0]  # 0.1 s later: within the push throttle, so the row is not rewritten
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_a_failing_training_ends_failed_with_a_readable_error_and_the_worker_survives(alice, dataset, monkeypatch, pushes):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    def train(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x10 and 12x2)")

    monkeypatch.setattr(ml, "train", train)
    job_run(job_id=job.id)  # returns normally: nothing escapes to Celery

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "Training failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x10 and 12x2)"
    assert job.finished_at is not None
    assert not TrainedModel.objects.exists()
    assert pushes[-1][2]["job"]["status"] == "failed"
    assert pushes[-1][2]["job"]["error"] == job.error


def test_a_dataset_whose_files_are_gone_fails_the_job_with_the_reason(alice, dataset):
    default_storage.delete(f"{dataset.storage_dir}/dataset.json")
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    job_run(job_id=job.id)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Training failed: ") and "has no dataset.json" in job.error
    assert not job.points.exists()


def test_a_worker_with_a_bad_device_setting_fails_the_job_and_says_why(alice, dataset, settings):
    settings.TRAIN_DEVICE = "gpu"
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    job_run(job_id=job.id)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("This worker is misconfigured (PERCEPTOR_DEVICE='gpu': ")
    assert job.error.endswith("Tell the administrator.")


def test_a_diverging_loss_fails_the_job_with_advice_and_stores_no_nan(alice, dataset, monkeypatch):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    train, _ = scripted_train([progress_event(step=1), progress_event(step=2, train_loss=math.nan)])
    monkeypatch.setattr(ml, "train", train)

    job_run(job_id=job.id)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "Training diverged at epoch 1, step 2: the loss became nan. Try a lower learning rate."
    assert list(job.points.values_list("step", flat=True)) == [1]


def test_a_job_claimed_twice_runs_once(alice, dataset, monkeypatch):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    train, calls = scripted_train([])
    monkeypatch.setattr(ml, "train", lambda *a, **k: (train(*a, **k), None)[1])

    job_run(job_id=job.id)
    job_run(job_id=job.id)  # e.g. the task redelivered after a lost ack

    assert len(calls) == 1


def test_a_job_cancelled_while_queued_is_never_trained(alice, dataset, monkeypatch, pushes):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    train, calls = scripted_train([])
    monkeypatch.setattr(ml, "train", train)

    job = job_cancel(job=job)
    job_run(job_id=job.id)

    assert job.status == Job.Status.CANCELLED and job.finished_at is not None
    assert calls == []
    assert [p["job"]["status"] for _, _, p in pushes] == ["cancelled"]


def test_a_restarted_worker_queues_again_the_jobs_its_previous_life_left_running(alice, dataset, pushes, queued,
                                                                                 django_capture_on_commit_callbacks):
    orphan = running_job(alice, dataset)
    booted = now()
    Job.objects.filter(pk=orphan.pk).update(worker="celery@gpu1", attempts=1, claimed_by="otherhost:1",
                                            heartbeat_at=booted - timedelta(seconds=2))
    mine = running_job(alice, dataset)  # claimed by the new life of the worker already
    Job.objects.filter(pk=mine.pk).update(worker="celery@gpu1", attempts=1, claimed_by="otherhost:3",
                                          heartbeat_at=booted + timedelta(seconds=1))
    elsewhere = running_job(alice, dataset)
    Job.objects.filter(pk=elsewhere.pk).update(worker="celery@gpu2", attempts=1, claimed_by="otherhost:2", heartbeat_at=now())

    with django_capture_on_commit_callbacks(execute=True):
        assert job_requeue_orphans(worker="celery@gpu1", started_at=booted) == 1

    orphan.refresh_from_db()
    elsewhere.refresh_from_db()
    assert orphan.status == Job.Status.QUEUED and orphan.lease == "" and orphan.attempts == 1
    assert queued == [orphan.pk]
    assert elsewhere.status == Job.Status.RUNNING
    assert Job.objects.get(pk=mine.pk).status == Job.Status.RUNNING


# --- job_cancel --------------------------------------------------------------------------------


def test_cancelling_a_running_job_stops_training_at_the_next_check_and_ends_cancelled(alice, dataset, monkeypatch, pushes):
    monkeypatch.setattr(services, "CANCEL_POLL_S", 0.0)
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    flagged = []

    def user_cancels(i):
        if i == 1:
            flagged.append(job_cancel(job=Job.objects.get(pk=job.pk)))

    train, _ = scripted_train([progress_event(step=s) for s in (1, 2, 3)], during=user_cancels)
    monkeypatch.setattr(ml, "train", train)

    job_run(job_id=job.id)

    assert flagged[0].status == Job.Status.RUNNING and flagged[0].cancel_requested  # a flag, at first
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.error == ""
    assert not TrainedModel.objects.exists()
    statuses = [(p["job"]["status"], p["job"]["cancel_requested"]) for _, t, p in pushes if t == "job.status"]
    assert statuses == [("running", False), ("running", True), ("cancelled", True)]


def prepare_event(done, total):
    from dataclasses import replace

    return replace(progress_event(epoch=0, step=0, total_steps=0, train_loss=math.nan, train_acc=math.nan),
                   kind="prepare", message=f"Speaking synthetic voices: {done:,} of {total:,} clips",
                   fraction=done / total)


def test_preparation_is_pushed_as_a_phase_stored_nowhere_and_can_be_cancelled(alice, dataset, monkeypatch, pushes):
    monkeypatch.setattr(services, "CANCEL_POLL_S", 0.0)
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    def user_cancels(i):
        if i == 2:
            job_cancel(job=Job.objects.get(pk=job.pk))

    train, _ = scripted_train([prepare_event(n, 10_000) for n in (2_500, 5_000, 7_500, 10_000)], during=user_cancels)
    monkeypatch.setattr(ml, "train", train)

    job_run(job_id=job.id)

    phases = [p["phase"] for _, t, p in pushes if t == "job.progress"]
    assert phases == [{"message": "Speaking synthetic voices: 2,500 of 10,000 clips", "progress": 0.25},
                      {"message": "Speaking synthetic voices: 5,000 of 10,000 clips", "progress": 0.5},
                      {"message": "Speaking synthetic voices: 7,500 of 10,000 clips", "progress": 0.75}]
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED  # at the first report after the cancel, not at a training step
    assert job.progress == 0.0 and job.step == 0 and not job.points.exists()


def test_cancelling_a_finished_job_is_refused_and_changes_nothing(alice, dataset):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.SUCCEEDED)

    with pytest.raises(JobStateError, match=f"Job {job.id} cannot be cancelled: it has already succeeded."):
        job_cancel(job=job)

    job.refresh_from_db()
    assert (job.status, job.cancel_requested, job.finished_at) == (Job.Status.SUCCEEDED, False, None)


# --- job_record_progress -----------------------------------------------------------------------


def test_progress_pushes_at_most_four_times_a_second_stores_two_points_and_every_epoch_end(
    alice, dataset, monkeypatch, pushes
):
    clock = FakeClock()
    monkeypatch.setattr(services.time, "monotonic", clock)
    job = running_job(alice, dataset)

    for i in range(9):  # an event every 0.125 s for one second
        clock.now = 1000.0 + i * 0.125
        assert job_record_progress(job=job, event=progress_event(step=i + 1, total_steps=100))
    job_record_progress(job=job, event=progress_event("epoch", step=9, total_steps=100, val_loss=0.6, val_acc=0.7))

    pushed = [p for _, t, p in pushes if t == "job.progress"]
    assert [p["job"]["step"] for p in pushed] == [1, 3, 5, 7, 9, 9]
    assert [(p.kind, p.step) for p in job.points.all()] == [("step", 1), ("step", 5), ("step", 9), ("epoch", 9)]
    # A point is pushed exactly when it is stored, so a reloaded page draws the same curve.
    assert [p["point"]["step"] if p["point"] else None for p in pushed] == [1, None, 5, None, 9, 9]
    assert pushed[-1]["point"]["val_acc"] == 0.7
    job.refresh_from_db()
    assert (job.step, job.progress) == (9, 0.09)


def test_progress_for_a_job_that_is_no_longer_running_writes_nothing_and_says_stop(alice, dataset, pushes):
    job = running_job(alice, dataset)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED)

    assert job_record_progress(job=job, event=progress_event()) is False

    assert not MetricPoint.objects.exists()
    assert pushes == []


def test_non_finite_optional_metrics_are_stored_as_missing(alice, dataset):
    job = running_job(alice, dataset)

    job_record_progress(job=job, event=progress_event("epoch", val_loss=math.inf, val_acc=math.nan, samples_per_s=math.nan))

    point = job.points.get()
    assert (point.val_loss, point.val_acc, point.samples_per_s) == (None, None, None)


# --- Shapes ------------------------------------------------------------------------------------


def test_the_snapshot_has_the_documented_fields(alice, dataset):
    job = running_job(alice, dataset, epochs=7)

    assert job_snapshot(job) == {
        "id": job.id, "status": "running", "progress": 0.0, "epoch": 0, "epochs": 7, "step": 0,
        "total_steps": 0, "eta_s": None, "samples_per_s": None, "device": "", "error": "", "model_id": None,
        "cancel_requested": False, "attempts": 0, "max_attempts": 3, "heartbeat_at": None, "notices": [],
        "can_resume": False, "queue_position": None, "starts_in_s": None,
    }
