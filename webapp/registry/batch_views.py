"""Pages of batch predictions: start one from a model page (XHR upload with a byte progress bar, or
a plain form post), its page with progress polled from a small JSON view, the CSV, cancel, delete.

A batch belongs to whoever started it: anyone else gets a 404 (staff see all, as everywhere).
Starting one needs only that the model is visible to the user (their own, or published).
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST, require_safe

from webapp.datasets.services import dataset_upload_size_error
from webapp.ownership import get_owned_or_404
from webapp.registry.batch import (
    BatchStateError,
    batch_cancel,
    batch_create,
    batch_csv_filename,
    batch_csv_path,
    batch_delete,
)
from webapp.registry.models import BatchPrediction
from webapp.registry.selectors import get_visible_model_or_404

SKIPPED_SHOWN = 500  # the page lists this many skipped files; the CSV has them all


def _get_batch_for_user(request, pk: int) -> BatchPrediction:
    return get_owned_or_404(BatchPrediction.objects.select_related("model", "owner"), request.user, pk)


def _wants_json(request) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


@login_required
@csrf_exempt  # only so that the size is checked before anything reads the body; _create checks CSRF
@require_POST
def batch_new(request, pk: int):
    """Multipart `archive` → a queued batch: 201 {"id", "url"} for XHR (static/js/upload.js), else a
    redirect to its page. Refusals: 400 {"errors": {"archive": [...]}} or the model page with the message."""
    error = dataset_upload_size_error(content_length=request.META.get("CONTENT_LENGTH"))
    if error:  # refused before the body is read (the CSRF check would read it all)
        get_visible_model_or_404(request.user, pk)
        return _refused(request, pk, error, status=413)
    return _create(request, pk)


@csrf_protect
def _create(request, pk: int):
    model = get_visible_model_or_404(request.user, pk)
    try:
        batch = batch_create(user=request.user, model=model, upload=request.FILES.get("archive"))
    except ValidationError as exc:
        return _refused(request, pk, " ".join(exc.message_dict.get("archive", exc.messages)), status=400)
    url = reverse("models:batch", args=[batch.pk])
    if _wants_json(request):
        return JsonResponse({"id": batch.pk, "url": url}, status=201)
    messages.success(request, f"Uploaded {batch.filename}: its {batch.total:,} files are queued for prediction.")
    return redirect(url)


def _refused(request, pk: int, error: str, *, status: int):
    if _wants_json(request):
        return JsonResponse({"errors": {"archive": [error]}}, status=status)
    messages.error(request, error)
    return redirect(reverse("models:detail", args=[pk]) + "#batch")


@login_required
@require_safe
def batch_detail(request, pk: int):
    batch = _get_batch_for_user(request, pk)
    return render(request, "registry/batch_detail.html", {
        "batch": batch,
        "has_csv": batch_csv_path(batch) is not None,
        "predicted": max(0, batch.done - len(batch.skipped)),
        "took": _took(batch),
        "skipped": batch.skipped[:SKIPPED_SHOWN],
        "skipped_hidden": max(0, len(batch.skipped) - SKIPPED_SHOWN),
    })


def _took(batch: BatchPrediction) -> str:
    """How long the run took, in words: seconds are what most batches take."""
    if not (batch.started_at and batch.finished_at):
        return ""
    seconds = (batch.finished_at - batch.started_at).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@login_required
@require_safe
def batch_status(request, pk: int):
    """What the page's progress bar polls (static/js/batch.js), about once a second."""
    batch = _get_batch_for_user(request, pk)
    return JsonResponse({
        "id": batch.pk,
        "status": batch.status,
        "status_display": batch.get_status_display(),
        "done": batch.done,
        "total": batch.total,
        "progress": batch.progress,
        "skipped": len(batch.skipped),
        "cancel_requested": batch.cancel_requested,
        "finished": batch.is_finished,
        "error": batch.error,
    })


@login_required
@require_safe
def batch_csv(request, pk: int):
    batch = _get_batch_for_user(request, pk)
    path = batch_csv_path(batch)
    if path is None:
        raise Http404("This batch prediction has no CSV yet.")
    return FileResponse(path.open("rb"), as_attachment=True, content_type="text/csv",
                        filename=batch_csv_filename(batch))


@login_required
@require_POST
def batch_cancel_view(request, pk: int):
    batch = _get_batch_for_user(request, pk)
    try:
        batch_cancel(batch=batch)
    except BatchStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "Cancelled." if batch.status == BatchPrediction.Status.CANCELLED
                      else "Cancelling: the batch stops after the files it is predicting now.")
    return redirect("models:batch", pk=batch.pk)


@login_required
@require_POST
def batch_delete_view(request, pk: int):
    batch = _get_batch_for_user(request, pk)
    model_pk = batch.model_id
    batch_delete(batch=batch)
    messages.success(request, f"Deleted the batch prediction of {batch.filename}.")
    return redirect(reverse("models:detail", args=[model_pk]) + "#batch")
