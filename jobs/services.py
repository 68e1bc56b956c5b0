"""The job system's business logic: create, run, report progress, cancel; and the job's JSON shapes.

Every status change is a conditional UPDATE (`filter(status=...).update(...)`), so two workers can
never both run a job and a cancel can never overwrite a finish. `ml` is imported inside functions:
the web process should not pay for torch until it needs it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils.timezone import now

from jobs import events
from jobs.models import Job, MetricPoint
from jobs.selectors import job_queue_estimate
from webapp.datasets.models import Dataset
from webapp.ownership import owned_by

if TYPE_CHECKING:
    from ml import ProgressEvent, TrainConfig
    from webapp.registry.models import BatchPrediction

logger = logging.getLogger(__name__)

# Progress throttles. ml.train reports steps at most every 0.25 s; of those we push at most 4 per
# second per job and store a MetricPoint at most 2 per second (about 7,200 points for an hour of
# training, so a reloaded page still gets the whole curve quickly). Epoch ends always go out.
PUSH_INTERVAL_S = 0.25
POINT_INTERVAL_S = 0.5
# How often the training callback re-reads Job.cancel_requested (one small query).
CANCEL_POLL_S = 1.0
ERROR_MAX_CHARS = 2000
NOTICES_MAX = 50  # a job's notices list stays small whatever happens to it


class JobStateError(Exception):
    """An illegal transition, e.g. cancelling a finished job. Views answer 409 with the message."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: nothing useful can come of the rest of the run."""


# --- Creating ----------------------------------------------------------------------------------


def job_create(*, user, dataset: Dataset, config: dict, idempotency_key: str | None = None) -> Job:
    """Validate and save a queued job, and hand it to a worker once the transaction commits.

    With an `idempotency_key` that this user already used, nothing is created or queued: the job
    made by the first use is returned (check `job.created_now`), so a double submit makes one job.
    Raises ValidationError({field: [message]}): `dataset` when it is not the user's (or staff's) or
    not ready; a hyperparameter's name when ml.TrainConfig refuses it, or `arch` when the network is
    made for the other kind of data (job_config); `idempotency_key` when longer than 64 characters.
    Hyperparameters left out of `config` take the defaults of the dataset's kind.
    """
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip() or None
    if idempotency_key is not None:
        if len(idempotency_key) > 64:
            raise ValidationError({"idempotency_key": ["An idempotency key has at most 64 characters."]})
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            existing.created_now = False
            return existing

    current = owned_by(Dataset.objects.all(), user).filter(pk=dataset.pk).first()
    if current is None:
        raise ValidationError({"dataset": ["Choose one of your datasets."]})
    if current.status != Dataset.Status.READY:
        raise ValidationError(
            {"dataset": [f"Dataset “{current.name}” is not ready yet ({current.get_status_display().lower()})."]}
        )
    train_config = job_config(dataset=current, config=config)

    try:
        with transaction.atomic():
            job = Job.objects.create(owner=user, dataset=current, config=train_config.to_dict(),
                                     idempotency_key=idempotency_key, queue=default_queue())
            transaction.on_commit(lambda: _enqueue(job.id, job.queue))
    except IntegrityError:
        # Two submits with one key raced past the lookup above: the unique constraint let one in.
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if idempotency_key is None or existing is None:
            raise
        existing.created_now = False
        return existing
    logger.info("Job %s queued by %s on dataset %s", job.id, user, current.pk)
    job.created_now = True
    return job


def job_config(*, dataset: Dataset, config: dict) -> TrainConfig:
    """The TrainConfig a job on `dataset` trains with: `config` over the defaults of the dataset's
    kind (ml.config.config_defaults: a speech dataset gets a speech network and its recipe).
    Raises ValidationError({field: [message]}) for a value ml refuses, and for an architecture made
    for the other kind of data (the message names the ones that fit)."""
    import ml
    from ml.nets import MODALITY_WORDS, architectures_for

    kind = dataset.kind  # Dataset.Kind values are ml's modalities
    try:
        train_config = ml.TrainConfig.from_dict(config, modality=kind)  # also refuses a non-dict
    except ml.ConfigError as exc:
        raise ValidationError({exc.field: [exc.message]}) from None
    allowed = architectures_for(kind)
    if train_config.arch not in allowed:
        made_for = ml.ARCHITECTURES[train_config.arch].modality
        raise ValidationError({"arch": [
            f"{train_config.arch} is {MODALITY_WORDS[made_for][0]} network; dataset “{dataset.name}” holds "
            f"{MODALITY_WORDS[kind][1]}. Choose one of: {', '.join(allowed)}."
        ]})
    return train_config


