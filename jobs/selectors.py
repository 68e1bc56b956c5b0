"""Reads of jobs, always through the ownership rule (the owner and staff see a job)."""

from django.db.models import QuerySet

from jobs.models import Job
from webapp.ownership import owned_by


def job_list_for_user(*, user) -> QuerySet[Job]:
    return owned_by(Job.objects.select_related("dataset", "owner", "trained_model"), user)
