"""The model registry: storing trained models, loading them once, and predicting with them."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.template.defaultfilters import filesizeformat

from webapp.registry.models import TrainedModel

if TYPE_CHECKING:  # ml is imported lazily: the web process should not pay for torch until needed
    from ml import AudioData, ImageData, Predictor, TrainResult

    from jobs.models import Job

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "model.json")
TOP_K = 5


def model_directory(model: TrainedModel) -> Path:
    return Path(default_storage.path(model.storage_dir))


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tensors -> JSON types; NaN/inf -> None (JSON has neither)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _config_value(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, dict) else getattr(config, name)


# --- Registering and deleting -------------------------------------------------------------------


def model_register(*, job: Job, result: TrainResult, data: ImageData | AudioData | None = None) -> TrainedModel:
    """Store a finished training run: a TrainedModel row and its files, both or neither.

    Everything is built first in a staging folder beside the models: weights and description, the
    evaluation report (ml.evaluate, on `data`'s validation split), the other formats with their
    parity check, the lineage. That takes seconds and must not hold a database transaction open
    (SQLite would lock every other writer out). Then one transaction creates the row and renames
    the folder to its place. The version is the next one for (owner, name); two registrations
    racing for the same version hit the unique constraint and the loser retries with the following
    number. `data` is the dataset the job trained on (loaded from the job's dataset when None).
    """
    from ml import save_model

    if data is None:
        data = _dataset_or_none(job)
    arch = _config_value(result.config, "arch")
    name = f"{job.dataset.name} · {arch}"[: TrainedModel._meta.get_field("name").max_length]
    staging = Path(default_storage.path("models")) / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        save_model(result, staging)
        fields = {
            "lineage": _extra("lineage", lambda: model_lineage(job=job, result=result, data=data)),
            "evaluation": _extra("evaluation", lambda: model_evaluation(result=result, data=data, directory=staging)),
            "exports": _extra("exports", lambda: model_exports(result=result, data=data, directory=staging)),
        }
        size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        for attempt in range(5):
            directory: Path | None = None
            try:
                with transaction.atomic():
                    latest = TrainedModel.objects.filter(owner=job.owner, name=name).aggregate(v=Max("version"))["v"]
                    model = TrainedModel.objects.create(
                        owner=job.owner,
                        job=job,
                        dataset=job.dataset,
                        name=name,
                        version=(latest or 0) + 1,
                        arch=arch,
                        classes=_plain(list(result.classes)),
                        input_spec=_plain(dict(result.input_spec)),
                        metrics=_plain(dict(result.metrics)),
                        confusion=_plain(result.confusion),
                        size_bytes=size,
                        **{key: _plain(value) for key, value in fields.items()},
                    )
                    directory = model_directory(model)
                    # An id can come back after a rolled-back insert (SQLite); its leftovers are stale.
                    shutil.rmtree(directory, ignore_errors=True)
                    os.replace(staging, directory)
            except IntegrityError:
                if directory is not None and directory.exists():
                    os.replace(directory, staging)  # the folder goes back for the next attempt
                if attempt == 4 or TrainedModel.objects.filter(job=job).exists():
                    raise  # not a version race: the job already has a model, or we keep losing
                continue
            except BaseException:
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
                raise
            logger.info("Registered %s (id %s, %d bytes) from job %s", model, model.pk, model.size_bytes, job.pk)
            return model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    raise AssertionError("unreachable")


def _dataset_or_none(job: Job) -> ImageData | AudioData | None:
    """The job's dataset, or None when its files cannot be read (then the report and the exports
    record why they are missing)."""
    from ml.data import load_dataset

    try:
        return load_dataset(default_storage.path(job.dataset.storage_dir))
    except (OSError, ValueError) as exc:
        logger.warning("Job %s: cannot read dataset %s for the report and exports: %s", job.pk, job.dataset_id, exc)
        return None


def _extra(what: str, make) -> dict:
    """A part of the registration that must never lose the model: its failure is logged and
    recorded (the page says what is missing and why) instead of failing the job."""
    try:
        return make()
    except ValueError as exc:  # the parts raise ValueError with a reason meant for the owner
        logger.warning("Model %s not made: %s", what, exc)
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded on the model, shown to its owner
        logger.exception("Model %s could not be made", what)
        return {"error": f"{type(exc).__name__}: {exc}"}


def model_lineage(*, job: Job, result: TrainResult, data: ImageData | AudioData | None) -> dict:
    """Where a model came from: dataset (id, name, kind, fingerprint), job, hyperparameters, code
    version, torch and python versions, device, duration.

    The fingerprint hashes the dataset's labels and a sample of its inputs (the same facts that
    keep a checkpoint from resuming onto other data), so two versions trained on the same name can
    be told apart when the dataset was replaced in between. Without `data` (its files could not be
    read) the rest is still recorded: the fingerprint is None, with the reason."""
    import platform

    import torch
    from django.utils import timezone

    from ml.checkpoint import data_fingerprint

    dataset = job.dataset
    facts = {"id": dataset.pk, "name": dataset.name, "kind": dataset.kind}
    if data is None:
        facts.update(fingerprint=None, fingerprint_error="the dataset's files could not be read",
                     num_train=dataset.num_train, num_val=dataset.num_val)
    else:
        digest = hashlib.sha256(json.dumps(data_fingerprint(data), sort_keys=True).encode()).hexdigest()
        facts.update(fingerprint=digest[:16], num_train=len(data.y_train), num_val=len(data.y_val))
    return {
        "dataset": facts,
        "job": job.pk,
        "hyperparameters": result.config.to_dict(),
        "code_version": code_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": result.device,
        "duration_s": result.metrics.get("duration_s"),
        "worker": job.worker,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": timezone.now().isoformat(),  # training has just ended: registration follows it
    }


@functools.cache
def code_version() -> str:
    """The git commit of the running code (asked once per process), else PERCEPTOR_CODE_VERSION
    (set it where the code is deployed without its .git), else "unknown"."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.BASE_DIR, capture_output=True,
                              text=True, timeout=5, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("PERCEPTOR_CODE_VERSION") or "unknown"


