"""The job system's business logic: create, run, report progress, cancel; and the job's JSON shapes.

Every status change is a conditional UPDATE (`filter(status=...).update(...)`), so two workers can
never both run a job and a cancel can never overwrite a finish. `ml` is imported inside functions:
the web process should not pay for torch until it needs it.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils.timezone import now

from jobs import events
from jobs.models import Job, MetricPoint
from jobs.selectors import job_list_for_user  # noqa: F401 - re-exported for callers of services
from webapp.datasets.models import Dataset
from webapp.ownership import owned_by

if TYPE_CHECKING:
    from ml import ProgressEvent

logger = logging.getLogger(__name__)

# Progress throttles. ml.train reports steps at most every 0.25 s; of those we push at most 4 per
# second per job and store a MetricPoint at most 2 per second (about 7,200 points for an hour of
# training, so a reloaded page still gets the whole curve quickly). Epoch ends always go out.
PUSH_INTERVAL_S = 0.25
POINT_INTERVAL_S = 0.5
# How often the training callback re-reads Job.cancel_requested (one small query).
CANCEL_POLL_S = 1.0
ERROR_MAX_CHARS = 2000


class JobStateError(Exception):
    """An illegal transition, e.g. cancelling a finished job. Views answer 409 with the message."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: nothing useful can come of the rest of the run."""


# --- Creating ----------------------------------------------------------------------------------


def job_create(*, user, dataset: Dataset, config: dict) -> Job:
    """Validate and save a queued job, and hand it to a worker once the transaction commits.

    Raises ValidationError({field: [message]}): `dataset` when it is not the user's (or staff's) or
    not ready; a hyperparameter's name when ml.TrainConfig refuses it.
    """
    import ml

    current = owned_by(Dataset.objects.all(), user).filter(pk=dataset.pk).first()
    if current is None:
        raise ValidationError({"dataset": ["Choose one of your datasets."]})
    if current.status != Dataset.Status.READY:
        raise ValidationError(
            {"dataset": [f"Dataset “{current.name}” is not ready yet ({current.get_status_display().lower()})."]}
        )
    try:
        train_config = ml.TrainConfig.from_dict(config)  # also refuses a config that is not a dict
    except ml.ConfigError as exc:
        raise ValidationError({exc.field: [exc.message]}) from None

    with transaction.atomic():
        job = Job.objects.create(owner=user, dataset=current, config=train_config.to_dict())
        transaction.on_commit(lambda: _enqueue(job.id))
    logger.info("Job %s queued by %s on dataset %s", job.id, user, current.pk)
    return job


def _enqueue(job_id: int) -> None:
    from jobs.tasks import run_job

    try:
        run_job.delay(job_id)
    except Exception:
        # The job row is committed but no worker will ever hear of it: say so on the job rather
        # than leave it queued forever (and rather than a 500 on a page that did its work).
        logger.exception("Could not queue job %s", job_id)
        _finish(job_id, from_status=Job.Status.QUEUED, status=Job.Status.FAILED,
                error="The job queue could not be reached, so the job was not started. Try again.")


# --- Running -----------------------------------------------------------------------------------


def train_device():
    """The torch device this worker trains on, and its label for Job.device (32 characters):
    settings.TRAIN_DEVICE, where "auto" means CUDA when the worker has it."""
    from ml.train import describe_device, resolve_device

    device = resolve_device(settings.TRAIN_DEVICE)
    try:
        label = describe_device(device)
    except Exception:  # noqa: BLE001 - e.g. "cuda" configured on a machine without CUDA:
        label = str(device)  # training itself then fails with torch's own explanation
    return device, label[:32]


def _worker_name() -> str:
    from celery import current_task

    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or socket.gethostname()


