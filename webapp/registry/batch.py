"""Batch prediction: every file of an uploaded archive through one model, in a worker, into a CSV.

The web request (batch_create) does what is quick and tells the user at once: the upload is a zip
or tar within the limits (ml.archive, the same safe reading as datasets), it holds files, and some
of them are of the model's kind. It stores the archive as batches/<pk>/archive and queues
predict_archive after commit. The worker (batch_run) reads the archive member by member, decodes a
chunk of files, predicts the chunk in one forward pass with the process's cached predictor and
appends the chunk's rows to the CSV, so memory stays flat for any number of files and no HTTP
request waits on it.

The CSV has one row per file of the archive (system litter such as __MACOSX/ and dotfiles aside),
in archive order: file, top1, probability, top5 ("label:0.9312;label:0.0400;…"), error. A file that
cannot be predicted (not of the model's kind, undecodable, too large) keeps its row with the reason
in `error` and the prediction columns empty, and is listed in BatchPrediction.skipped too.

A run holds the batch by a lease, as jobs and ingests do (README "Jobs and faults"): the claim takes
a new lease token and counts an attempt, a heartbeat thread renews heartbeat_at, and every write of
the run is a conditional UPDATE on the lease. When the worker dies, the reaper that runs in every
worker (batch_reap) sends the batch back to its queue, and the next run starts again from the first
file; the run it replaced, should it still be alive, finds its writes refused and stops. A batch
whose worker stopped MAX_BATCH_ATTEMPTS times fails with that reason.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

# The lease and heartbeat rules of jobs, shared so that batches, ingests and jobs are judged dead alike.
from jobs.services import LeaseHeartbeat, default_queue, lease_holder_id, lease_taken_over, reap_dead_holders
from ml.archive import DatasetError, Member, open_archive
from webapp.datasets.services import archive_limits
from webapp.ownership import owned_by
from webapp.registry.models import BatchPrediction, TrainedModel
from webapp.registry.services import TOP_K, ModelUnavailable, _decode_errors, _sentence, predictor_for

logger = logging.getLogger(__name__)

ARCHIVE = "archive"  # the upload, under the batch's folder, until the run ends
CSV_FILE = "predictions.csv"
CSV_COLUMNS = ("file", "top1", "probability", "top5", "error")
CHUNK = 32  # files decoded, then predicted in one forward pass: batching without holding an archive in memory
PROGRESS_INTERVAL_S = 0.25  # done/total, the cancel check and a heartbeat reach the database at most 4 times a second
MAX_BATCH_ATTEMPTS = 3  # claims of one batch; a third dead worker means the archive (or model) kills workers
STATUS = BatchPrediction.Status

# What each kind of model takes, by extension (the ingests' lists), and how to say it.
_KINDS = {"image": ("images", "JPEG, PNG, BMP, WebP, GIF"), "audio": ("audio clips", "WAV, FLAC, OGG, Opus, MP3, AIFF")}


class BatchStateError(Exception):
    """The batch cannot do that in its present status (cancel a finished one); views answer 409."""


def batch_directory(batch: BatchPrediction) -> Path:
    return Path(default_storage.path(batch.storage_dir))


def batch_csv_path(batch: BatchPrediction) -> Path | None:
    """The finished batch's CSV, or None while it runs (or when it ended before writing any)."""
    path = batch_directory(batch) / CSV_FILE
    return path if batch.is_finished and path.is_file() else None


def batch_csv_filename(batch: BatchPrediction) -> str:
    """The download's name, after the archive's, so that a user's several CSVs can be told apart."""
    return f"{Path(batch.filename).name.split('.')[0] or 'batch'}-predictions.csv"


def batch_list_for_user(*, user, model: TrainedModel | None = None) -> QuerySet[BatchPrediction]:
    """The user's batch predictions (staff: everyone's), newest first; of one model when given."""
    batches = owned_by(BatchPrediction.objects.select_related("model"), user)
    return batches.filter(model=model) if model is not None else batches


def _is_litter(name: str) -> bool:
    """Operating-system litter (ignored like the ingests ignore it): no row in the CSV."""
    from ml.ingest import JUNK_NAMES

    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in JUNK_NAMES