def model_evaluation(*, result: TrainResult, data: ImageData | AudioData | None, directory: Path) -> dict:
    """The evaluation report on the validation split (ml.evaluate.evaluation_report); its example
    files go under directory/report/. It runs where training ran (a GPU-trained model is evaluated
    on the GPU: a large validation split takes a minute on a CPU). Raises ValueError with a plain
    reason when there is nothing to evaluate on (model_register records it, and the page says so)."""
    from ml.evaluate import evaluation_report

    if data is None:
        raise ValueError("the dataset's files could not be read")
    device = "cuda" if str(result.device).startswith("cuda") else "cpu"  # TrainResult.device describes it
    return evaluation_report(result.model, data, directory, classes=list(result.classes), device=device)


def model_exports(*, result: TrainResult, data: ImageData | AudioData | None, directory: Path) -> dict:
    """TorchScript and ONNX files in `directory`, each checked against PyTorch on held-out samples
    (ml.export.export_formats); a format that fails or answers differently is recorded with the
    reason and not offered."""
    from ml.export import export_formats

    if data is None:
        raise ValueError("the dataset's files could not be read, so the exported files could not be checked")
    samples, split = _held_out_samples(data)
    exports = export_formats(result.model, samples, directory)
    for entry in exports.values():
        if "parity" in entry:
            entry["parity"]["split"] = split  # what the page says the check ran on
    return exports


PARITY_SAMPLES = 32


def _held_out_samples(data: ImageData | AudioData):
    """Up to PARITY_SAMPLES validation samples (training ones when there is no validation split),
    spread over the split, as the exported files take them: uint8 N×C×H×W images or float32 N×L
    waveforms in [-1, 1]; and the split's name."""
    import numpy as np

    split, x = ("validation", data.x_val) if len(data.x_val) else ("training", data.x_train)
    picked = np.asarray(x[np.unique(np.linspace(0, len(x) - 1, min(PARITY_SAMPLES, len(x))).astype(int))])
    if data.modality == "audio":
        return picked.astype(np.float32) / 32768.0, split
    return np.ascontiguousarray(picked.transpose(0, 3, 1, 2)), split


# The exported files, by the key of their entry in TrainedModel.exports.
EXPORT_FILES = {"model.torchscript.pt": "torchscript", "model.onnx": "onnx"}


def model_files(model: TrainedModel) -> list[str]:
    """The files of `model` that can be downloaded: weights and description, and each exported
    format whose export and parity check succeeded."""
    exports = model.exports or {}
    return [*MODEL_FILES, *(name for name, key in EXPORT_FILES.items() if (exports.get(key) or {}).get("ok"))]


