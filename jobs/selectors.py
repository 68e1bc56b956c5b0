"""Reads of jobs, always through the ownership rule (the owner and staff see a job)."""

from django.db.models import Q, QuerySet

from jobs.models import Job
from webapp.ownership import owned_by


def job_list_for_user(*, user) -> QuerySet[Job]:
    return owned_by(Job.objects.select_related("dataset", "owner", "trained_model"), user)


def job_queue_estimate(*, job: Job) -> dict:
    """For a queued job: its place in the queue (1 = next) and when it should start, in seconds.

    The estimate is the honest part of what we know: the queue is first in, first out, and the
    n-th job in it starts when the n-th of the running jobs finishes (their ETAs, sorted). Further
    back, nothing is known about how long the jobs ahead will take: `starts_in_s` is None.
    """
    if job.status != Job.Status.QUEUED:
        return {"queue_position": None, "starts_in_s": None}
    ahead = Job.objects.filter(status=Job.Status.QUEUED).filter(
        Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, id__lt=job.id)).count()
    position = ahead + 1
    etas = sorted(e for e in Job.objects.filter(status=Job.Status.RUNNING).values_list("eta_s", flat=True) if e is not None)
    return {"queue_position": position, "starts_in_s": etas[position - 1] if position <= len(etas) else None}


def job_queue_positions() -> dict[int, int]:
    """Every queued job's place in the queue (1 = next), in one query, for the job list."""
    queued = Job.objects.filter(status=Job.Status.QUEUED).order_by("created_at", "id").values_list("id", flat=True)
    return {job_id: position for position, job_id in enumerate(queued, start=1)}