def default_queue() -> str:
    """The Celery queue this process sends to; stored on what it queues, so a requeue goes back there."""
    from webapp.celery import app

    return app.conf.task_default_queue or ""


def _enqueue(job_id: int, queue: str = "") -> None:
    from jobs.tasks import run_job

    try:
        run_job.apply_async((job_id,), queue=queue or None)
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


# --- Leases, heartbeats, the reaper (README "Jobs and faults") -------------------------------------


def heartbeat_s() -> float:
    """How often a running job's heartbeat is written."""
    return float(settings.JOB_HEARTBEAT_S)


def stale_after_s() -> float:
    """A running job whose heartbeat is older than this is presumed dead (its worker is gone)."""
    return float(settings.JOB_STALE_AFTER_S)


def dead_job_limit_s() -> float:
    """The longest a dead job can show "running": stale, plus up to one reaper round to notice."""
    return stale_after_s() + float(settings.JOB_REAP_EVERY_S)


def lease_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_holder_is_dead(job: Job | Dataset | BatchPrediction, *, at) -> bool:
    """Is the process holding this lease (a running job's, an ingesting dataset's, a running batch
    prediction's) gone? Its heartbeat is stale, or it ran on this host and its pid no longer exists
    (known at once)."""
    if job.heartbeat_at is None or job.heartbeat_at < at - timedelta(seconds=stale_after_s()):
        return True
    host, _, pid = job.claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # that is us: the lease is being renewed by this very process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, as another user
    return False


def lease_taken_over(holder: Job | Dataset | BatchPrediction, *, what: str) -> bool:
    """A claim of a row marked as running (delivered again): may it take the row over? Only when the
    holder is dead; a live one keeps it. Logged either way, `what` naming the row ("Job 7")."""
    if not lease_holder_is_dead(holder, at=now()):
        logger.info("%s not run: it is running on %s with a live heartbeat", what, holder.claimed_by)
        return False
    logger.warning("%s: taking over from %s, which stopped (attempt %s ended)", what, holder.claimed_by,
                   holder.attempts)
    return True


def lease_suspects(at) -> Q:
    """The leased rows worth asking lease_holder_is_dead about: a stale or missing heartbeat, or a
    holder on this host (whose pid tells at once)."""
    stale = at - timedelta(seconds=stale_after_s())
    return Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True) | Q(claimed_by__startswith=f"{socket.gethostname()}:")


def reap_dead_holders(held: QuerySet, take_back: Callable[[Any], int]) -> int:
    """Call take_back(row) for each row of `held` (rows that hold a lease: claimed_by, heartbeat_at)
    whose holder is dead; take_back requeues or fails it, conditionally on its lease, and returns
    how many rows it changed. The reaper of ingests and batch predictions; returns the total."""
    at = now()
    return sum(take_back(row) for row in held.filter(lease_suspects(at)) if lease_holder_is_dead(row, at=at))


def job_checkpoint_path(job_id: int) -> Path:
    """MEDIA_ROOT/jobs/<id>/checkpoint.pt: written by ml.train at every epoch end, on cancel, and
    mid-epoch every settings.JOB_CHECKPOINT_EVERY_S."""
    return Path(default_storage.path(f"jobs/{job_id}/checkpoint.pt"))


def synthetic_cache_dir() -> Path:
    """MEDIA_ROOT/cache/synthetic-voices: the clips of the speech `synthetic_voices` setting, kept
    between jobs (ml.synthetic_speech.ClipCache, at most a few GB) so that a resume, or another job
    on the same class names and seed, reads them instead of waiting for espeak-ng again."""
    return Path(default_storage.path("cache/synthetic-voices"))


def job_has_checkpoint(job: Job) -> bool:
    return job_checkpoint_path(job.id).is_file()


