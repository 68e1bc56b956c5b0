"""Job pages. Thin: parse the request, call one service, render. The live parts of the detail page
come over the websocket (jobs/consumers.py), never from polling these views."""

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs.forms import JobForm
from jobs.models import Job
from jobs.selectors import job_list_for_user
from jobs.services import JobStateError, job_cancel, job_create, job_snapshot
from jobs.workers import INSPECT_TIMEOUT_S, worker_list
from webapp.datasets.models import Dataset
from webapp.ownership import get_owned_or_404

logger = logging.getLogger(__name__)

PAGE_SIZE = 50


def _get_job_for_user(request, pk) -> Job:
    return get_owned_or_404(job_list_for_user(user=request.user), request.user, pk)


@login_required
def job_list(request):
    page = Paginator(job_list_for_user(user=request.user), PAGE_SIZE).get_page(request.GET.get("page"))
    has_ready = Dataset.objects.filter(owner=request.user, status=Dataset.Status.READY).exists()
    return render(request, "jobs/list.html", {"page": page, "jobs": page.object_list, "has_ready_dataset": has_ready})


@login_required
def job_new(request):
    status = 200
    if request.method == "POST":
        form = JobForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                job = job_create(user=request.user, dataset=form.cleaned_data["dataset"], config=form.config())
            except ValidationError as exc:
                _add_errors(form, exc)
            else:
                messages.success(request, f"Job {job.pk} is queued: it starts as soon as a worker is free.")
                return redirect("jobs:detail", pk=job.pk)
        status = 400
    else:
        form = JobForm(user=request.user, initial=_initial_dataset(request))
    return render(request, "jobs/new.html", {"form": form}, status=status)


def _initial_dataset(request) -> dict:
    wanted = request.GET.get("dataset")
    if not wanted:
        return {}
    dataset = Dataset.objects.filter(owner=request.user, pk=wanted if wanted.isdigit() else None).first()
    if dataset is None:
        messages.warning(request, "That dataset was not found among yours.")
    elif dataset.status != Dataset.Status.READY:
        messages.warning(request, f"Dataset “{dataset.name}” is not ready yet ({dataset.get_status_display().lower()}).")
    else:
        return {"dataset": dataset.pk}
    return {}


def _add_errors(form, exc: ValidationError) -> None:
    """Put each service error next to its field; anything unknown goes above the form."""
    for field, errors in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, errors)


@login_required
def job_detail(request, pk):
    job = _get_job_for_user(request, pk)
    return render(request, "jobs/detail.html", _detail_context(job))


def _detail_context(job: Job) -> dict:
    snapshot = job_snapshot(job)
    return {"job": job, "snapshot": snapshot, "config": sorted(job.config.items())}


@login_required
@require_POST
def job_cancel_view(request, pk):
    job = _get_job_for_user(request, pk)
    try:
        job = job_cancel(job=job)
    except JobStateError as exc:
        messages.error(request, str(exc))
        return render(request, "jobs/detail.html", _detail_context(job), status=409)
    if job.status == Job.Status.CANCELLED:
        messages.success(request, f"Job {job.pk} is cancelled.")
    else:
        messages.info(request, f"Cancelling job {job.pk}: training stops within a few seconds.")
    return redirect("jobs:detail", pk=job.pk)


@login_required
def workers(request):
    error = ""
    try:
        found = worker_list()
    except Exception:  # noqa: BLE001 - a broker outage is a message on this page, not a 500
        logger.exception("Could not ask the workers")
        found, error = [], "The job queue (Redis) could not be reached, so no worker could be asked."
    visible = set(
        job_list_for_user(user=request.user).filter(pk__in=[i for w in found for i in w.job_ids]).values_list("pk", flat=True)
    )
    return render(
        request, "jobs/workers.html", {"workers": found, "visible_job_ids": visible, "error": error, "timeout": INSPECT_TIMEOUT_S}
    )
