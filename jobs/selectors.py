"""Reads of jobs, always through the ownership rule (the owner and staff see a job)."""

from django.db.models import Q, QuerySet

from jobs.models import Job, MetricPoint
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


# Colours of the compared runs (Okabe & Ito's palette: apart for the colour-blind, in light and dark).
COMPARE_COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"]
COMPARE_MAX = len(COMPARE_COLORS)

# The final figures of a run, as (key, label, format): from its model's metrics, else its last epoch.
COMPARE_METRICS = [
    ("val_acc", "Validation accuracy", "percent"),
    ("val_loss", "Validation loss", "number"),
    ("train_acc", "Training accuracy", "percent"),
    ("train_loss", "Training loss", "number"),
    ("test_acc", "Test accuracy", "percent"),
    ("duration_s", "Training time (s)", "seconds"),
    ("samples_per_s", "Throughput (samples/s)", "rate"),
]


def job_comparison(*, user, job_ids: list[int]) -> dict:
    """Several runs side by side: per job its epoch curve, final metrics and hyperparameters, plus
    the union of hyperparameter names with the rows whose values differ flagged. Raises
    Job.DoesNotExist naming the first id that is not the user's (the page answers 404)."""
    found = {job.pk: job for job in job_list_for_user(user=user).filter(pk__in=job_ids)}
    missing = [pk for pk in job_ids if pk not in found]
    if missing:
        raise Job.DoesNotExist(f"No job {missing[0]}")
    jobs = [found[pk] for pk in job_ids]
    curves: dict[int, list[dict]] = {pk: [] for pk in job_ids}
    for point in MetricPoint.objects.filter(job_id__in=job_ids, kind=MetricPoint.Kind.EPOCH).order_by("step", "id"):
        curves[point.job_id].append({"epoch": point.epoch, "val_acc": point.val_acc, "val_loss": point.val_loss,
                                     "train_acc": point.train_acc, "train_loss": point.train_loss})
    runs = []
    for job, color in zip(jobs, COMPARE_COLORS):
        model = getattr(job, "trained_model", None)
        final = dict(model.metrics) if model else {}
        if curves[job.pk]:
            final = {**{k: v for k, v in curves[job.pk][-1].items() if k != "epoch"}, **final}
        if final.get("samples_per_s") is None:
            final["samples_per_s"] = job.samples_per_s
        if final.get("duration_s") is None and job.started_at and job.finished_at:
            final["duration_s"] = (job.finished_at - job.started_at).total_seconds()
        runs.append({"job": job, "color": color, "model": model, "final": final, "points": curves[job.pk]})
    metrics = [{"label": label, "values": [_figure(run["final"].get(key), style) for run in runs]}
               for key, label, style in COMPARE_METRICS
               if any(run["final"].get(key) is not None for run in runs)]
    names = sorted({name for job in jobs for name in job.config})
    hyperparameters = []
    for name in names:
        values = [job.config.get(name) for job in jobs]
        hyperparameters.append({"name": name, "values": ["—" if v is None else v for v in values],
                                "differs": any(v != values[0] for v in values)})
    return {"runs": runs, "metrics": metrics, "hyperparameters": hyperparameters}


def _figure(value, style: str) -> str:
    if value is None:
        return "—"
    return {"percent": f"{value * 100:.1f} %", "number": f"{value:.4f}", "seconds": f"{value:,.1f}",
            "rate": f"{value:,.0f}"}[style]