def _poison_error(job: Job) -> str:
    return (f"The worker running this job stopped {job.attempts} times before the job finished (killed, "
            f"out of memory, or crashed), so it was not started again (at most {job.max_attempts} attempts). "
            "Check the worker's log; then Retry, or Clone it with a smaller batch size.")


def _held(job: Job) -> QuerySet:
    """The job's row while it is still running under this worker's lease (an empty queryset once
    it was cancelled, requeued by the reaper, or deleted)."""
    return Job.objects.filter(id=job.id, status=Job.Status.RUNNING, lease=job.lease)


def _claim(job_id: int, device_label: str) -> Job | None:
    """Take the job for this process: a queued one, or a running one whose holder is dead (a task
    delivered again after its worker was killed). Counts the attempt; a job out of attempts fails
    instead. Returns the job holding its new lease, or None when there is nothing to run."""
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        logger.info("Job %s not run: it no longer exists", job_id)
        return None
    if job.status == Job.Status.RUNNING:
        if not lease_taken_over(job, what=f"Job {job_id}"):
            return None
    elif job.status != Job.Status.QUEUED:
        logger.info("Job %s not run: it has already %s", job_id, job.status)
        return None
    if job.cancel_requested:
        _finish(job.id, from_status=job.status, lease=job.lease, status=Job.Status.CANCELLED)
        return None
    if job.attempts >= job.max_attempts:
        _finish(job.id, from_status=job.status, lease=job.lease, status=Job.Status.FAILED, error=_poison_error(job))
        return None
    token = uuid.uuid4().hex
    claimed = Job.objects.filter(id=job_id, status=job.status, lease=job.lease, attempts=job.attempts).update(
        status=Job.Status.RUNNING, lease=token, claimed_by=lease_holder_id()[:255], attempts=F("attempts") + 1,
        heartbeat_at=now(), started_at=Coalesce(F("started_at"), now()), worker=_worker_name()[:255],
        device=device_label, error="",
    )
    if claimed != 1:
        logger.info("Job %s not run: another worker claimed it first", job_id)
        return None
    return Job.objects.select_related("dataset", "owner").get(id=job_id)


def job_reap(*, worker: str | None = None, started_at=None) -> int:
    """Requeue (or fail, past max_attempts; or cancel, when asked to) the running jobs whose holder
    is dead: a stale heartbeat, or a pid on this host that no longer exists. With `worker` and
    `started_at`, a worker that has just started: what runs under its name with no heartbeat since
    it started was left by its previous life. Every worker runs this periodically (jobs.tasks), so
    a dead job never shows "running" for longer than dead_job_limit_s(). Returns how many jobs it
    took back."""
    at = now()
    started_at = started_at or at
    suspects = lease_suspects(at)
    if worker:
        suspects |= Q(worker=worker)
    reaped = 0
    for job in Job.objects.filter(suspects, status=Job.Status.RUNNING):
        left_behind = worker and job.worker == worker and (job.heartbeat_at is None or job.heartbeat_at < started_at)
        if left_behind or lease_holder_is_dead(job, at=at):
            reaped += _take_back(job)
    return reaped


def _take_back(job: Job) -> int:
    if job.cancel_requested:
        return int(_finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.CANCELLED))
    if job.attempts >= job.max_attempts:
        return int(_finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.FAILED,
                           error=_poison_error(job)))
    with transaction.atomic():
        requeued = _held(job).update(status=Job.Status.QUEUED, lease="", claimed_by="", heartbeat_at=None)
        if requeued:
            transaction.on_commit(lambda: _enqueue(job.id, job.queue))
    if requeued:
        logger.warning("Job %s: its worker %s stopped (heartbeat %s); queued again, attempt %s of %s done",
                       job.id, job.claimed_by or job.worker, job.heartbeat_at, job.attempts, job.max_attempts)
        _push_status(job.id)
    return requeued


