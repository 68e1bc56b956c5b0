from django.conf import settings
from django.db import models

from jobs.models import Job


class TrainedModel(models.Model):
    """A stored model: files under MEDIA_ROOT/<storage_dir> (model.safetensors + model.json)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="trained_models")
    job = models.OneToOneField("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="trained_model")
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.SET_NULL, null=True, blank=True, related_name="trained_models")
    name = models.CharField(max_length=160)
    version = models.PositiveIntegerField(default=1)
    arch = models.CharField(max_length=64)
    classes = models.JSONField(default=list)
    # Images: {"height", "width", "channels"}; speech: {"kind": "audio", "sample_rate", "clip_samples"}.
    input_spec = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)  # final val_acc, val_loss, train_*, samples_per_s...
    confusion = models.JSONField(default=list)  # validation confusion matrix, rows = true class
    size_bytes = models.PositiveBigIntegerField(default=0)
    # Where the model came from (filled at registration, never edited): dataset (id, name, kind,
    # fingerprint), job id, hyperparameters, code version, torch/python versions, device, duration.
    lineage = models.JSONField(default=dict, blank=True)
    # The evaluation report on the validation split (ml.evaluate): per-class precision/recall/F1,
    # calibration (reliability bins, ECE), the misclassified examples with their files under report/.
    evaluation = models.JSONField(default=dict, blank=True)
    # Other formats than safetensors, per format: {"ok": bool, "file", "bytes", "reason", "parity": {...}}.
    exports = models.JSONField(default=dict, blank=True)
    # A published version is shared: every signed-in user may see it, predict with it and download
    # it; only the owner (and staff) change it. New versions start private.
    published = models.BooleanField(default=False)
    # The owner's choice of version for a name (at most one per name); without one, the latest.
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name", "version"], name="unique_model_version"),
            models.UniqueConstraint(fields=["owner", "name"], condition=models.Q(is_default=True),
                                    name="one_default_version_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def val_acc(self) -> float | None:
        """Final validation accuracy, 0..1 (None when training recorded none)."""
        return self.metrics.get("val_acc")

    @property
    def kind(self) -> str:
        """What the model takes, as Dataset.Kind: "image" or "audio" (its input spec says)."""
        return "audio" if self.input_spec.get("kind") == "audio" else "image"

    @property
    def clip_seconds(self) -> float | None:
        """Speech models: the length of clip the model listens to, in seconds."""
        rate, samples = self.input_spec.get("sample_rate"), self.input_spec.get("clip_samples")
        return samples / rate if rate and samples else None

    @property
    def storage_dir(self) -> str:
        return f"models/{self.pk}"


class BatchPrediction(models.Model):
    """Predicting every file of an uploaded archive with one model, in the background; the result is
    a CSV (file, top-1, probability, top-5) under MEDIA_ROOT/<storage_dir>."""

    # A batch goes through the states a training job does (queued, running, then one of the three ends).
    Status = Job.Status
    FINISHED = Job.FINISHED

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batch_predictions")
    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="batch_predictions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    filename = models.CharField(max_length=255)  # the archive's name as uploaded
    cancel_requested = models.BooleanField(default=False)
    total = models.PositiveIntegerField(default=0)  # files to predict (known once the archive is read)
    done = models.PositiveIntegerField(default=0)  # files predicted or skipped so far
    skipped = models.JSONField(default=list, blank=True)  # [{"file", "reason"}], also rows of the CSV
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Fault tolerance, as for jobs and ingests (README "Jobs and faults"): a claim takes a new lease
    # token and counts an attempt; the run renews heartbeat_at; the reaper takes back a batch whose
    # holder ("host:pid" in claimed_by) is dead and sends it back to its queue.
    attempts = models.PositiveSmallIntegerField(default=0)  # claims so far, counted at claim
    lease = models.CharField(max_length=32, blank=True)
    claimed_by = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queue = models.CharField(max_length=255, blank=True)  # where its run is sent; the reaper sends it back there

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Batch prediction {self.pk} ({self.model})"

    @property
    def storage_dir(self) -> str:
        return f"batches/{self.pk}"

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED
