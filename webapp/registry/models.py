from django.conf import settings
from django.db import models


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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "name", "version"], name="unique_model_version")]

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