class LeaseHeartbeat:
    """A thread that renews heartbeat_at on `held` (the holder's rows, filtered on its lease) every
    heartbeat_s() while the holder works. A thread, not the work's progress: loading a large dataset
    or model, or listing a large archive, can take longer than the stale limit without a single
    progress event. If the lease is gone (reaped and claimed elsewhere, or deleted), `lost` is set;
    the holder's own conditional writes are refused too."""

    def __init__(self, held: QuerySet, *, name: str) -> None:
        self.held, self.name = held, name
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(heartbeat_s()):
                try:
                    beat = self.held.update(heartbeat_at=now())
                except Exception:  # noqa: BLE001 - a database hiccup: try again at the next beat
                    logger.exception("%s: could not write the heartbeat", self.name)
                    continue
                if not beat:
                    self.lost = True
                    return
        finally:
            connection.close()  # this thread's own connection


class _Heartbeat(LeaseHeartbeat):
    """A running job's heartbeat; the training callback stops training once it is `lost`."""

    def __init__(self, job: Job) -> None:
        held = _held(job)
        super().__init__(held, name=f"Job {job.id}")


# --- Running -----------------------------------------------------------------------------------


def job_run(*, job_id: int) -> None:
    """Claim a job, train it (resuming from its checkpoint when it has one), register the model and
    finish. Never raises for a job's own failure: a worker must survive any dataset or config a user
    can throw at it. Safe to deliver twice: the lease lets only one process run the job."""
    import ml

    try:
        device, device_label = train_device()
    except Exception as exc:  # noqa: BLE001 - a bad PERCEPTOR_DEVICE: fail the job, say why
        device, device_label, device_error = None, "", exc
    job = _claim(job_id, device_label)
    if job is None:
        return
    _push_status(job.id)
    logger.info("Job %s running on %s (%s), attempt %s of %s", job.id, job.worker, device_label, job.attempts,
                job.max_attempts)

    if device is None:
        logger.error("Job %s: cannot use PERCEPTOR_DEVICE=%r: %s", job.id, settings.TRAIN_DEVICE, device_error)
        _finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.FAILED,
                error=f"This worker is misconfigured (PERCEPTOR_DEVICE={settings.TRAIN_DEVICE!r}: {device_error}). "
                      "Tell the administrator.")
        return
    checkpoint = job_checkpoint_path(job.id)
    from webapp.registry.models import TrainedModel

    if TrainedModel.objects.filter(job_id=job.id).exists():
        # The previous attempt stored the model and died before it could say so: the job is done.
        logger.warning("Job %s: its model was stored by the previous attempt; finishing it", job.id)
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
        _finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.SUCCEEDED,
                progress=1.0, eta_s=0.0)
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    from ml.data import load_dataset

    try:
        with _Heartbeat(job) as heartbeat:
            callback = _TrainingCallback(job, heartbeat)
            try:
                config = ml.TrainConfig.from_dict(job.config, modality=job.dataset.kind)
                data = load_dataset(default_storage.path(job.dataset.storage_dir))  # images or audio
                _prepare_resume(job, checkpoint)
                if config.synthetic_voices:  # synthesis takes seconds to minutes before the first step
                    from ml.synthetic_speech import synthetic_count

                    spoken = synthetic_count(data.classes, 1)
                    job_add_notice(job=job, message=f"Adding {config.synthetic_voices} synthetic clips of each of "
                                                    f"{spoken} class names (spoken by espeak-ng) to the training "
                                                    "split before the first step.")

                def run() -> ml.TrainResult:
                    return ml.train(config, data, callbacks=[callback], device=device, checkpoint_path=checkpoint,
                                    checkpoint_interval_s=settings.JOB_CHECKPOINT_EVERY_S,
                                    synthetic_cache=synthetic_cache_dir())

                callback.started = time.monotonic()
                try:
                    result = run()
                except ml.CheckpointError as exc:
                    # A checkpoint from other code or settings, or a torn file: start again from scratch.
                    logger.warning("Job %s: checkpoint not usable (%s); training from the start", job.id, exc)
                    checkpoint.unlink(missing_ok=True)
                    _prepare_resume(job, checkpoint, note=f"The checkpoint could not be used ({exc}); training "
                                                          "started again from the first epoch.")
                    result = run()
                callback.log_cost()
                from webapp.registry.services import model_register

                model = model_register(job=job, result=result, data=data)
                # The model is stored, so the checkpoint is of no more use to anyone (a takeover
                # finds the model and only finishes the job). Gone before the job reads succeeded.
                shutil.rmtree(checkpoint.parent, ignore_errors=True)
            except ml.Cancelled:
                callback.log_cost()
                if heartbeat.lost:
                    logger.warning("Job %s: stopped training, this worker no longer holds it", job.id)
                    return
                logger.info("Job %s cancelled while training (checkpoint kept for Resume)", job.id)
                _finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.CANCELLED)
                return
            except Exception as exc:  # noqa: BLE001 - any failure of a job is the job's, not the worker's
                logger.exception("Job %s failed", job.id)
                _finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.FAILED,
                        error=_describe_failure(exc))
                return
        if not _finish(job.id, from_status=Job.Status.RUNNING, lease=job.lease, status=Job.Status.SUCCEEDED,
                       progress=1.0, eta_s=0.0):
            logger.warning("Job %s trained model %s but was no longer running when it finished", job.id, model.pk)
    finally:
        _throttle.forget(job.id)