def job_run(*, job_id: int) -> None:
    """Claim a queued job, train it, register the model and finish. Never raises for a job's own
    failure: a worker must survive any dataset or config a user can throw at it."""
    import ml

    try:
        device, device_label = train_device()
    except Exception as exc:  # noqa: BLE001 - a bad PERCEPTOR_DEVICE: fail the job, say why
        device, device_label, device_error = None, "", exc
    claimed = Job.objects.filter(id=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=now(), worker=_worker_name()[:255], device=device_label
    )
    if claimed != 1:
        logger.info("Job %s not run: it is no longer queued (cancelled, or claimed by another worker)", job_id)
        return
    job = Job.objects.select_related("dataset", "owner").get(id=job_id)
    events.push_job_event(job.id, events.STATUS, {"job": job_snapshot(job)})
    logger.info("Job %s running on %s (%s)", job.id, job.worker, device_label)

    if device is None:
        logger.error("Job %s: cannot use PERCEPTOR_DEVICE=%r: %s", job.id, settings.TRAIN_DEVICE, device_error)
        _finish(job.id, from_status=Job.Status.RUNNING, status=Job.Status.FAILED,
                error=f"This worker is misconfigured (PERCEPTOR_DEVICE={settings.TRAIN_DEVICE!r}: {device_error}). "
                      "Tell the administrator.")
        return
    callback = _TrainingCallback(job)
    try:
        config = ml.TrainConfig.from_dict(job.config)
        data = ml.load_image_dataset(default_storage.path(job.dataset.storage_dir))
        callback.started = time.monotonic()
        result = ml.train(config, data, callbacks=[callback], device=device)
        callback.log_cost()
        from webapp.registry.services import model_register

        model = model_register(job=job, result=result)
    except ml.Cancelled:
        callback.log_cost()
        logger.info("Job %s cancelled while training", job.id)
        _finish(job.id, from_status=Job.Status.RUNNING, status=Job.Status.CANCELLED)
    except Exception as exc:  # noqa: BLE001 - any failure of a job is the job's, not the worker's
        logger.exception("Job %s failed", job.id)
        _finish(job.id, from_status=Job.Status.RUNNING, status=Job.Status.FAILED, error=_describe_failure(exc))
    else:
        if not _finish(job.id, from_status=Job.Status.RUNNING, status=Job.Status.SUCCEEDED, progress=1.0, eta_s=0.0):
            logger.warning("Job %s trained model %s but was no longer running when it finished", job.id, model.pk)
    finally:
        _throttle.forget(job.id)


def job_fail_orphans(*, worker: str) -> int:
    """Fail the jobs still marked as running on `worker`, a worker that has just started. Returns
    how many. (Their Celery tasks may be delivered again, and then find them finished.)"""
    orphans = list(Job.objects.filter(status=Job.Status.RUNNING, worker=worker).values_list("id", flat=True))
    for job_id in orphans:
        logger.warning("Job %s was left running by a previous run of worker %s", job_id, worker)
        _finish(job_id, from_status=Job.Status.RUNNING, status=Job.Status.FAILED,
                error="The worker running this job stopped before it finished (restarted, killed or out of "
                      "memory). Start the job again.")
    return len(orphans)


