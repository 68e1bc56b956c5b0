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

from webapp.registry.models import TrainedModel
from webapp.registry.report import CONTENT_TYPES, REPORT_DIR, report_context, report_files
from webapp.registry.selectors import get_owned_model_or_404, get_visible_model_or_404, model_groups, model_versions
from webapp.registry.services import (
    EXPORT_FILES,
    MODEL_FILES,
    ModelUnavailable,
    model_delete,
    model_directory,
    model_file_refusal,
    model_files,
    model_publish,
    model_set_default,
    prediction_with_heard,
    read_upload,
)

PREVIEW_MAX_BYTES = 4 * 1024 * 1024  # the HTML fallback inlines the image; bigger ones get no preview


@login_required
@require_safe
def model_list(request):
    """One row per name (its default version first); the user's own names, then those shared with
    them (other users' published versions; for staff, every other user's)."""
    groups = model_groups(request.user)
    mine = [g for g in groups if g["owner"].pk == request.user.pk]
    shared = [g for g in groups if g["owner"].pk != request.user.pk]
    return render(request, "registry/model_list.html", {"groups": mine, "shared": shared})


@login_required
@require_POST
def model_publish_view(request, pk: int):
    """`published=1` shares the version with every signed-in user, `published=0` takes it back."""
    model = get_owned_model_or_404(request.user, pk)
    published = request.POST.get("published") == "1"
    model_publish(model=model, published=published)
    if published:
        messages.success(request, f"{model} is published: every signed-in user can now see it, use it and download it.")
    else:
        messages.success(request, f"{model} is private again: only you can see it.")
    return redirect("models:detail", pk=model.pk)


@login_required
@require_POST
def model_default_view(request, pk: int):
    model = get_owned_model_or_404(request.user, pk)
    model_set_default(model=model)
    messages.success(request, f"{model} is now the default version of {model.name}.")
    return redirect("models:detail", pk=model.pk)


@login_required
@require_POST
def model_delete_view(request, pk: int):
    """Delete one version with its files; back to the newest version left of the name, else the list."""
    model = get_owned_model_or_404(request.user, pk)
    label = str(model)
    model_delete(model=model)
    messages.success(request, f"{label} and its files are deleted.")
    left = model_versions(request.user, model)
    return redirect("models:detail", pk=left[0].pk) if left else redirect("models:list")


@login_required
@require_safe
def model_detail(request, pk: int):
    model = _get_model_for_user(request, pk)
    return render(request, "registry/model_detail.html", _detail_context(model))


@login_required
@require_safe
def model_download(request, pk: int):
    """The model as one zip (weights, description and the exported formats), or one of its files
    with ?file=model.json / model.safetensors / model.torchscript.pt / model.onnx; an exported
    format is offered only when its export and parity check succeeded (404 with the reason)."""
    model = _get_model_for_user(request, pk)
    directory = model_directory(model)
    base = f"{slugify(model.name) or 'model'}-v{model.version}"
    files = model_files(model)
    wanted = request.GET.get("file")
    if wanted is not None and wanted not in files:
        raise Http404(model_file_refusal(model, wanted))
    if not all((directory / name).is_file() for name in MODEL_FILES):
        messages.error(request, f"The files of {model} are missing from storage; it cannot be downloaded.")
        return redirect("models:detail", pk=model.pk)
    if wanted:
        if not (directory / wanted).is_file():
            raise Http404(f"{wanted} of {model} is missing from storage.")
        return FileResponse(open(directory / wanted, "rb"), as_attachment=True, filename=f"{base}-{wanted}")
    # Built in a temporary file, not memory: weights can be hundreds of MB. Weights (and the
    # exported files, mostly weights) are stored, not deflated: float32 barely compresses and
    # deflating would cost seconds of CPU per download.
    archive = tempfile.TemporaryFile()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in files:
            if (directory / name).is_file():
                compress = zipfile.ZIP_DEFLATED if name == "model.json" else zipfile.ZIP_STORED
                zf.write(directory / name, name, compress_type=compress)
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"{base}.zip", content_type="application/zip")