def _prepare_resume(job: Job, checkpoint: Path, *, note: str = "") -> None:
    """Make the stored curve agree with where training starts: the checkpoint's step, or nothing.
    Points past it are deleted (training repeats those steps and reports them again), so no epoch
    or step is ever stored twice."""
    import ml

    info = None
    if checkpoint.is_file():
        try:
            info = ml.read_checkpoint_info(checkpoint)
        except Exception:  # noqa: BLE001 - unreadable: ml.train decides, and says CheckpointError
            logger.exception("Job %s: cannot read checkpoint %s", job.id, checkpoint)
    step = int(info["step"]) if info else 0
    total = int(info.get("total_steps") or 0) if info else 0
    fields = {"step": step, "epoch": int(info["epoch"]) if info else 0,
              "progress": min(1.0, step / total) if total else 0.0, "eta_s": None}
    with transaction.atomic():
        dropped, _ = MetricPoint.objects.filter(job=job, step__gt=step).delete()
        Job.objects.filter(id=job.id, lease=job.lease).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)
    if dropped:  # pages drop the points they drew past this step: training repeats those steps
        _push_status(job.id, rewind_to_step=step)
    if info:
        job_add_notice(job=job, message=f"Resumed from the checkpoint of epoch {fields['epoch']} (step {step}), "
                                        f"attempt {job.attempts} of {job.max_attempts}.", epoch=fields["epoch"], step=step)
    if note:
        job_add_notice(job=job, message=note, epoch=0, step=0)


def job_add_notice(*, job: Job, message: str, epoch: int = 0, step: int = 0) -> None:
    """Record something the user should know about a run (resumed, batch size halved after the GPU
    ran out of memory) on the job, and push it. Only the lease holder writes, so read-modify-write
    is safe."""
    notice = {"at": now().isoformat(timespec="seconds"), "epoch": epoch, "step": step, "message": message[:500]}
    with transaction.atomic():
        current = Job.objects.select_for_update().filter(id=job.id).values_list("notices", flat=True).first()
        if current is None:
            return
        notices = [*current, notice][-NOTICES_MAX:]
        Job.objects.filter(id=job.id).update(notices=notices)
    job.notices = notices
    logger.info("Job %s: %s", job.id, message)
    _push_status(job.id)


def job_requeue_orphans(*, worker: str, started_at=None) -> int:
    """A worker that has just started (at `started_at`) is running nothing it took before then:
    jobs still marked as running under its name were left by its previous life (killed, out of
    memory, machine restarted). Queue them again (they resume from their checkpoints), or fail those
    out of attempts."""
    return job_reap(worker=worker, started_at=started_at)


class _TrainingCallback:
    """Records each ProgressEvent and turns a cancel request (or a vanished job) into ml.Cancelled.

    It runs on the training thread, so its own cost is training time lost: it keeps count, and
    log_cost() reports it (bench/overhead.py reads that line).
    """

    def __init__(self, job: Job, heartbeat: _Heartbeat | None = None) -> None:
        self.job = job
        self.heartbeat = heartbeat
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

        if self.heartbeat is not None and self.heartbeat.lost:
            raise ml.Cancelled(f"Job {self.job.id} is no longer held by this worker")
        if event.kind == "notice":
            job_add_notice(job=self.job, message=getattr(event, "message", "") or "Training settings changed.",
                           epoch=event.epoch, step=event.step)
            return
        record = job_record_preparation if event.kind == "prepare" else job_record_progress
        if not record(job=self.job, event=event):
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


