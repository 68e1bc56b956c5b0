from django.conf import settings
from django.db import models


def archive_upload_to(dataset: "Dataset", filename: str) -> str:
    return f"uploads/{dataset.owner_id}/{filename}"


class Dataset(models.Model):
    """An uploaded archive and, once ingested, its compact arrays under MEDIA_ROOT/<storage_dir>."""

    class Kind(models.TextChoices):
        IMAGE = "image", "Images"
        AUDIO = "audio", "Speech"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to ingest"
        INGESTING = "ingesting", "Ingesting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.IMAGE)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    archive = models.FileField(upload_to=archive_upload_to, max_length=255, blank=True)
    # Ingest options as the user chose them: image_size, val_fraction, seed, kind, clip_seconds.
    options = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0)  # 0..1 while ingesting
    error = models.TextField(blank=True)
    # Fault tolerance, as for jobs (README "Jobs and faults"): a claim takes a new lease token and
    # counts an attempt; the ingest renews heartbeat_at; the reaper takes back an ingest whose
    # holder ("host:pid" in claimed_by) is dead.
    attempts = models.PositiveSmallIntegerField(default=0)  # claims so far, counted at claim
    lease = models.CharField(max_length=32, blank=True)
    claimed_by = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queue = models.CharField(max_length=255, blank=True)  # where its ingest is sent; the reaper sends it back there

    # Filled in by ingestion (a summary of dataset.json, so lists and the API need no file reads).
    num_samples = models.PositiveIntegerField(default=0)
    num_train = models.PositiveIntegerField(default=0)
    num_val = models.PositiveIntegerField(default=0)
    classes = models.JSONField(default=list, blank=True)  # [{"name": "cat", "train": 90, "val": 10}]
    height = models.PositiveIntegerField(default=0)
    width = models.PositiveIntegerField(default=0)
    channels = models.PositiveSmallIntegerField(default=0)
    skipped = models.JSONField(default=list, blank=True)  # [{"file": "cat/x.jpg", "reason": "..."}]
    # Speech only: sample_rate, clip_samples, num_test, durations {min, mean, median, max} (seconds,
    # before fitting), trimmed, padded, split ("lists" | "random"), noise_files, noise_seconds, warnings.
    info = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def storage_dir(self) -> str:
        """Folder of the ingested arrays, relative to MEDIA_ROOT."""
        return f"datasets/{self.pk}"

    @property
    def clip_seconds(self) -> float | None:
        """Length of a stored speech clip in seconds (None for images or before ingest)."""
        samples, rate = self.info.get("clip_samples"), self.info.get("sample_rate")
        return samples / rate if samples and rate else None

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]
