"""Job pages. Thin: parse the request, call one service, render. The live parts of the detail page
come over the websocket (jobs/consumers.py), never from polling these views."""

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from jobs.forms import JobForm
from jobs.models import Job
from jobs.selectors import COMPARE_MAX, job_comparison, job_list_for_user, job_queue_positions
from jobs.services import (
    JobStateError,
    dead_job_limit_s,
    job_cancel,
    job_create,
    job_resume,
    job_retry,
    job_snapshot,
)
from jobs.workers import INSPECT_TIMEOUT_S, worker_list, workers_with_jobs
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
    positions = job_queue_positions()
    for job in page.object_list:
        job.queue_position = positions.get(job.pk)
    return render(request, "jobs/list.html", {"page": page, "jobs": page.object_list, "has_ready_dataset": has_ready})


@login_required
def job_new(request):
    status = 200
    source = None
    if request.method == "POST":
        form = JobForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                job = job_create(user=request.user, dataset=form.cleaned_data["dataset"], config=form.config(),
                                 idempotency_key=form.cleaned_data["submit_token"])
            except ValidationError as exc:
                _add_errors(form, exc)
            else:
                if job.created_now:
                    messages.success(request, f"Job {job.pk} is queued: it starts as soon as a worker is free.")
                else:  # the same form sent twice (a double click, a reload): still one job
                    messages.info(request, f"This form was already submitted: here is job {job.pk}.")
                return redirect("jobs:detail", pk=job.pk)
        status = 400
    else:
        source = _clone_source(request)
        initial = {**source.config, "dataset": source.dataset_id} if source else _initial_dataset(request)
        form = JobForm(user=request.user, initial=initial)
    return render(request, "jobs/new.html", {"form": form, "source": source}, status=status)


def _clone_source(request) -> Job | None:
    """?clone=<id>: the form starts from that job's dataset and hyperparameters."""
    wanted = request.GET.get("clone")
    if not wanted:
        return None
    job = job_list_for_user(user=request.user).filter(pk=wanted if wanted.isdigit() else None).first()
    if job is None:
        messages.warning(request, "That job was not found among yours, so the form starts from the defaults.")
    return job


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


def _restart_view(service, done: str):
    @login_required
    @require_POST
    def view(request, pk):
        job = _get_job_for_user(request, pk)
        try:
            job = service(job=job)
        except JobStateError as exc:
            messages.error(request, str(exc))
            return render(request, "jobs/detail.html", _detail_context(job), status=409)
        messages.success(request, f"Job {job.pk} is queued again: {done}.")
        return redirect("jobs:detail", pk=job.pk)

    return view


job_resume_view = _restart_view(job_resume, "it continues from its last checkpoint")
job_retry_view = _restart_view(job_retry, "it trains from the first epoch")


@login_required
@require_safe
def job_compare(request):
    """?ids=3,5,8 (or ?ids=3&ids=5&ids=8, as the job list's checkboxes send it): the runs' curves
    overlaid, their final metrics and their hyperparameters side by side. A job that is not the
    user's reads as absent (404), as everywhere."""
    raw = [part.strip() for part in ",".join(request.GET.getlist("ids")).split(",") if part.strip()]
    bad = [part for part in raw if not part.isdigit()]
    ids = list(dict.fromkeys(int(part) for part in raw if part.isdigit()))  # in order, each once
    problem = ""
    if bad:
        problem = f"“{bad[0]}” is not a job number: ids are numbers separated by commas, like ?ids=3,5,8."
    elif len(ids) < 2:
        problem = "Choose at least two jobs to compare: tick them in the job list, then press Compare."
    elif len(ids) > COMPARE_MAX:
        problem = f"At most {COMPARE_MAX} jobs can be compared at once; {len(ids)} were chosen."
    if problem:
        return render(request, "jobs/compare.html", {"problem": problem}, status=400)
    try:
        comparison = job_comparison(user=request.user, job_ids=ids)
    except Job.DoesNotExist as exc:
        raise Http404(str(exc)) from None
    series = [{"id": run["job"].pk, "label": f"Job {run['job'].pk} ({run['job'].arch})", "color": run["color"],
               "points": run["points"]} for run in comparison["runs"]]
    return render(request, "jobs/compare.html", {**comparison, "series": series})


@login_required
def workers(request):
    error = ""
    try:
        found = worker_list()
    except Exception:  # noqa: BLE001 - a broker outage is a message on this page, not a 500
        logger.exception("Could not ask the workers")
        found, error = [], "The job queue (Redis) could not be reached, so no worker could be asked."
    found = workers_with_jobs(found)
    visible = set(
        job_list_for_user(user=request.user).filter(pk__in=[i for w in found for i in w.job_ids]).values_list("pk", flat=True)
    )
    return render(
        request, "jobs/workers.html",
        {"workers": found, "visible_job_ids": visible, "error": error, "timeout": INSPECT_TIMEOUT_S,
         "dead_job_limit_s": int(dead_job_limit_s())},
    )
