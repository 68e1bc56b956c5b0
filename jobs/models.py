from django.conf import settings
from django.db import models


class Job(models.Model):
    """One training run. Status moves only through conditional updates in jobs.services."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE, related_name="jobs")
    config = models.JSONField(default=dict)  # ml.TrainConfig as a dict, validated by job_create
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)

    progress = models.FloatField(default=0.0)  # 0..1 of all optimizer steps
    epoch = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    samples_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    device = models.CharField(max_length=32, blank=True)
    worker = models.CharField(max_length=255, blank=True)  # the Celery node name, for people
    # The Celery queue the job was sent to; a requeue (by any worker's reaper) sends it back there.
    queue = models.CharField(max_length=200, blank=True)

    # Fault tolerance (README "Jobs and faults"). A claim takes a new lease token; every write of a
    # running job is conditional on it, so a worker that lost its job (declared dead, requeued,
    # claimed elsewhere) can never write over the new holder. `claimed_by` is "host:pid", which
    # lets a worker on the same host see at once that the holder is dead; elsewhere the heartbeat
    # going stale says so.
    attempts = models.PositiveSmallIntegerField(default=0)  # claims so far, counted at claim
    max_attempts = models.PositiveSmallIntegerField(default=3)
    lease = models.CharField(max_length=32, blank=True)
    claimed_by = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    notices = models.JSONField(default=list, blank=True)  # [{"at", "epoch", "step", "message"}]
    # A client's one-time key (the new-job form's token, the API's Idempotency-Key header):
    # submitting it twice returns the first job instead of creating a second.
    idempotency_key = models.CharField(max_length=64, null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="job_unique_idempotency_key_per_owner"),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.config.get('arch', '?')} on {self.dataset_id})"

    @property
    def arch(self) -> str:
        return self.config.get("arch", "")

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class MetricPoint(models.Model):
    """One point of a job's curves: a throttled step report or an epoch end (with validation)."""

    class Kind(models.TextChoices):
        STEP = "step"
        EPOCH = "epoch"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="points")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    epoch = models.PositiveIntegerField()
    step = models.PositiveIntegerField()
    train_loss = models.FloatField()
    train_acc = models.FloatField()
    val_loss = models.FloatField(null=True, blank=True)
    val_acc = models.FloatField(null=True, blank=True)
    lr = models.FloatField(null=True, blank=True)
    samples_per_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "id"]
        indexes = [models.Index(fields=["job", "step"])]
