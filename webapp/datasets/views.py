"""Dataset pages: list, upload (XHR with a byte progress bar, or a plain form post), detail with
ingest progress, sample thumbnails (images) or clips with their spectrograms (speech), status
JSON for the progress bar, delete."""

from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.datasets.forms import DatasetUploadForm
from webapp.datasets.models import Dataset
from webapp.datasets.services import (
    DEMO_OPTION,
    DEMOS,
    DatasetInUse,
    dataset_clip_png,
    dataset_clip_wav,
    dataset_create,
    dataset_create_demo,
    dataset_delete,
    dataset_list_for_user,
    dataset_meta,
    dataset_phase,
    dataset_sample_png,
    dataset_upload_size_error,
)
from webapp.ownership import get_owned_or_404

SKIPPED_SHOWN = 500  # the page lists this many skipped files; dataset.json has them all
CLIPS_SHOWN = 4  # clips per class on a speech dataset's page (dataset.json lists up to 8)
CACHE_FOREVER = {"Cache-Control": "private, max-age=86400"}  # sample URLs carry ?v=<ingest time>


def _get_dataset_for_user(request, pk: int) -> Dataset:
    return get_owned_or_404(Dataset, request.user, pk)


def _wants_json(request) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


@login_required
@require_GET
def dataset_list(request):
    datasets = dataset_list_for_user(user=request.user)
    return render(request, "datasets/list.html", {"datasets": datasets})


@login_required
@csrf_exempt  # only so that the size is checked before anything reads the body; _upload checks CSRF
@require_http_methods(["GET", "POST"])
def dataset_upload(request):
    if request.method == "POST":
        error = dataset_upload_size_error(content_length=request.META.get("CONTENT_LENGTH"))
        if error:  # refused before the body is read (the CSRF check would read it all)
            if _wants_json(request):
                return JsonResponse({"errors": {"archive": [error]}}, status=413)
            return render(request, "datasets/upload.html", {"form": DatasetUploadForm.refused(error)}, status=413)
    return _upload(request)


@csrf_protect
def _upload(request):
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = dataset_create(owner=request.user, name=form.cleaned_data["name"],
                                     archive=form.cleaned_data["archive"], options=form.options())
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else NON_FIELD_ERRORS, errors)
        else:
            url = reverse("datasets:detail", args=[dataset.pk])
            if _wants_json(request):
                return JsonResponse({"id": dataset.pk, "url": url}, status=201)
            messages.success(request, f"Uploaded {dataset.name}; it is being ingested.")
            return redirect(url)
    if request.method == "POST":
        if _wants_json(request):
            return JsonResponse({"errors": {f: [e["message"] for e in errs] for f, errs in
                                            form.errors.get_json_data().items()}}, status=400)
        return render(request, "datasets/upload.html", {"form": form}, status=400)
    return render(request, "datasets/upload.html", {"form": form})


@login_required
@require_POST
def dataset_demo(request):
    which = request.POST.get("which", "shapes")
    if which not in DEMOS:
        raise Http404(f"There is no demo {which!r}")
    # Only the row is made here; a worker generates the archive and ingests it (the page shows how far).
    dataset, created = dataset_create_demo(owner=request.user, which=which)
    if created:
        messages.success(request, f"Created {dataset.name}: {DEMOS[which].summary}. A worker is generating it now.")
    else:
        messages.info(request, f"You already have {dataset.name}.")
    return redirect("datasets:detail", pk=dataset.pk)