class _TrainingCallback:
    """Records each ProgressEvent and turns a cancel request (or a vanished job) into ml.Cancelled.

    It runs on the training thread, so its own cost is training time lost: it keeps count, and
    log_cost() reports it (bench/overhead.py reads that line).
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.next_cancel_check = time.monotonic() + CANCEL_POLL_S
        self.started: float | None = None
        self.calls = 0
        self.busy_s = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        entered = time.perf_counter()
        try:
            self._handle(event)
        finally:
            self.calls += 1
            self.busy_s += time.perf_counter() - entered

    def _handle(self, event: ProgressEvent) -> None:
        import ml

        if not job_record_progress(job=self.job, event=event):
            raise ml.Cancelled(f"Job {self.job.id} is no longer running")
        clock = time.monotonic()
        if clock >= self.next_cancel_check:
            self.next_cancel_check = clock + CANCEL_POLL_S
            if Job.objects.filter(id=self.job.id, cancel_requested=True).exists():
                raise ml.Cancelled(f"Job {self.job.id} was cancelled")

    def log_cost(self) -> None:
        if self.started is None:
            return
        training_s = time.monotonic() - self.started
        logger.info(
            "Job %s: progress reporting took %.3f s in %d calls over %.1f s of training (%.2f%%)",
            self.job.id, self.busy_s, self.calls, training_s, 100 * self.busy_s / max(training_s, 1e-9),
        )


def _describe_failure(exc: BaseException) -> str:
    """The error a user reads on the job page: what went wrong and, where we know, what to do."""
    import torch

    if isinstance(exc, TrainingDiverged):
        message = str(exc)
    elif isinstance(exc, torch.cuda.OutOfMemoryError):
        message = "The GPU ran out of memory. Try a smaller batch size or a smaller architecture."
    elif isinstance(exc, MemoryError):
        message = "The worker ran out of memory. Try a smaller batch size or a smaller architecture."
    elif isinstance(exc, FileNotFoundError):
        message = f"The dataset's files could not be read ({exc.strerror or exc}: {exc.filename or ''})."
    elif isinstance(exc, ValueError):  # ml's refusals of data or settings, worded for users
        message = f"Training failed: {exc}"
    else:
        detail = str(exc).strip() or "no details"
        message = f"Training failed: {type(exc).__name__}: {detail}"
    return message[:ERROR_MAX_CHARS]


def _finish(job_id: int, *, from_status: str, status: str, error: str = "", **fields: Any) -> bool:
    """The conditional transition out of `from_status`; pushes the new status when it happened."""
    changed = Job.objects.filter(id=job_id, status=from_status).update(
        status=status, error=error, finished_at=now(), **fields
    )
    if changed:
        job = Job.objects.get(id=job_id)
        logger.info("Job %s %s%s", job_id, status, f": {error}" if error else "")
        events.push_job_event(job_id, events.STATUS, {"job": job_snapshot(job)})
    return bool(changed)


# --- Progress ----------------------------------------------------------------------------------


class _Throttle:
    """Per-job "has at least `interval` passed since the last yes?" clocks, in one worker process."""

    # Events arrive on a ~0.25 s cadence with jitter: accept slightly early ones, or a 0.25 s
    # throttle would let only every second event through.
    SLACK = 0.8

    def __init__(self) -> None:
        self._last: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def ready(self, job_id: int, what: str, interval: float, clock: float) -> bool:
        with self._lock:
            last = self._last.get((job_id, what))
            if last is not None and clock - last < interval * self.SLACK:
                return False
            self._last[(job_id, what)] = clock
            return True

    def forget(self, job_id: int) -> None:
        with self._lock:
            for key in [k for k in self._last if k[0] == job_id]:
                del self._last[key]

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


_throttle = _Throttle()


def job_record_progress(*, job: Job, event: ProgressEvent) -> bool:
    """Store and push one progress report (throttled). Returns False when the job is no longer
    running (cancelled, deleted with its dataset), so that the caller can stop training.

    Database first, then the push: the database is the truth, the channel layer may drop things.
    A point is only ever pushed together with its stored row, so a reloaded page draws exactly the
    curve that the live page drew. Raises TrainingDiverged when the training loss is not finite.
    """
    if not _finite(event.train_loss):
        raise TrainingDiverged(
            f"Training diverged at epoch {event.epoch}, step {event.step}: the loss became "
            f"{event.train_loss}. Try a lower learning rate."
        )
    clock = time.monotonic()
    is_epoch = event.kind == MetricPoint.Kind.EPOCH
    push = _throttle.ready(job.id, "push", PUSH_INTERVAL_S, clock) or is_epoch
    store = is_epoch or (push and _throttle.ready(job.id, "point", POINT_INTERVAL_S, clock))
    if not push:
        return True

    total = event.total_steps or 0
    fields = {
        "progress": min(1.0, event.step / total) if total else 0.0,
        "epoch": event.epoch,
        "step": event.step,
        "total_steps": total,
        "samples_per_s": _finite_or_none(event.samples_per_s),
        "eta_s": _eta(event),
    }
    running = Job.objects.filter(id=job.id, status=Job.Status.RUNNING)
    point = None
    if store:
        with transaction.atomic():  # the row and its point together
            if not running.update(**fields):
                return False
            point = _create_point(job, event)
    elif not running.update(**fields):
        return False
    for name, value in fields.items():
        setattr(job, name, value)
    events.push_job_event(
        job.id, events.PROGRESS, {"job": job_snapshot(job), "point": point_dict(point) if point else None}, wait=False
    )
    return True


def _create_point(job: Job, event: ProgressEvent) -> MetricPoint:
    return MetricPoint.objects.create(
        job=job,
        kind=event.kind,
        epoch=event.epoch,
        step=event.step,
        train_loss=float(event.train_loss),
        train_acc=_finite_or_none(event.train_acc) or 0.0,
        val_loss=_finite_or_none(event.val_loss),
        val_acc=_finite_or_none(event.val_acc),
        lr=_finite_or_none(event.lr),
        samples_per_s=_finite_or_none(event.samples_per_s),
    )


def _eta(event: ProgressEvent) -> float | None:
    """Seconds left at the average pace so far (validation included, so it does not undershoot)."""
    if not event.step or not event.total_steps or not _finite(event.elapsed_s):
        return None
    return max(0.0, (event.total_steps - event.step) * event.elapsed_s / event.step)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))  # floats, numpy scalars and 0-d tensors alike
    except (TypeError, ValueError):
        return False


def _finite_or_none(value: Any) -> float | None:
    """JSON has no NaN or infinity (a browser's JSON.parse rejects them), and neither do charts."""
    return float(value) if _finite(value) else None


# --- Cancelling --------------------------------------------------------------------------------


def job_cancel(*, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its worker notices within about a
    second and finishes it as cancelled). Raises JobStateError for a finished job."""
    if _finish(job.id, from_status=Job.Status.QUEUED, status=Job.Status.CANCELLED, cancel_requested=True):
        logger.info("Job %s cancelled before it started", job.id)
    elif Job.objects.filter(id=job.id, status=Job.Status.RUNNING).update(cancel_requested=True):
        logger.info("Job %s: cancel requested", job.id)
        job.refresh_from_db()
        events.push_job_event(job.id, events.STATUS, {"job": job_snapshot(job)})
    else:
        job.refresh_from_db()
        raise JobStateError(f"Job {job.id} cannot be cancelled: it has already {job.status}.")
    job.refresh_from_db()
    return job


# --- Shapes (docs/architecture.md): the page, the consumer and the API all use these -------------


def job_snapshot(job: Job) -> dict:
    model_id = None
    if job.status == Job.Status.SUCCEEDED:
        from webapp.registry.models import TrainedModel

        model_id = TrainedModel.objects.filter(job_id=job.id).values_list("id", flat=True).first()
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "epoch": job.epoch,
        "epochs": job.config.get("epochs"),
        "step": job.step,
        "total_steps": job.total_steps,
        "eta_s": job.eta_s,
        "samples_per_s": job.samples_per_s,
        "device": job.device,
        "error": job.error,
        "model_id": model_id,
        "cancel_requested": job.cancel_requested,
    }


def point_dict(point: MetricPoint) -> dict:
    return {
        "kind": point.kind,
        "epoch": point.epoch,
        "step": point.step,
        "train_loss": point.train_loss,
        "train_acc": point.train_acc,
        "val_loss": point.val_loss,
        "val_acc": point.val_acc,
        "lr": point.lr,
        "samples_per_s": point.samples_per_s,
    }


def job_history(*, job: Job) -> dict:
    """Everything a freshly opened page needs: the job and its whole curve, from the database."""
    job.refresh_from_db()
    return {"job": job_snapshot(job), "points": [point_dict(p) for p in job.points.all()]}
