"""What the home page shows: the signed-in user's own recent work and the next thing to do."""

from dataclasses import dataclass

from django.urls import reverse

from jobs.models import Job
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel

RECENT = 5


@dataclass(frozen=True)
class NextStep:
    text: str
    action: str
    url: str


def home_summary(*, user) -> dict:
    """Recent datasets, jobs and models of `user` (their own, even for staff) and one next step."""
    datasets = list(Dataset.objects.filter(owner=user)[:RECENT])
    jobs = list(Job.objects.filter(owner=user).select_related("dataset")[:RECENT])
    models = list(TrainedModel.objects.filter(owner=user)[:RECENT])
    return {
        "datasets": datasets,
        "jobs": jobs,
        "models": models,
        "next_step": _next_step(user=user, datasets=datasets, jobs=jobs, models=models),
    }


def _next_step(*, user, datasets, jobs, models) -> NextStep:
    active = next((j for j in jobs if not j.is_finished), None)
    if active is not None:
        return NextStep(
            text=f"Job {active.pk} is {active.get_status_display().lower()}: its curves update live.",
            action="Watch it",
            url=reverse("jobs:detail", args=[active.pk]),
        )
    if models:
        return NextStep(
            text=f"{models[0]} is trained. Give it an image and see what it predicts.",
            action="Try the model",
            url=reverse("models:detail", args=[models[0].pk]),
        )
    if any(d.status == Dataset.Status.READY for d in datasets):
        return NextStep(
            text="Your dataset is ready. Train a first model on it: the defaults take a minute or two.",
            action="Train a model",
            url=reverse("jobs:new"),
        )
    if datasets:
        return NextStep(
            text="Your dataset is being ingested. Its page shows the progress and any files it skipped.",
            action="See the dataset",
            url=reverse("datasets:detail", args=[datasets[0].pk]),
        )
    return NextStep(
        text="Upload a .zip or .tar.gz with one folder per class (cat/…, dog/…), or start from the demo shapes dataset.",
        action="Upload a dataset",
        url=reverse("datasets:upload"),
    )
