"""Pages of the model registry: list, detail (with a predict form), download and predict."""

import base64
import tempfile
import zipfile

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_safe, require_POST
from PIL import Image

from webapp.ownership import get_owned_or_404, owned_by
from webapp.registry.models import TrainedModel
from webapp.registry.services import (
    MODEL_FILES,
    ModelUnavailable,
    model_directory,
    prediction_create,
    prediction_heard,
    read_upload,
)

PREVIEW_MAX_BYTES = 4 * 1024 * 1024  # the HTML fallback inlines the image; bigger ones get no preview


@login_required
@require_safe
def model_list(request):
    models = owned_by(TrainedModel.objects.select_related("dataset", "owner"), request.user)
    return render(request, "registry/model_list.html", {"models": models})


@login_required
@require_safe
def model_detail(request, pk: int):
    model = _get_model_for_user(request, pk)
    return render(request, "registry/model_detail.html", _detail_context(model))


@login_required
@require_safe
def model_download(request, pk: int):
    """The model as one zip, or one of its files with ?file=model.json / model.safetensors."""
    model = _get_model_for_user(request, pk)
    directory = model_directory(model)
    base = f"{slugify(model.name) or 'model'}-v{model.version}"
    wanted = request.GET.get("file")
    if wanted is not None and wanted not in MODEL_FILES:
        raise Http404(f"No file {wanted!r}; choose one of: {', '.join(MODEL_FILES)}")
    if not all((directory / name).is_file() for name in MODEL_FILES):
        messages.error(request, f"The files of {model} are missing from storage; it cannot be downloaded.")
        return redirect("models:detail", pk=model.pk)
    if wanted:
        return FileResponse(open(directory / wanted, "rb"), as_attachment=True, filename=f"{base}-{wanted}")
    # Built in a temporary file, not memory: weights can be hundreds of MB. Weights are stored, not
    # deflated: float32 barely compresses and deflating would cost seconds of CPU per download.
    archive = tempfile.TemporaryFile()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(directory / "model.safetensors", "model.safetensors", compress_type=zipfile.ZIP_STORED)
        zf.write(directory / "model.json", "model.json", compress_type=zipfile.ZIP_DEFLATED)
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"{base}.zip", content_type="application/zip")


@login_required
@require_POST
def model_predict(request, pk: int):
    """Multipart `file` -> top-5 labels: JSON for fetch (Accept: application/json), else the page.
    For a speech model the answer also says what the model heard: its spectrogram and a note."""
    model = _get_model_for_user(request, pk)
    upload = request.FILES.get("file")
    filename = upload.name if upload else ""
    predictions, heard, error, status, data = None, None, None, 200, b""
    try:
        if upload is None:
            raise ValidationError(MISSING_FILE[model.kind])
        data = read_upload(upload)
        predictions = prediction_create(model=model, data=data, filename=filename)
        if model.kind == "audio":
            heard = prediction_heard(model=model, data=data)
    except ValidationError as exc:
        predictions, error, status = None, " ".join(exc.messages), 400
    except ModelUnavailable as exc:
        error, status = str(exc), 410

    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        body = {"file": filename, "predictions": predictions} if error is None else {"file": filename, "error": error}
        if heard is not None:
            body["heard"] = _heard_dict(heard)
        return JsonResponse(body, status=status)
    context = _detail_context(model)
    if predictions:
        predictions = [{**p, "percent": f"{p['probability'] * 100:.1f} %"} for p in predictions]
    context.update(predictions=predictions, prediction_error=error, prediction_file=filename,
                   heard=_heard_dict(heard) if heard else None)
    if predictions and len(data) <= PREVIEW_MAX_BYTES:
        context["preview_src"] = _preview_src(data, kind=model.kind)
    return render(request, "registry/model_detail.html", context, status=status)


MISSING_FILE = {"image": "Choose an image file to upload.", "audio": "Choose an audio file to upload, or record one."}


def _heard_dict(heard) -> dict:
    return {
        "spectrogram": "data:image/png;base64," + base64.b64encode(heard.spectrogram_png).decode(),
        "seconds": round(heard.seconds, 3),
        "clip_seconds": heard.clip_seconds,
        "fitted": heard.fitted,
        "silent": heard.silent,
        "note": heard.note(),
    }


# What the first bytes of a file say it is (the client's content type is not to be trusted).
AUDIO_MAGIC = ((b"RIFF", "audio/wav"), (b"fLaC", "audio/flac"), (b"OggS", "audio/ogg"))


def _preview_src(data: bytes, *, kind: str = "image") -> str:
    """Without JavaScript the page cannot show (or play) the local file, so it gets the bytes back
    inline, typed by what the bytes are."""
    if kind == "audio":
        mime = next((m for magic, m in AUDIO_MAGIC if data.startswith(magic)), "")
    else:
        from ml.images import open_image

        mime = Image.MIME.get(open_image(data).format or "", "")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}" if mime.startswith(("image/", "audio/")) else ""


def _get_model_for_user(request, pk: int) -> TrainedModel:
    return get_owned_or_404(TrainedModel.objects.select_related("dataset", "job", "owner"), request.user, pk)


def _detail_context(model: TrainedModel) -> dict:
    return {
        "model": model,
        "metrics": _metric_rows(model.metrics),
        "confusion": _confusion_rows(model.classes, model.confusion),
        # The recorder stops by itself a little after the model's window: room to start speaking late.
        "record_seconds": min(10.0, (model.clip_seconds or 1.0) + 2.0),
    }


METRIC_LABELS = [
    ("val_acc", "Validation accuracy", "percent"),
    ("val_loss", "Validation loss", "number"),
    ("test_acc", "Test accuracy", "percent"),  # datasets with a test split (Speech Commands' lists)
    ("test_loss", "Test loss", "number"),
    ("train_acc", "Training accuracy", "percent"),
    ("train_loss", "Training loss", "number"),
    ("samples_per_s", "Throughput (samples/s)", "rate"),
    ("duration_s", "Training time (s)", "rate"),
]


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for key, label, style in METRIC_LABELS:
        value = metrics.get(key)
        if value is None:
            continue
        text = {"percent": f"{value * 100:.1f} %", "number": f"{value:.4f}", "rate": f"{value:,.0f}"}[style]
        rows.append({"key": key, "label": label, "text": text})
    return rows


def _confusion_rows(classes: list[str], confusion: list[list[int]]) -> list[dict]:
    """Rows = true class. `share` is the cell's fraction of its row, which drives the shading, so a
    rare class with 3/4 right reads as clearly as a common one with 300/400."""
    if not confusion or len(confusion) != len(classes):
        return []
    rows = []
    for label, counts in zip(classes, confusion):
        total = sum(counts)
        rows.append({
            "label": label,
            "total": total,
            "cells": [
                {"count": n, "share": n / total if total else 0.0, "diagonal": i == len(rows), "predicted": predicted}
                for i, (predicted, n) in enumerate(zip(classes, counts))
            ],
        })
    return rows