def _extensions(kind: str) -> frozenset[str]:
    from ml.audio import AUDIO_EXTENSIONS
    from ml.ingest import IMAGE_EXTENSIONS

    return frozenset(AUDIO_EXTENSIONS if kind == "audio" else IMAGE_EXTENSIONS)


def _unusable(kind: str, name: str) -> str | None:
    """Why the model cannot take this file, from its name alone; None when it can try."""
    extension = PurePosixPath(name).suffix.lower()
    if extension in _extensions(kind):
        return None
    what, accepted = _KINDS[kind]
    files = f"{extension} files are" if extension else "files without an extension are"
    return f"not one of the model's {what}: {files} not used ({accepted} are)."


# --- Create (web request) ----------------------------------------------------------------------


def batch_create(*, user, model: TrainedModel, upload) -> BatchPrediction:
    """Store an uploaded archive as a QUEUED batch prediction with `model`, and queue its run after commit.

    Raises ValidationError({"archive": [message]}) naming the file and the reason (too large, not
    an archive, corrupt, empty, nothing the model takes); nothing is stored then. The caller has
    checked that `user` may use `model`.
    """
    if upload is None:
        raise ValidationError({"archive": ["Choose an archive (.zip, .tar or .tar.gz) of files to predict."]})
    label = Path(upload.name or "archive").name
    if upload.size > settings.MAX_UPLOAD_BYTES:
        raise ValidationError({"archive": [f"{label} is {_size(upload.size)}; the largest upload accepted is "
                                           f"{_size(settings.MAX_UPLOAD_BYTES)}."]})
    root = Path(default_storage.path("batches"))
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    directory: Path | None = None
    try:
        with staging.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        total = _check_archive(staging, label, model.kind)
        with transaction.atomic():
            batch = BatchPrediction.objects.create(
                owner=user, model=model, filename=label[: BatchPrediction._meta.get_field("filename").max_length],
                total=total, queue=default_queue())
            directory = batch_directory(batch)
            shutil.rmtree(directory, ignore_errors=True)  # an id reused after a rollback (SQLite): stale leftovers
            directory.mkdir(parents=True)
            os.replace(staging, directory / ARCHIVE)
            transaction.on_commit(lambda: _queue(batch.pk, batch.queue))
    except BaseException:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
    logger.info("Batch prediction %s queued: %s (%d files) with model %s", batch.pk, label, total, model.pk)
    return batch


def _check_archive(path: Path, label: str, kind: str) -> int:
    """The number of files the batch will have rows for; ValidationError when there is nothing to do."""
    try:
        with open_archive(path, archive_limits()) as archive:
            names = [m.name for m in archive.members if not _is_litter(m.name)]
    except DatasetError as exc:
        raise ValidationError({"archive": [f"{label}: {exc}"]}) from None
    if not names:
        raise ValidationError({"archive": [f"{label}: the archive holds only system files (such as __MACOSX/ "
                                           "or hidden files), nothing to predict."]})
    if all(_unusable(kind, name) for name in names):
        what, accepted = _KINDS[kind]
        raise ValidationError({"archive": [
            f"{label}: none of its {len(names):,} files is one of the model's {what} ({accepted}); "
            f"for example {names[0]!r}."]})
    return len(names)


def _queue(batch_id: int, queue: str) -> None:
    from webapp.registry.tasks import predict_archive  # tasks import this module

    try:
        predict_archive.apply_async((batch_id,), queue=queue or None)
    except Exception:  # the broker is down: say so on the batch's page instead of a 500
        logger.exception("Could not queue batch prediction %s", batch_id)
        BatchPrediction.objects.filter(id=batch_id, status=STATUS.QUEUED).update(
            status=STATUS.FAILED, finished_at=timezone.now(),
            error="The archive was stored but could not be queued (the task queue is unreachable). "
                  "Delete this batch and try again later, or ask the administrator.")


def _size(n: int) -> str:
    return filesizeformat(n).replace("\xa0", " ")