@login_required
@require_GET
def dataset_detail(request, pk: int):
    dataset = _get_dataset_for_user(request, pk)
    meta = dataset_meta(dataset=dataset)
    samples = meta.get("samples", {})
    version = int(dataset.ingested_at.timestamp()) if dataset.ingested_at else 0  # busts the image cache
    speech = dataset.kind == Dataset.Kind.AUDIO
    classes = []
    for c in dataset.classes:
        indices = samples.get(c["name"], [])
        entry = {**c, "total": c["train"] + c["val"] + c.get("test", 0)}
        if speech:
            entry["clips"] = [{"wav": f"{reverse('datasets:clip_wav', args=[dataset.pk, i])}?v={version}",
                               "png": f"{reverse('datasets:clip_png', args=[dataset.pk, i])}?v={version}"}
                              for i in indices[:CLIPS_SHOWN]]
        else:
            entry["samples"] = [f"{reverse('datasets:sample', args=[dataset.pk, i])}?v={version}" for i in indices]
        classes.append(entry)
    chart = {"labels": [c["name"] for c in classes], "train": [c["train"] for c in classes],
             "val": [c["val"] for c in classes]}
    info = dataset.info if speech else {}
    if info.get("num_test"):
        chart["test"] = [c.get("test", 0) for c in classes]
    warnings = info.get("warnings") or []
    phase, phase_display = dataset_phase(dataset=dataset)
    return render(request, "datasets/detail.html", {
        "dataset": dataset,
        "speech": speech,
        "info": info,
        "clip_seconds": dataset.clip_seconds,
        "archive_name": Path(dataset.archive.name).name if dataset.archive else "",
        "resized": meta.get("resized", False),
        "classes": classes,
        "chart": chart,
        "skipped": dataset.skipped[:SKIPPED_SHOWN],
        "skipped_hidden": max(0, len(dataset.skipped) - SKIPPED_SHOWN),
        "warnings": warnings[:SKIPPED_SHOWN],
        "warnings_hidden": max(0, len(warnings) - SKIPPED_SHOWN),
        "in_progress": dataset.status in (Dataset.Status.PENDING, Dataset.Status.INGESTING),
        "phase": phase,
        "phase_display": phase_display,
        "demo": dataset.options.get(DEMO_OPTION, "") if dataset.options.get(DEMO_OPTION) in DEMOS else "",
    })


@login_required
@require_GET
def dataset_status(request, pk: int):
    dataset = _get_dataset_for_user(request, pk)
    phase, phase_display = dataset_phase(dataset=dataset)
    return JsonResponse({
        "id": dataset.pk,
        "status": dataset.status,
        "status_display": dataset.get_status_display(),
        "phase": phase,  # "waiting", "generating" (a demo's archive), "ingesting"; "" when done
        "phase_display": phase_display,
        "progress": dataset.progress,
        "error": dataset.error,
        "num_samples": dataset.num_samples,
    }, headers={"Cache-Control": "no-store"})


@login_required
@require_GET
def dataset_sample(request, pk: int, index: int):
    dataset = _get_dataset_for_user(request, pk)
    png = dataset_sample_png(dataset=dataset, index=index)
    if png is None:
        raise Http404(f"Dataset {pk} has no sample {index}")
    return HttpResponse(png, content_type="image/png", headers=CACHE_FOREVER)


# A stored speech clip as something to play, or its mel spectrogram to look at.
CLIP_RENDERINGS = {"wav": (dataset_clip_wav, "audio/wav"), "png": (dataset_clip_png, "image/png")}


@login_required
@require_GET
def dataset_clip(request, pk: int, index: int, fmt: str):
    dataset = _get_dataset_for_user(request, pk)
    render, content_type = CLIP_RENDERINGS[fmt]
    body = render(dataset=dataset, index=index)
    if body is None:
        raise Http404(f"Dataset {pk} has no clip {index}")
    return HttpResponse(body, content_type=content_type, headers=CACHE_FOREVER)


@login_required
@require_POST
def dataset_delete_view(request, pk: int):
    dataset = _get_dataset_for_user(request, pk)
    try:
        dataset_delete(dataset=dataset)
    except DatasetInUse as exc:
        messages.error(request, exc.message)
        return redirect("datasets:detail", pk=dataset.pk)
    messages.success(request, f"Deleted dataset {dataset.name}.")
    return redirect("datasets:list")