def _finish(job_id: int, *, from_status: str, status: str, error: str = "", lease: str | None = None,
            **fields: Any) -> bool:
    """The conditional transition out of `from_status` (and, from a worker, only while it holds
    `lease`); pushes the new status when it happened."""
    current = Job.objects.filter(id=job_id, status=from_status)
    if lease is not None:
        current = current.filter(lease=lease)
    changed = current.update(status=status, error=error, finished_at=now(), **fields)
    if changed:
        logger.info("Job %s %s%s", job_id, status, f": {error}" if error else "")
        _push_status(job_id)
    return bool(changed)


def _push_status(job_id: int, **extra: Any) -> None:
    job = Job.objects.filter(id=job_id).first()
    if job is not None:
        events.push_job_event(job_id, events.STATUS, {"job": job_snapshot(job), **extra})


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


def job_record_preparation(*, job: Job, event: ProgressEvent) -> bool:
    """Push how far the work before the first step is (a "prepare" event: synthetic voices being
    spoken). Live only, nothing stored: a page opened meanwhile shows it from the next report, a
    second or two later. Returns False when the job is no longer running, like job_record_progress."""
    if not _held(job).exists():
        return False
    phase = {"message": event.message, "progress": _finite_or_none(event.fraction)}
    events.push_job_event(job.id, events.PROGRESS, {"job": job_snapshot(job), "point": None, "phase": phase},
                          wait=False)
    return True


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
    running = _held(job)
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


# --- Resume, retry, clone -----------------------------------------------------------------------

RESTARTABLE = (Job.Status.CANCELLED, Job.Status.FAILED)


def job_resume(*, job: Job) -> Job:
    """Queue a cancelled or failed job again; it continues from its checkpoint with fresh attempts.
    Raises JobStateError when the job is not stopped or has no checkpoint."""
    if job.status in RESTARTABLE and not job_has_checkpoint(job):
        raise JobStateError(f"Job {job.id} has no checkpoint to resume from (it stopped before saving one): "
                            "use Retry to train it from the start.")
    return _requeue_finished(job, verb="resumed", reset=False)


def job_retry(*, job: Job) -> Job:
    """Queue a cancelled or failed job again from scratch: its checkpoint and curve are discarded."""
    return _requeue_finished(job, verb="retried", reset=True)


def _requeue_finished(job: Job, *, verb: str, reset: bool) -> Job:
    fields: dict[str, Any] = {"status": Job.Status.QUEUED, "cancel_requested": False, "error": "", "finished_at": None,
                              "attempts": 0, "lease": "", "claimed_by": "", "heartbeat_at": None, "eta_s": None}
    if reset:
        fields.update(progress=0.0, epoch=0, step=0, total_steps=0, samples_per_s=None, notices=[], started_at=None)
    with transaction.atomic():
        changed = Job.objects.filter(id=job.id, status__in=RESTARTABLE).update(**fields)
        if changed:
            if reset:
                MetricPoint.objects.filter(job_id=job.id).delete()
                shutil.rmtree(job_checkpoint_path(job.id).parent, ignore_errors=True)
            queue = Job.objects.filter(id=job.id).values_list("queue", flat=True).first() or ""
            transaction.on_commit(lambda: _enqueue(job.id, queue))
    job.refresh_from_db()
    if not changed:
        raise JobStateError(f"Job {job.id} cannot be {verb}: it is {job.get_status_display().lower()}"
                            f"{'' if job.status == Job.Status.SUCCEEDED else ' (cancel it first)'}.")
    logger.info("Job %s %s", job.id, verb)
    _push_status(job.id)
    return job


def job_clone(*, user, job: Job, changes: dict, idempotency_key: str | None = None) -> Job:
    """A new job on the same dataset with the same hyperparameters but `changes`."""
    return job_create(user=user, dataset=job.dataset, config={**job.config, **changes}, idempotency_key=idempotency_key)


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
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "notices": job.notices,
        "can_resume": job.status in RESTARTABLE and job_has_checkpoint(job),
        **job_queue_estimate(job=job),
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