def model_file_refusal(model: TrainedModel, name: str) -> str:
    """Why `name` is not among model_files(model), in a sentence."""
    if name not in EXPORT_FILES:
        return f"No file {name!r}; choose one of: {', '.join(model_files(model))}."
    exports = model.exports or {}
    reason = (exports.get(EXPORT_FILES[name]) or {}).get("reason") or exports.get("error") or "it was not exported."
    return f"{model} has no {name}: {reason}"


def model_delete(*, model: TrainedModel) -> None:
    """Delete the row, then its files once the deletion has committed (a rollback keeps both).
    Its batch predictions (anyone's) go with it, CSVs included."""
    directory = model_directory(model)
    model_id = model.pk
    batches = [Path(default_storage.path(batch.storage_dir)) for batch in model.batch_predictions.all()]
    with transaction.atomic():
        model.delete()
        transaction.on_commit(lambda: _remove_files(model_id, directory, *batches))


def model_publish(*, model: TrainedModel, published: bool) -> TrainedModel:
    """Share a version with every signed-in user (published) or take it back to its owner."""
    TrainedModel.objects.filter(pk=model.pk).update(published=published)
    model.published = published
    return model


def model_set_default(*, model: TrainedModel) -> TrainedModel:
    """Make `model` the default version of its name: the old default's flag is cleared first, in
    the same transaction (the database allows one default per owner and name). The name's rows are
    locked first, so two clicks at once queue instead of colliding on the constraint."""
    versions = TrainedModel.objects.filter(owner=model.owner_id, name=model.name)
    with transaction.atomic():
        list(versions.select_for_update().values_list("pk", flat=True))
        versions.filter(is_default=True).exclude(pk=model.pk).update(is_default=False)
        versions.filter(pk=model.pk).update(is_default=True)
    model.is_default = True
    return model


def _remove_files(model_id: int, *directories: Path) -> None:
    _cache.forget(model_id)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


# --- Loading predictors ---------------------------------------------------------------------------