# --- Cancel and delete ---------------------------------------------------------------------------


def batch_cancel(*, batch: BatchPrediction) -> None:
    """A queued batch is cancelled at once; a running one is flagged and stops within a chunk of
    files (its CSV keeps the rows done). A finished one raises BatchStateError."""
    now = timezone.now()
    if BatchPrediction.objects.filter(id=batch.pk, status=STATUS.QUEUED).update(
            status=STATUS.CANCELLED, cancel_requested=True, finished_at=now):
        (batch_directory(batch) / ARCHIVE).unlink(missing_ok=True)
    elif not BatchPrediction.objects.filter(id=batch.pk, status=STATUS.RUNNING).update(cancel_requested=True):
        batch.refresh_from_db()
        raise BatchStateError(f"This batch prediction has already {batch.get_status_display().lower()}; "
                              "there is nothing to cancel.")
    batch.refresh_from_db()


def batch_delete(*, batch: BatchPrediction) -> None:
    """Delete the row, then its folder once that has committed. A run in progress finds its next
    write refused and stops."""
    directory = batch_directory(batch)
    with transaction.atomic():
        batch.delete()
        transaction.on_commit(lambda: shutil.rmtree(directory, ignore_errors=True))


# --- Run (worker) --------------------------------------------------------------------------------


class _Stopped(Exception):
    """A write of the run was refused: cancel requested, the batch deleted, or taken over."""


def batch_run(*, batch_id: int) -> None:
    """Claim the batch and predict every file of its archive into the CSV; ends SUCCEEDED, FAILED
    with a plain reason, or CANCELLED. Never raises for anything an upload or a model can cause,
    so one batch cannot take the worker down."""
    batch = _claim(batch_id)
    if batch is None:
        return
    run = _held(batch)
    directory = batch_directory(batch)
    part = directory / f"{CSV_FILE}.{batch.lease}.part"  # this run's, so two never mix
    tally = _Tally()
    ended = True  # by this run: then the upload is not needed again (a run that took over still reads it)
    try:
        with part.open("w", newline="", encoding="utf-8") as out, LeaseHeartbeat(run, name=f"Batch {batch_id}"):
            _predict_archive(batch, run, csv.writer(out), out, tally)
        if not run.exists():  # taken over or deleted after the last progress write: the CSV is not ours to write
            raise _Stopped
        os.replace(part, directory / CSV_FILE)
        if tally.predicted == 0 and tally.skipped:
            error = f"None of the {len(tally.skipped):,} files could be predicted; the CSV gives each reason."
            _finish(run, tally, STATUS.FAILED, error=error)
        else:
            _finish(run, tally, STATUS.SUCCEEDED)
    except _Stopped:
        ended = _stopped(batch_id, run, part, tally)
    except ModelUnavailable as exc:
        _finish(run, tally, STATUS.FAILED, error=f"{exc} Nothing was predicted.")
    except DatasetError as exc:  # the archive changed or broke on disk since it was checked
        _finish(run, tally, STATUS.FAILED, error=f"{batch.filename}: {exc}")
    except Exception as exc:  # disk full, a bug: keep the worker alive, tell the user plainly
        logger.exception("Batch prediction %s failed", batch_id)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "an internal error"
        _finish(run, tally, STATUS.FAILED, error=f"The batch stopped because of {reason}. Try again later, or ask "
                                                 "the administrator to look at the worker log.")
    finally:
        part.unlink(missing_ok=True)
        if ended:
            (directory / ARCHIVE).unlink(missing_ok=True)
    logger.info("Batch prediction %s ended: %d predicted, %d skipped", batch_id, tally.predicted, len(tally.skipped))


@dataclass
class _Tally:
    """How far a run is: rows written to its CSV."""

    predicted: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}, as BatchPrediction.skipped

    @property
    def done(self) -> int:
        return self.predicted + len(self.skipped)


def _held(batch: BatchPrediction) -> QuerySet[BatchPrediction]:
    """The batch while its run holds it: every write of the run goes through this filter."""
    return BatchPrediction.objects.filter(id=batch.pk, status=STATUS.RUNNING, lease=batch.lease)