@login_required
@require_safe
def model_report_file(request, pk: int, name: str):
    """A file of the evaluation report's gallery (thumbnail, clip or spectrogram). Only names the
    model's evaluation lists are served, so no other path can be reached through `name`."""
    model = _get_model_for_user(request, pk)
    if name not in report_files(model.evaluation or {}):
        raise Http404(f"No report file {name!r}")
    path = model_directory(model) / REPORT_DIR / name
    if not path.is_file():
        raise Http404(f"The report file {name!r} is missing from storage")
    return FileResponse(open(path, "rb"), content_type=CONTENT_TYPES[path.suffix])


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
        predictions, heard = prediction_with_heard(model=model, data=data, filename=filename)
    except ValidationError as exc:
        predictions, error, status = None, " ".join(exc.messages), 400
    except ModelUnavailable as exc:
        error, status = str(exc), 410

    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        body = {"file": filename, "predictions": predictions} if error is None else {"file": filename, "error": error}
        if heard is not None:
            body["heard"] = heard.as_dict()
        return JsonResponse(body, status=status)
    context = _detail_context(model)
    if predictions:
        predictions = [{**p, "percent": f"{p['probability'] * 100:.1f} %"} for p in predictions]
    context.update(predictions=predictions, prediction_error=error, prediction_file=filename,
                   heard=heard.as_dict() if heard else None)
    if predictions and len(data) <= PREVIEW_MAX_BYTES:
        context["preview_src"] = _preview_src(data, kind=model.kind)
    return render(request, "registry/model_detail.html", context, status=status)


MISSING_FILE = {"image": "Choose an image file to upload.", "audio": "Choose an audio file to upload, or record one."}


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
    """Reads (page, predict, downloads): the owner's, staff's, or a published model."""
    return get_visible_model_or_404(request.user, pk)


def _detail_context(model: TrainedModel) -> dict:
    return {
        "model": model,
        "metrics": _metric_rows(model.metrics),
        "confusion": _confusion_rows(model.classes, model.confusion),
        "report": report_context(model),
        "formats": _formats_context(model),
        # The recorder stops by itself a little after the model's window: room to start speaking late.
        "record_seconds": min(10.0, (model.clip_seconds or 1.0) + 2.0),
    }


def _formats_context(model: TrainedModel) -> dict:
    """The Downloads section: the weights' size, and per exported format its entry in model.exports
    with its parity check in words, or why it is not offered."""
    directory = model_directory(model)
    exports = model.exports or {}
    context = {"weights_bytes": sum((directory / n).stat().st_size for n in MODEL_FILES if (directory / n).is_file())}
    for key in EXPORT_FILES.values():
        entry = dict(exports.get(key) or {})
        if not entry.get("ok"):
            entry["reason"] = (entry.get("reason") or exports.get("error")
                               or "It was not exported: the model was registered before exports existed.")
        parity = entry.get("parity")
        if parity:
            what = "clips" if model.kind == "audio" else "images"
            entry["parity_text"] = (
                f"checked on {parity['samples']} {parity.get('split', 'held-out')} {what}: top-1 agrees on "
                f"{parity['top1_agree']}/{parity['samples']}, largest probability difference "
                f"{_small_number(parity['max_abs_diff'])} (limit {_small_number(parity['tolerance'])})")
        context[key] = entry
    return context


def _small_number(value: float | None) -> str:
    if value is None:
        return "not a number"
    return "0" if value == 0 else f"{value:.0e}" if value < 1e-3 else f"{value:.4f}"


METRIC_LABELS = [
    ("val_acc", "Validation accuracy", "percent"),
    ("val_loss", "Validation loss", "number"),
    ("test_acc", "Test accuracy", "percent"),  # datasets with a test split (Speech Commands' lists)
    ("test_loss", "Test loss", "number"),
    ("train_acc", "Training accuracy", "percent"),
    ("train_loss", "Training loss", "number"),
    ("samples_per_s", "Throughput (samples/s)", "rate"),
    ("duration_s", "Training time (s)", "rate"),
    ("synthetic_clips", "Synthetic training clips", "rate"),
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