class _PredictorCache:
    """A small per-process LRU of loaded predictors, keyed by model id and the files' mtimes.

    Loading rebuilds a network from disk (tens of ms to seconds), so a request must never pay it
    twice; replacing the files (a new mtime) gives a new key, and the stale entry ages out.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, Predictor] = OrderedDict()
        self._lock = threading.Lock()  # Daphne serves sync views from a thread pool

    def get(self, model: TrainedModel) -> Predictor:
        from ml import load_predictor

        directory = model_directory(model)
        try:
            stamp = tuple((directory / name).stat().st_mtime_ns for name in MODEL_FILES)
        except FileNotFoundError:
            raise ModelUnavailable(f"The files of {model} are missing from storage.") from None
        key = (model.pk, stamp)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        try:
            predictor = load_predictor(directory)  # outside the lock: loads of other models go on
        except ValueError as exc:  # damaged or foreign files: say so, the traceback helps no user
            logger.error("Cannot load model %s from %s: %s", model.pk, directory, exc)
            raise ModelUnavailable(f"The files of {model} are damaged; it cannot be used.") from exc
        with self._lock:
            self.forget(model.pk, locked=True)
            self._entries[key] = predictor
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return predictor

    def forget(self, model_id: int, *, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                return self.forget(model_id, locked=True)
        for key in [k for k in self._entries if k[0] == model_id]:
            del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class ModelUnavailable(Exception):
    """The row exists but its files are missing or unreadable (deleted by hand, a broken restore)."""


_cache = _PredictorCache(size=getattr(settings, "PREDICTOR_CACHE_SIZE", 8))


def predictor_for(model: TrainedModel) -> Predictor:
    return _cache.get(model)


# --- Predicting ---------------------------------------------------------------------------------


def prediction_create(*, model: TrainedModel, data: bytes, filename: str) -> list[dict]:
    """Top-5 labels for one uploaded image or audio clip (by the model's kind), most probable first.
    See prediction_with_heard, which also says what a speech model heard."""
    return prediction_with_heard(model=model, data=data, filename=filename)[0]


def prediction_with_heard(*, model: TrainedModel, data: bytes, filename: str) -> tuple[list[dict], Heard | None]:
    """Top-5 labels for one uploaded image or audio clip, most probable first, and for a speech
    model what it heard (the clip fitted to its window, as a spectrogram; None for images).

    Raises ValidationError naming the file and the reason when it is too big, empty, or not what
    the model takes ("not an image …", "not an audio file …": the decoder's own words). Decoding,
    resizing or resampling and fitting to the clip length happen once, exactly as in training;
    normalising happens inside the model.
    """
    limit = settings.MAX_PREDICT_BYTES
    if len(data) > limit:
        raise ValidationError(
            f"{filename}: the file is larger than the {_megabytes(limit)} limit for predictions.",
            code="too_large",
        )
    if not data:
        raise ValidationError(f"{filename}: the file is empty.", code="empty")
    predictor = predictor_for(model)
    try:
        prepared = predictor.prepare(data)
        heard = _heard(model, data, prepared) if model.kind == "audio" else None
    except _decode_errors(model) as exc:
        raise ValidationError(f"{filename}: {_sentence(exc)}", code=_refusal_code(model)) from None
    ranked = predictor.predict(prepared, top_k=TOP_K)
    return [{"label": str(label), "probability": float(p)} for label, p in ranked], heard


def _decode_errors(model: TrainedModel) -> tuple[type[Exception], ...]:
    if model.kind == "audio":
        from ml.audio import AudioDecodeError

        return (AudioDecodeError,)
    from ml.images import ImageDecodeError

    return (ImageDecodeError,)


def _refusal_code(model: TrainedModel) -> str:
    return "not_audio" if model.kind == "audio" else "not_an_image"


def _sentence(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text.endswith((".", "!", "?", ".)")) else f"{text}."


@dataclass(frozen=True)
class Heard:
    """What a speech model heard of an upload (for the page to show, next to the prediction)."""

    spectrogram_png: bytes  # log-mel of exactly the model's input (ml.audio.MEL settings)
    seconds: float  # length of the file as sent
    clip_seconds: float  # the model's window: longer files are cut to their loudest part, shorter padded
    fitted: str  # "trimmed" | "padded" | "" (ml.audio.fit_length's words)
    silent: bool  # peak below ml.audio.SILENCE_DBFS: a microphone that recorded nothing

    def note(self) -> str:
        """One sentence for the user about what the model did with the file."""
        if self.silent:
            return "The clip is silent (or almost): check the microphone or the file."
        if self.fitted == "trimmed":
            return (f"The clip is {self.seconds:.1f} s long; the model listens to {self.clip_seconds:g} s, "
                    "so it heard the loudest part.")
        if self.fitted == "padded":
            return (f"The clip is {self.seconds:.2f} s long; the model listens to {self.clip_seconds:g} s, "
                    "so silence was added around it.")
        return ""

    def as_dict(self) -> dict:
        """For JSON answers (the page's fetch, the API): the spectrogram as a data URL."""
        return {
            "spectrogram": "data:image/png;base64," + base64.b64encode(self.spectrogram_png).decode(),
            "seconds": round(self.seconds, 3),
            "clip_seconds": self.clip_seconds,
            "fitted": self.fitted,
            "silent": self.silent,
            "note": self.note(),
        }


def _heard(model: TrainedModel, data: bytes, wave) -> Heard:
    """What a speech model heard of `data`: `wave` is the clip Predictor.prepare made of it."""
    from ml.audio import audio_info, is_silent, spectrogram_png

    rate = int(model.input_spec.get("sample_rate") or 16_000)
    clip_samples = int(model.input_spec.get("clip_samples") or rate)
    seconds = audio_info(data).seconds  # the header's length: no second decode
    sent = round(seconds * rate)
    fitted = "trimmed" if sent > clip_samples else "padded" if sent < clip_samples else ""
    return Heard(spectrogram_png=spectrogram_png(wave, sample_rate=rate), seconds=seconds,
                 clip_seconds=clip_samples / rate, fitted=fitted, silent=bool(is_silent(wave)))


def read_upload(upload) -> bytes:
    """An uploaded file's bytes, reading at most one byte past MAX_PREDICT_BYTES: enough for
    prediction_create to refuse an oversized file without holding all of it in memory."""
    upload.seek(0)
    return upload.read(settings.MAX_PREDICT_BYTES + 1)


def _megabytes(n: int) -> str:
    return filesizeformat(n).replace("\xa0", " ")