def _poison_error(attempts: int) -> str:
    return (f"The worker running this batch stopped {attempts} times before it finished (killed, out of memory, "
            f"or crashed), so it was not tried again (at most {MAX_BATCH_ATTEMPTS} attempts). Try a smaller "
            "archive, or ask the administrator to look at the worker log.")


def _claim(batch_id: int) -> BatchPrediction | None:
    """Take the batch for this process: a QUEUED one, or a RUNNING one whose holder is dead (stale
    heartbeat, or a pid on this host that is gone: a task delivered again after its worker died),
    starting over from the first file. Counts the attempt; a batch out of attempts fails instead,
    and a dead one whose user asked to cancel is cancelled. Returns it holding its new lease, or None."""
    batch = BatchPrediction.objects.filter(id=batch_id).first()
    if batch is None or batch.is_finished:
        logger.info("Batch prediction %s: nothing to do (%s)", batch_id, batch.status if batch else "deleted")
        return None
    if batch.status == STATUS.RUNNING:
        if not lease_taken_over(batch, what=f"Batch prediction {batch_id}"):
            return None
        if batch.cancel_requested or batch.attempts >= MAX_BATCH_ATTEMPTS:
            _take_back(batch)
            return None
    token = uuid.uuid4().hex
    claimed = BatchPrediction.objects.filter(id=batch_id, status=batch.status, lease=batch.lease,
                                             attempts=batch.attempts).update(
        status=STATUS.RUNNING, lease=token, claimed_by=lease_holder_id()[:255], attempts=F("attempts") + 1,
        heartbeat_at=timezone.now(), started_at=timezone.now(), done=0, skipped=[], error="")
    if claimed != 1:
        logger.info("Batch prediction %s: another worker claimed it first", batch_id)
        return None
    batch = BatchPrediction.objects.select_related("model").get(id=batch_id)
    _remove_parts(batch)  # a dead run's rows: this run writes its own file
    return batch


def _remove_parts(batch: BatchPrediction) -> None:
    for stale in batch_directory(batch).glob(f"{CSV_FILE}.*.part"):
        stale.unlink(missing_ok=True)


def batch_reap() -> int:
    """Queue again (or fail, past MAX_BATCH_ATTEMPTS; or cancel, when asked to) the running batches
    whose holder is dead: a stale heartbeat, or a pid on this host that no longer exists. Called by
    every worker's reaper thread with job_reap and dataset_reap (jobs.tasks), so a dead batch shows
    "running" for at most dead_job_limit_s(). Returns how many it took back."""
    return reap_dead_holders(BatchPrediction.objects.filter(status=STATUS.RUNNING), _take_back)


def _take_back(batch: BatchPrediction) -> int:
    """End or requeue a RUNNING batch whose holder is dead, conditionally on the dead holder's lease.
    A batch that ends here has no CSV: the dead run's rows may end in a torn line."""
    held = _held(batch)
    if batch.cancel_requested or batch.attempts >= MAX_BATCH_ATTEMPTS:
        status, error = ((STATUS.CANCELLED, "") if batch.cancel_requested
                         else (STATUS.FAILED, _poison_error(batch.attempts)))
        ended = held.update(status=status, error=error, finished_at=timezone.now(), lease="", heartbeat_at=None)
        if ended:
            _remove_parts(batch)
            (batch_directory(batch) / ARCHIVE).unlink(missing_ok=True)
            logger.warning("Batch prediction %s: its worker %s stopped; %s after %s attempts", batch.pk,
                           batch.claimed_by, status, batch.attempts)
        return ended
    with transaction.atomic():
        requeued = held.update(status=STATUS.QUEUED, lease="", claimed_by="", heartbeat_at=None)
        if requeued:
            transaction.on_commit(lambda: _queue(batch.pk, batch.queue))
    if requeued:
        logger.warning("Batch prediction %s: its worker %s stopped (heartbeat %s); queued again, attempt %s of %s "
                       "done", batch.pk, batch.claimed_by, batch.heartbeat_at, batch.attempts, MAX_BATCH_ATTEMPTS)
    return requeued


