"""Datasets: upload (dataset_create), ingest in a worker (dataset_ingest), delete, and reads.

Two kinds: images (ml.ingest, format perceptor-images/1) and speech (ml.ingest_audio, format
perceptor-audio/1). The user picks the kind on upload or leaves it to the worker, which counts
the image and audio files in the archive (ml.ingest.detect_kind).

The demos (dataset_create_demo) are made the same way, except that the request stores no archive:
the worker generates it as the first phase of the ingest (_demo_generate), then ingests it.

The archive is checked at once for what is cheap to know (size, that it is a zip or tar at all)
so the user hears about it on the form; everything else is found by the ingest in the worker and
shown on the dataset page (status FAILED with the message, or READY with the skipped files).
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from PIL import Image

from jobs.models import Job
# The lease and heartbeat rules of jobs, shared so that ingests and jobs are judged dead alike.
from jobs.services import default_queue, heartbeat_s, lease_holder_id, lease_taken_over, reap_dead_holders
from ml.archive import ArchiveLimits, DatasetError, sniff_format
from ml.ingest import detect_kind, ingest_image_archive
from ml.synthetic import write_shapes_archive
from webapp.datasets.models import Dataset, archive_upload_to
from webapp.ownership import owned_by

logger = logging.getLogger(__name__)

# The one description of the ingest options: the form, the API and the checks below use it.
# image_size applies to images only, clip_seconds to speech only; both are kept whatever the kind,
# so that an "auto" upload has what either ingest needs.
OPTION_DEFAULTS = {"image_size": 64, "val_fraction": 0.1, "seed": 0, "kind": "auto", "clip_seconds": 1.0}
KIND_AUTO = "auto"
KIND_CHOICES = [(KIND_AUTO, "Detect automatically"), *Dataset.Kind.choices]  # the "kind" option
IMAGE_SIZE_RANGE = (8, 512)  # pixels, side of the square images are squashed to
CLIP_SECONDS_RANGE = (0.1, 10.0)  # every speech clip is padded or trimmed to this many seconds
VAL_FRACTION_RANGE = (0.0, 0.5)  # share of each class held out for validation
SEED_MAX = 2**32 - 1  # numpy's default_rng takes any int; this keeps it a plain integer column

PROGRESS_INTERVAL_S = 0.5  # ingest progress is written to the row at most twice a second
SAMPLE_MIN_PIXELS = 96  # sample PNGs are upscaled by a whole factor to at least this side


# --- Create --------------------------------------------------------------------------------------


def dataset_options_clean(options: dict) -> dict:
    """Fill defaults and check the ingest options; raises ValidationError keyed by option name."""
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValidationError({"options": [f"Unknown option(s): {', '.join(unknown)}. "
                                           f"Choose from: {', '.join(OPTION_DEFAULTS)}."]})
    values = {**OPTION_DEFAULTS, **{k: v for k, v in options.items() if v is not None and v != ""}}
    errors: dict[str, list[str]] = {}
    clean: dict = {}
    lo, hi = IMAGE_SIZE_RANGE
    clean["image_size"] = _number(values["image_size"], int, "image_size", errors)
    if "image_size" not in errors and not lo <= clean["image_size"] <= hi:
        errors["image_size"] = [f"Image size must be between {lo} and {hi} pixels."]
    lo_f, hi_f = VAL_FRACTION_RANGE
    clean["val_fraction"] = _number(values["val_fraction"], float, "val_fraction", errors)
    if "val_fraction" not in errors and not lo_f <= clean["val_fraction"] <= hi_f:
        errors["val_fraction"] = [f"Validation fraction must be between {lo_f:g} and {hi_f:g}."]
    clean["seed"] = _number(values["seed"], int, "seed", errors)
    if "seed" not in errors and not 0 <= clean["seed"] <= SEED_MAX:
        errors["seed"] = [f"Seed must be a whole number between 0 and {SEED_MAX}."]
    kinds = [value for value, _ in KIND_CHOICES]
    clean["kind"] = values["kind"]
    if clean["kind"] not in kinds:
        errors["kind"] = [f"Kind must be one of: {', '.join(kinds)} (not {clean['kind']!r})."]
    lo_c, hi_c = CLIP_SECONDS_RANGE
    clean["clip_seconds"] = _number(values["clip_seconds"], float, "clip_seconds", errors)
    if "clip_seconds" not in errors and not lo_c <= clean["clip_seconds"] <= hi_c:
        errors["clip_seconds"] = [f"Clip length must be between {lo_c:g} and {hi_c:g} seconds."]
    if errors:
        raise ValidationError(errors)
    return clean


def _number(value, kind: type, field: str, errors: dict) -> int | float | None:
    what = "a whole number" if kind is int else "a number"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = kind(value)
        if kind is int and isinstance(value, float) and value != number:
            raise ValueError
        if kind is float and not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError):
        errors[field] = [f"{field.replace('_', ' ').capitalize()} must be {what}, not {value!r}."]
        return None
    return number


def dataset_validate(*, name: str, archive: File | None, options: dict) -> tuple[str, dict]:
    """Everything that can be told about an upload at once, all errors together.

    Returns (name, options) cleaned; raises ValidationError({"name"|"archive"|<option>: [message]}).
    """
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    max_name = Dataset._meta.get_field("name").max_length
    if not name:
        errors["name"] = ["Give the dataset a name."]
    elif len(name) > max_name:
        errors["name"] = [f"The name is {len(name)} characters long; the most is {max_name}."]
    try:
        options = dataset_options_clean(options or {})
    except ValidationError as exc:
        errors.update(exc.message_dict)
    archive_error = _archive_error(archive)
    if archive_error:
        errors["archive"] = [archive_error]
    if errors:
        raise ValidationError(errors)
    return name, options


def dataset_create(*, owner, name: str, archive: File, options: dict, queue_ingest: bool = True) -> Dataset:
    """Store an uploaded archive as a new PENDING dataset and queue its ingest after commit.

    Raises ValidationError (see dataset_validate) for what can be told at once; nothing is stored
    then. queue_ingest=False leaves the ingest to the caller (create_demo).
    """
    name, options = dataset_validate(name=name, archive=archive, options=options)
    # An "auto" upload reads as images until the worker has looked inside (_ingest_kind).
    kind = options["kind"] if options["kind"] != KIND_AUTO else Dataset.Kind.IMAGE
    dataset = Dataset(owner=owner, name=name, kind=kind, options=options, queue=default_queue())
    archive.seek(0)
    dataset.archive.save(Path(archive.name).name, archive, save=False)
    try:
        with transaction.atomic():
            dataset.save()
    except BaseException:
        dataset.archive.delete(save=False)  # no row, no file
        raise
    if queue_ingest:
        transaction.on_commit(lambda: _queue_ingest(dataset.id, dataset.queue))
    return dataset


def _queue_ingest(dataset_id: int, queue: str) -> None:
    from webapp.datasets.tasks import ingest_dataset  # tasks import this module

    try:
        ingest_dataset.apply_async((dataset_id,), queue=queue or None)
    except Exception:  # the broker is down: say so on the dataset page instead of a 500
        logger.exception("Could not queue the ingest of dataset %s", dataset_id)
        Dataset.objects.filter(id=dataset_id, status=Dataset.Status.PENDING).update(
            status=Dataset.Status.FAILED,
            error="The archive was stored but could not be queued for ingest (the task queue is unreachable). "
                  "Delete this dataset and upload again later, or ask the administrator.")


# Room in a request for the multipart headers and the other fields next to the archive: a request
# longer than MAX_UPLOAD_BYTES by more than this cannot hold an archive within the limit.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def dataset_upload_size_error(*, content_length: str | int | None) -> str | None:
    """Refuse an upload by its Content-Length, before a byte of the body is read: the message for
    a request too large to hold an archive within MAX_UPLOAD_BYTES, else None (also when the
    length is missing or garbled: the archive's own size is checked once it is received)."""
    try:
        length = int(content_length or 0)
    except (TypeError, ValueError):
        return None
    limit = settings.MAX_UPLOAD_BYTES
    if length <= limit + UPLOAD_OVERHEAD_BYTES:
        return None
    return (f"The upload is {filesizeformat(length)}; the largest upload accepted is {filesizeformat(limit)}. "
            "Nothing was stored.")


def _archive_error(archive: File | None) -> str | None:
    if archive is None:
        return "Choose an archive to upload."
    label = Path(archive.name or "the file").name
    size = archive.size
    if size > settings.MAX_UPLOAD_BYTES:
        return (f"{label} is {filesizeformat(size)}; the largest upload accepted is "
                f"{filesizeformat(settings.MAX_UPLOAD_BYTES)}.")
    archive.seek(0)
    head = archive.read(64 * 1024)
    archive.seek(0)
    try:
        sniff_format(head)
    except DatasetError as exc:
        return f"{label}: {exc}"
    return None


@dataclass(frozen=True)
class Demo:
    """A dataset generated on the machine, so that a newcomer can train with no download.

    The web request only makes the row (PENDING, no archive, options["demo"] = its key); the
    worker writes the archive as the first phase of the ingest (_demo_generate), under the
    ingest's claim, lease and heartbeat, then ingests it like an upload."""

    name: str
    archive_name: str
    write: Callable[..., Path]  # write(path, progress=None) -> path of the archive; progress(done, total)
    options: dict  # ingest options
    summary: str  # what it holds, for the page's message
    generating: str  # what the worker is doing in the first phase, for the progress bar


def _write_shapes(path: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    written = write_shapes_archive(path, **DEMO_SHAPES)  # ~2 s: one step of progress is enough
    if progress is not None:
        progress(1, 1)
    return written


def _write_digits(path: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    from ml.synthetic_speech import write_digits_archive  # loads espeak-ng: only when asked for

    return write_digits_archive(path, **DEMO_DIGITS, progress=progress)


DEMO_SHAPES = {"per_class": 300, "size": 32, "seed": 0}  # 5 classes × 300, 32×32 RGB: ~2 s to render
DEMO_DIGITS = {"per_class": 200, "seed": 0}  # "zero" … "nine" by espeak-ng, 10 × 200 clips: ~25 s on 2 shared cores
# (measured: 200 clips in 2.4 s, 2026-11-30), ~36 MB zip
DEMOS = {
    "shapes": Demo("Shapes (demo)", "shapes-demo.zip", _write_shapes, {"image_size": 32, "kind": "image"},
                   "generated 32×32 images of five shapes", "Drawing the shapes"),
    "digits": Demo("Spoken digits (demo)", "digits-demo.zip", _write_digits, {"clip_seconds": 1.0, "kind": "audio"},
                   "one-second clips of the words zero to nine, synthesised with espeak-ng in many voices",
                   "Generating clips: synthesising the words zero to nine"),
}
DEMO_OPTION = "demo"  # options[DEMO_OPTION] = a key of DEMOS: the worker generates the archive first


def dataset_create_demo(*, owner, which: str = "shapes", queue_ingest: bool = True) -> tuple[Dataset, bool]:
    """The owner's demo dataset `which` (a key of DEMOS): the existing one unless it failed, else
    a new PENDING one with no archive, whose ingest (queued after commit) generates the archive
    first. Nothing slow happens here: the web request returns at once.

    Returns (dataset, created). queue_ingest=False leaves the ingest to the caller (create_demo).
    """
    try:
        demo = DEMOS[which]
    except KeyError:
        raise ValueError(f"Unknown demo {which!r}. Choose one of: {', '.join(DEMOS)}") from None
    options = {**dataset_options_clean(demo.options), DEMO_OPTION: which}
    with transaction.atomic():
        # Lock the owner's row (PostgreSQL; SQLite serialises writers anyway) so that two clicks
        # at once make one demo, not two.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        existing = Dataset.objects.filter(owner=owner, name=demo.name).exclude(status=Dataset.Status.FAILED).first()
        if existing is not None:
            return existing, False
        for failed in Dataset.objects.filter(owner=owner, name=demo.name, status=Dataset.Status.FAILED):
            dataset_delete(dataset=failed)
        dataset = Dataset.objects.create(owner=owner, name=demo.name, kind=options["kind"], options=options,
                                         queue=default_queue())
        if queue_ingest:
            transaction.on_commit(lambda: _queue_ingest(dataset.id, dataset.queue))
    return dataset, True


def dataset_phase(*, dataset: Dataset) -> tuple[str, str]:
    """(phase, label) of a dataset on its way to READY, for its progress bar: "waiting", "generating"
    (a demo's archive is being written: the first half of the bar) or "ingesting"; ("", "") after."""
    demo = DEMOS.get(dataset.options.get(DEMO_OPTION, ""))
    if dataset.status == Dataset.Status.PENDING:
        what = "generate and ingest the demo" if demo is not None and not dataset.archive else "ingest the archive"
        return "waiting", f"Waiting for a worker to {what}…"
    if dataset.status != Dataset.Status.INGESTING:
        return "", ""
    if demo is not None and not dataset.archive:
        return "generating", f"{demo.generating} (step 1 of 2)…"
    what = ("reading, decoding and resampling the clips" if dataset.kind == Dataset.Kind.AUDIO
            else "reading and decoding the images")
    return "ingesting", f"Ingesting: {what}{' (step 2 of 2)' if demo is not None else ''}…"


# --- Ingest (in a worker) ------------------------------------------------------------------------


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_expanded_bytes=settings.MAX_EXPANDED_BYTES,
        max_members=settings.MAX_ARCHIVE_MEMBERS,
        max_ratio=settings.MAX_ARCHIVE_RATIO,
    )


MAX_INGEST_ATTEMPTS = 3  # claims of one dataset; a third dead worker means the archive kills workers


class _LeaseLost(Exception):
    """The dataset was taken back (reaped and claimed by another worker) or deleted mid-ingest."""


def _ingest_poison_error(attempts: int) -> str:
    return (f"The worker ingesting this archive stopped {attempts} times before it finished (killed, out of "
            f"memory, or crashed), so it was not tried again (at most {MAX_INGEST_ATTEMPTS} attempts). "
            "Try a smaller archive, or ask the administrator to look at the worker log.")


def _ingest_claim(dataset_id: int) -> Dataset | None:
    """Take the dataset for this process: a PENDING one, or an INGESTING one whose holder is dead
    (stale heartbeat, or a pid on this host that is gone), the same test as for jobs. Counts the
    attempt; a dataset out of attempts fails instead. Returns it holding its new lease, or None."""
    dataset = Dataset.objects.filter(id=dataset_id).first()
    if dataset is None:
        logger.info("Dataset %s not ingested: it no longer exists", dataset_id)
        return None
    if dataset.status == Dataset.Status.INGESTING:
        if not lease_taken_over(dataset, what=f"The ingest of dataset {dataset_id}"):
            return None
    elif dataset.status != Dataset.Status.PENDING:
        logger.info("Dataset %s is %s already; nothing to do", dataset_id, dataset.status)
        return None
    if dataset.attempts >= MAX_INGEST_ATTEMPTS:
        Dataset.objects.filter(id=dataset_id, status=dataset.status, lease=dataset.lease).update(
            status=Dataset.Status.FAILED, error=_ingest_poison_error(dataset.attempts), progress=0.0, lease="",
            heartbeat_at=None)
        return None
    token = uuid.uuid4().hex
    claimed = Dataset.objects.filter(id=dataset_id, status=dataset.status, lease=dataset.lease,
                                     attempts=dataset.attempts).update(
        status=Dataset.Status.INGESTING, lease=token, claimed_by=lease_holder_id()[:255], attempts=F("attempts") + 1,
        heartbeat_at=timezone.now(), progress=0.0, error="")
    if claimed != 1:
        logger.info("Dataset %s not ingested: another worker claimed it first", dataset_id)
        return None
    return Dataset.objects.get(id=dataset_id)


def dataset_ingest(*, dataset_id: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Claim a dataset (PENDING, or INGESTING under a dead worker) and ingest its archive: READY
    with the summary, or FAILED with why. A demo (options["demo"]) with no archive yet has it
    generated first (_demo_generate): the first half of the progress bar, the ingest the second.

    Never raises for a bad archive or a failed ingest, so one upload cannot take a worker down.
    `progress(done, total)` is called for every file (create_demo draws a bar with it); for a demo
    it spans both phases, the generation's (done, total) reported as (done, 2 × total) and the
    ingest's as (total + done, 2 × total). Safe to deliver twice: the lease lets one process at a
    time work on a dataset, and both phases are all-or-nothing (the archive is generated in a
    hidden folder and stored only when complete; ml.ingest writes a hidden folder and renames it
    into place), so a takeover starts the unfinished phase afresh.
    """
    dataset = _ingest_claim(dataset_id)
    if dataset is None:
        return
    lease = dataset.lease
    out_dir = Path(default_storage.path(dataset.storage_dir))
    last_write = 0.0

    def on_progress(done: int, total: int) -> None:
        nonlocal last_write
        if progress is not None:
            progress(done, total)
        now = time.monotonic()
        # One UPDATE carries progress and heartbeat; it is throttled to the shorter of the two intervals.
        if now - last_write >= min(PROGRESS_INTERVAL_S, heartbeat_s()):
            last_write = now
            beat = Dataset.objects.filter(id=dataset_id, status=Dataset.Status.INGESTING, lease=lease).update(
                progress=min(done / max(total, 1), 0.99), heartbeat_at=timezone.now())
            if not beat:
                raise _LeaseLost

    demo = dataset.options.get(DEMO_OPTION)
    phases = 2 if demo else 1

    def phase_progress(index: int) -> Callable[[int, int], None]:
        """Phase `index` of `phases` as one bar: equal shares, whatever each phase counts."""
        if phases == 1:
            return on_progress
        return lambda done, total: on_progress(index * max(total, 1) + done, phases * max(total, 1))

    try:
        if demo and not dataset.archive:
            archive_name = _demo_generate(dataset, demo, progress=phase_progress(0))
            if archive_name is None:
                return  # failed, and said why on the row
        else:
            archive_name = dataset.archive.name
        archive_path = default_storage.path(archive_name)
        options = {**OPTION_DEFAULTS, **dataset.options}
        ingest_progress = phase_progress(phases - 1)
        kind = _ingest_kind(dataset, archive_path, options["kind"])
        if kind == Dataset.Kind.AUDIO:
            from ml.ingest_audio import ingest_audio_archive  # soundfile, torchaudio: only for speech

            report = ingest_audio_archive(
                archive_path, out_dir, clip_seconds=options["clip_seconds"], val_fraction=options["val_fraction"],
                seed=options["seed"], max_clip_seconds=settings.MAX_CLIP_SECONDS, limits=archive_limits(),
                progress=ingest_progress)
        else:
            report = ingest_image_archive(
                archive_path, out_dir, image_size=options["image_size"], val_fraction=options["val_fraction"],
                seed=options["seed"], limits=archive_limits(), progress=ingest_progress)
    except _LeaseLost:
        logger.warning("Dataset %s: the ingest was taken back or deleted meanwhile; stopped", dataset_id)
        return
    except DatasetError as exc:
        _fail(dataset_id, lease, str(exc))
        return
    except Exception as exc:  # disk full, a bug: keep the worker alive, tell the user plainly
        logger.exception("Ingest of dataset %s failed", dataset_id)
        reason = f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else "an internal error"
        _fail(dataset_id, lease, f"The archive could not be ingested because of {reason}. "
                                 "Try again later, or ask the administrator to look at the worker log.")
        return

    finished = Dataset.objects.filter(id=dataset_id, status=Dataset.Status.INGESTING, lease=lease).update(
        status=Dataset.Status.READY,
        progress=1.0,
        lease="",
        heartbeat_at=None,
        ingested_at=timezone.now(),
        **_ready_fields(report, kind),
    )
    if finished != 1 and not Dataset.objects.filter(id=dataset_id).exists():
        # Deleted while ingesting: do not leave its arrays behind. (Taken over instead: the new
        # holder replaces the folder itself, so it is left alone.)
        shutil.rmtree(out_dir, ignore_errors=True)


def _demo_generate(dataset: Dataset, which: str, *, progress: Callable[[int, int], None]) -> str | None:
    """Write demo `which`'s archive for a claimed dataset and store it as the dataset's archive,
    as if it had been uploaded; returns its storage name, or None after failing the dataset.

    The archive is written in a hidden folder next to the ingested arrays (`datasets/.<id>.*.tmp`,
    the ingest's own pattern, so a killed worker's half-written archive is swept away by the
    next attempt) and stored only when complete, under the lease: a takeover starts over, and the
    generation is deterministic (seeded), so the result is the same. Raises _LeaseLost."""
    demo = DEMOS.get(which)
    if demo is None:
        _fail(dataset.id, dataset.lease, f"This dataset was made by a demo ({which!r}) this site no longer has. "
                                         "Delete it and use a demo button again.")
        return None
    parent = Path(default_storage.path("datasets"))
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{dataset.id}.*.tmp"):  # left by a killed worker
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dataset.id}.", suffix=".tmp", dir=parent))
    try:
        try:
            path = demo.write(work / demo.archive_name, progress=progress)
        except (ImportError, OSError, RuntimeError) as exc:  # no espeak-ng library or voices, disk full
            logger.exception("Could not generate the %s dataset (dataset %s)", demo.name, dataset.id)
            reason = str(exc).rstrip(". ") or type(exc).__name__
            _fail(dataset.id, dataset.lease, f"{demo.name} could not be generated on this machine: {reason}. "
                                             "Ask the administrator to look at the worker log, then try again.")
            return None
        with open(path, "rb") as f:
            name = default_storage.save(archive_upload_to(dataset, demo.archive_name), File(f, name=path.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stored = Dataset.objects.filter(id=dataset.id, status=Dataset.Status.INGESTING, lease=dataset.lease).update(
        archive=name, progress=0.5, heartbeat_at=timezone.now())  # the ingest is the second half
    if stored != 1:
        default_storage.delete(name)
        raise _LeaseLost
    return name


def _ingest_kind(dataset: Dataset, archive_path: str, chosen: str) -> str:
    """The kind to ingest as: the user's choice, or what the archive holds more of (an archive
    with neither images nor audio counts as images, whose error message then explains). Written
    to the row at once, so that the page says what is being decoded."""
    kind = chosen if chosen != KIND_AUTO else detect_kind(archive_path, limits=archive_limits())
    if kind != dataset.kind:
        Dataset.objects.filter(id=dataset.id, status=Dataset.Status.INGESTING, lease=dataset.lease).update(kind=kind)
    return kind


# What a speech dataset's page and API show from its dataset.json (Dataset.info).
SPEECH_INFO_KEYS = ("sample_rate", "clip_samples", "num_test", "durations", "trimmed", "padded", "split",
                    "noise_files", "noise_seconds", "warnings")


def _ready_fields(report, kind: str) -> dict:
    """The row's summary of an ingest report (images: IngestReport; speech: AudioIngestReport)."""
    meta = report.to_json()
    kind = getattr(report, "kind", kind)
    splits = ("train", "val", "test") if kind == Dataset.Kind.AUDIO else ("train", "val")
    fields = {
        "kind": kind,
        "num_samples": report.num_samples,
        "num_train": meta["num_train"],
        "num_val": meta["num_val"],
        "classes": [{"name": name, **{split: meta["counts"].get(split, [0] * len(meta["classes"]))[i]
                                      for split in splits}}
                    for i, name in enumerate(meta["classes"])],
        "skipped": meta["skipped"],
    }
    if kind == Dataset.Kind.AUDIO:
        fields.update(height=0, width=0, channels=0, info={key: meta.get(key) for key in SPEECH_INFO_KEYS})
    else:
        fields.update(height=meta["height"], width=meta["width"], channels=meta["channels"], info={})
    return fields


def _fail(dataset_id: int, lease: str, message: str) -> None:
    Dataset.objects.filter(id=dataset_id, status=Dataset.Status.INGESTING, lease=lease).update(
        status=Dataset.Status.FAILED, error=message, progress=0.0, lease="", heartbeat_at=None)


def dataset_reap() -> int:
    """Queue again (or fail, past MAX_INGEST_ATTEMPTS) the ingests whose holder is dead: a stale
    heartbeat, or a pid on this host that no longer exists. Called by every worker's reaper thread
    with job_reap (jobs.tasks), so a dead ingest shows "ingesting" for at most dead_job_limit_s().
    Returns how many it took back."""
    return reap_dead_holders(Dataset.objects.filter(status=Dataset.Status.INGESTING), _ingest_take_back)


def _ingest_take_back(dataset: Dataset) -> int:
    if dataset.attempts >= MAX_INGEST_ATTEMPTS:
        return Dataset.objects.filter(id=dataset.id, status=Dataset.Status.INGESTING, lease=dataset.lease).update(
            status=Dataset.Status.FAILED, error=_ingest_poison_error(dataset.attempts), progress=0.0, lease="",
            heartbeat_at=None)
    with transaction.atomic():
        requeued = Dataset.objects.filter(id=dataset.id, status=Dataset.Status.INGESTING, lease=dataset.lease).update(
            status=Dataset.Status.PENDING, lease="", claimed_by="", heartbeat_at=None, progress=0.0)
        if requeued:
            transaction.on_commit(lambda: _queue_ingest(dataset.id, dataset.queue))
    if requeued:
        logger.warning("Dataset %s: its ingest worker %s stopped (heartbeat %s); queued again, attempt %s of %s "
                       "done", dataset.id, dataset.claimed_by, dataset.heartbeat_at, dataset.attempts,
                       MAX_INGEST_ATTEMPTS)
    return requeued


# --- Delete --------------------------------------------------------------------------------------


class DatasetInUse(Exception):
    """The dataset is being trained on; deleting it would pull the data from under the job."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def dataset_delete(*, dataset: Dataset, force: bool = False) -> None:
    """Delete the row (and, by cascade, its jobs and their history), then the archive and the arrays.

    Raises DatasetInUse while a job on it is queued or running, unless force (the admin site).
    """
    active = Job.objects.filter(dataset=dataset, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()
    if active and not force:
        raise DatasetInUse(
            f"{dataset.name} is used by {active} training job{'s' if active > 1 else ''} that "
            f"{'are' if active > 1 else 'is'} queued or running; cancel {'them' if active > 1 else 'it'} first."
        )
    archive_name, storage_dir = dataset.archive.name, dataset.storage_dir
    dataset.delete()
    if archive_name:
        default_storage.delete(archive_name)
    shutil.rmtree(default_storage.path(storage_dir), ignore_errors=True)


# --- Reads ---------------------------------------------------------------------------------------


def dataset_list_for_user(*, user) -> QuerySet[Dataset]:
    return owned_by(Dataset.objects.select_related("owner"), user)


def dataset_meta(*, dataset: Dataset) -> dict:
    """The dataset.json of a READY dataset ({} when it is not ready or the file is gone)."""
    if dataset.status != Dataset.Status.READY:
        return {}
    try:
        with default_storage.open(f"{dataset.storage_dir}/dataset.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        logger.warning("dataset.json of dataset %s is missing or unreadable", dataset.pk)
        return {}


def dataset_sample_png(*, dataset: Dataset, index: int) -> bytes | None:
    """One stored sample as a PNG, upscaled by a whole factor (crisp pixels); None if out of range."""
    if dataset.status != Dataset.Status.READY:
        return None
    try:
        images = np.load(default_storage.path(f"{dataset.storage_dir}/images.npy"), mmap_mode="r",
                         allow_pickle=False)
    except (OSError, ValueError):
        return None
    if not 0 <= index < len(images):
        return None
    pixels = np.array(images[index])
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    factor = max(1, math.ceil(SAMPLE_MIN_PIXELS / max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _speech_clip(dataset: Dataset, index: int) -> np.ndarray | None:
    """One stored clip of a READY speech dataset (int16, clip_samples long); None if there is none."""
    if dataset.status != Dataset.Status.READY or dataset.kind != Dataset.Kind.AUDIO:
        return None
    try:
        clips = np.load(default_storage.path(f"{dataset.storage_dir}/audio.npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if clips.ndim != 2 or not 0 <= index < len(clips):
        return None
    return np.array(clips[index])


def _sample_rate(dataset: Dataset) -> int:
    from ml.audio import SAMPLE_RATE

    return int(dataset.info.get("sample_rate") or SAMPLE_RATE)


def dataset_clip_wav(*, dataset: Dataset, index: int) -> bytes | None:
    """One stored clip of a speech dataset as a 16-bit WAV; None if out of range or not speech."""
    clip = _speech_clip(dataset, index)
    if clip is None:
        return None
    from ml.audio import encode_wav

    return encode_wav(clip, _sample_rate(dataset))


def dataset_clip_png(*, dataset: Dataset, index: int) -> bytes | None:
    """The mel spectrogram of one stored clip as a PNG (ml.audio: the nets' front-end settings)."""
    clip = _speech_clip(dataset, index)
    if clip is None:
        return None
    from ml.audio import from_int16, spectrogram_png

    return spectrogram_png(from_int16(clip), _sample_rate(dataset))