def _predict_archive(batch: BatchPrediction, run: QuerySet, writer, out, tally: _Tally) -> None:
    """Write the header and every file's row, counting them in `tally`. Raises _Stopped when a
    progress write is refused."""
    model = batch.model
    predictor = predictor_for(model)
    writer.writerow(CSV_COLUMNS)
    last_write = time.monotonic()
    with open_archive(batch_directory(batch) / ARCHIVE, archive_limits()) as archive:
        members = [m for m in archive.members if not _is_litter(m.name)]
        if run.update(total=len(members)) != 1:
            raise _Stopped
        for start in range(0, len(members), CHUNK):
            for row in _predict_chunk(archive, members[start:start + CHUNK], model, predictor):
                writer.writerow(row)
                if row[-1]:
                    tally.skipped.append({"file": row[0], "reason": row[-1]})
                else:
                    tally.predicted += 1
            out.flush()
            if time.monotonic() - last_write >= PROGRESS_INTERVAL_S and tally.done < len(members):
                last_write = time.monotonic()
                # The cancel check and a heartbeat ride on the progress write: refused once
                # cancel_requested is set, or once the lease is lost.
                if run.filter(cancel_requested=False).update(done=tally.done, skipped=tally.skipped,
                                                             heartbeat_at=timezone.now()) != 1:
                    raise _Stopped


def _predict_chunk(archive, members: list[Member], model: TrainedModel, predictor) -> list[tuple]:
    """Rows of a chunk of files, in order: each readable file decoded exactly as a single prediction
    would be (Predictor.prepare), then all of them through the model at once."""
    decode_errors = _decode_errors(model)
    limit = settings.MAX_PREDICT_BYTES
    inputs, reasons = [], []
    for member in members:
        reason = _unusable(model.kind, member.name)
        if reason is None:
            try:
                data = archive.read(member)
                if len(data) > limit:
                    reason = f"the file is larger than the {_size(limit)} limit for predictions."
                elif not data:
                    reason = "the file is empty."
                else:
                    inputs.append(predictor.prepare(data))
            except DatasetError as exc:  # this member is damaged; the others may be fine
                reason = _sentence(exc)
            except decode_errors as exc:
                reason = _sentence(exc)
            except MemoryError:
                raise
            except Exception as exc:  # decoders raise odd errors on crafted files (as the ingests say)
                reason = f"cannot decode the file ({type(exc).__name__})."
        reasons.append(reason)
    ranked = iter(predictor.predict_batch(inputs, top_k=TOP_K) if inputs else [])
    rows = []
    for member, reason in zip(members, reasons):
        if reason is not None:
            rows.append((member.name, "", "", "", reason))
            continue
        top = next(ranked)
        rows.append((member.name, top[0][0], f"{top[0][1]:.6f}", ";".join(f"{label}:{p:.4f}" for label, p in top), ""))
    return rows


def _finish(run: QuerySet, tally: _Tally, status: str, *, error: str = "") -> None:
    run.update(status=status, done=tally.done, skipped=tally.skipped, error=error, finished_at=timezone.now(),
               lease="", heartbeat_at=None)


def _stopped(batch_id: int, run: QuerySet, part: Path, tally: _Tally) -> bool:
    """A refused write: a cancel keeps the rows written so far as the CSV; a deletion removes the
    folder; a takeover leaves everything to the run that has the batch now. Returns whether the
    batch ended here."""
    if run.filter(cancel_requested=True).exists():
        os.replace(part, part.parent / CSV_FILE)
        _finish(run, tally, STATUS.CANCELLED)
        logger.info("Batch prediction %s cancelled after %d files", batch_id, tally.done)
        return True
    if not BatchPrediction.objects.filter(id=batch_id).exists():
        shutil.rmtree(part.parent, ignore_errors=True)  # deleted meanwhile: its folder must not linger
        logger.info("Batch prediction %s was deleted while it ran; stopped", batch_id)
        return True
    logger.warning("Batch prediction %s was taken over by another run; this one stopped", batch_id)
    return False
