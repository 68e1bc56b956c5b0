"""API shapes. Serializers check types and shape; services decide what is allowed.

Read serializers of jobs declare their fields for the OpenAPI schema only: the representation
itself comes from jobs.services.job_snapshot / point_dict, the same dicts the websocket sends.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import Job

from webapp.datasets.models import Dataset
from webapp.datasets.services import KIND_CHOICES
from webapp.ownership import owned_by
from webapp.registry.models import TrainedModel

# --- Datasets ----------------------------------------------------------------------------------


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["id", "name", "kind", "status", "progress", "error", "options", "num_samples", "num_train",
                  "num_val", "classes", "height", "width", "channels", "skipped", "info", "created_at", "ingested_at"]
        read_only_fields = fields
        extra_kwargs = {
            "kind": {"help_text": "`image` or `audio` (speech). An upload with kind `auto` reads `image` until "
                                  "the ingest has looked inside the archive."},
            "classes": {"help_text": "Per class: `name` and its clip or image counts `train`, `val` (speech: "
                                     "and `test`)."},
            "height": {"help_text": "Images: height in pixels. 0 for speech."},
            "width": {"help_text": "Images: width in pixels. 0 for speech."},
            "channels": {"help_text": "Images: 1 (grayscale) or 3 (RGB). 0 for speech."},
            "skipped": {"help_text": "Files left out, each `{file, reason}`."},
            "info": {"help_text": "Speech only ({} for images): `sample_rate` (Hz), `clip_samples` (clip length), "
                                  "`num_test`, `durations` {`min`, `mean`, `median`, `max`} in seconds before "
                                  "fitting, `trimmed` and `padded` clip counts, `split` (`lists`: the archive's "
                                  "validation_list.txt/testing_list.txt; `random`), `noise_files` and `noise_seconds` "
                                  "(background noise for augmentation), `warnings` [{`file`, `reason`}] (clips "
                                  "kept but suspicious, e.g. silent)."},
        }


class DatasetCreateSerializer(serializers.Serializer):
    """Multipart upload. Option ranges are checked by dataset_create, the one place that knows them."""

    name = serializers.CharField(max_length=Dataset._meta.get_field("name").max_length)
    file = serializers.FileField(help_text="A .zip or .tar(.gz) archive with one folder per class (of images, or "
                                 "of speech clips; the Speech Commands layout works as it is).")
    kind = serializers.ChoiceField(
        choices=KIND_CHOICES, required=False,
        help_text="`image`, `audio` (speech clips: WAV, FLAC, OGG, Opus, MP3, AIFF) or `auto` (the default: whichever the archive "
        "holds more of).")
    image_size = serializers.IntegerField(required=False, help_text="Images only: side after resizing, in pixels.")
    clip_seconds = serializers.FloatField(
        required=False, help_text="Speech only: every clip is padded or trimmed to this many seconds (default 1).")
    val_fraction = serializers.FloatField(required=False, help_text="Share of each class held out for validation.")
    seed = serializers.IntegerField(required=False, help_text="Seed of the train/validation split.")


# --- Jobs --------------------------------------------------------------------------------------


class PointSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["step", "epoch"])
    epoch = serializers.IntegerField()
    step = serializers.IntegerField()
    train_loss = serializers.FloatField()
    train_acc = serializers.FloatField()
    val_loss = serializers.FloatField(allow_null=True)
    val_acc = serializers.FloatField(allow_null=True)
    lr = serializers.FloatField(allow_null=True)
    samples_per_s = serializers.FloatField(allow_null=True)

    def to_representation(self, point):
        from jobs.services import point_dict

        return point_dict(point)


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Job.Status.choices)
    progress = serializers.FloatField(help_text="0..1 of all optimizer steps.")
    epoch = serializers.IntegerField()
    epochs = serializers.IntegerField()
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    eta_s = serializers.FloatField(allow_null=True)
    samples_per_s = serializers.FloatField(allow_null=True)
    device = serializers.CharField()
    error = serializers.CharField()
    model_id = serializers.IntegerField(allow_null=True, help_text="The trained model, once the job succeeded.")
    cancel_requested = serializers.BooleanField(help_text="A cancel was asked for; a running job stops within a second.")
    attempts = serializers.IntegerField(help_text="How many times a worker has started (or resumed) this run.")
    max_attempts = serializers.IntegerField(help_text="Past this many attempts whose worker died, the job fails.")
    heartbeat_at = serializers.DateTimeField(allow_null=True, help_text="Last sign of life of the running job.")
    notices = serializers.ListField(child=serializers.DictField(), help_text="Things to know about the run, "
                                    "each {at, epoch, step, message}: resumed after a crash, batch size halved.")
    can_resume = serializers.BooleanField(help_text="Cancelled or failed with a checkpoint: POST …/resume/ continues it.")
    queue_position = serializers.IntegerField(allow_null=True, help_text="Queued jobs: 1 = next to start.")
    starts_in_s = serializers.FloatField(allow_null=True, help_text="Queued jobs: estimated seconds until it starts "
                                         "(from the running jobs' ETAs; null when unknown).")
    dataset = serializers.IntegerField()
    config = serializers.DictField(help_text="The hyperparameters the job trains with.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, job):
        from jobs.services import job_snapshot

        field = serializers.DateTimeField()
        return {
            **job_snapshot(job),
            "dataset": job.dataset_id,
            "config": job.config,
            "created_at": field.to_representation(job.created_at),
            "started_at": job.started_at and field.to_representation(job.started_at),
            "finished_at": job.finished_at and field.to_representation(job.finished_at),
        }


class JobDetailSerializer(JobSerializer):
    points = PointSerializer(many=True, help_text="Metrics history: throttled steps and every epoch end.")

    def to_representation(self, job):
        return {**super().to_representation(job), "points": [PointSerializer().to_representation(p) for p in job.points.all()]}


@extend_schema_field(OpenApiTypes.INT)
class OwnedDatasetField(serializers.PrimaryKeyRelatedField):
    """Someone else's dataset reads as absent, exactly like a missing id."""

    def get_queryset(self):
        return owned_by(Dataset.objects.all(), self.context["request"].user)


def _kind_name(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def hyperparameter_field(name: str, param) -> serializers.Field:
    """One serializer field from an ml.HYPERPARAMETERS entry; messages name the allowed values."""
    common = {"required": False, "default": param.default, "help_text": param.help}
    choices = list(param.choices or ())
    kind = _kind_name(param.kind)
    if choices:
        listed = ", ".join(str(c) for c in choices)
        return serializers.ChoiceField(
            choices=choices, error_messages={"invalid_choice": f'"{{input}}" is not a valid choice. Choose one of: {listed}.'},
            **common)
    if kind == "bool":
        field = serializers.BooleanField(**common)
        # DRF reads a boolean missing from form data as an unticked checkbox (False); for the API
        # an omitted hyperparameter means its default, whatever the content type.
        field.default_empty_html = param.default
        return field
    if kind in ("int", "float"):
        number = int if kind == "int" else float
        lo, hi = (None if v is None else number(v) for v in (param.min, param.max))
        show = str if kind == "int" else "{:g}".format
        bounds = f"between {show(lo)} and {show(hi)}" if lo is not None and hi is not None else (
            f"at least {show(lo)}" if lo is not None else f"at most {show(hi)}")
        message = f"Must be {bounds}."  # e.g. "Must be between 1e-06 and 10."
        field_class = serializers.IntegerField if kind == "int" else serializers.FloatField
        return field_class(min_value=lo, max_value=hi, error_messages={"min_value": message, "max_value": message},
                           **common)
    return serializers.CharField(**common)


def optional_hyperparameter_fields() -> dict:
    """One optional field per entry of ml.HYPERPARAMETERS, without a default: what is omitted stays
    out of validated_data, so the service fills it (for a new job, from the dataset kind's defaults;
    for a clone, from the job). Built when first used: the web process does not import torch at start-up."""
    from ml import HYPERPARAMETERS

    fields = {}
    for name, param in HYPERPARAMETERS.items():
        field = hyperparameter_field(name, param)
        field.required, field.default = False, serializers.empty
        if isinstance(field, serializers.BooleanField):
            field.default_empty_html = serializers.empty
        fields[name] = field
    return fields


class JobCreateSerializer(serializers.Serializer):
    """`dataset` plus one optional field per hyperparameter. Omitted ones take the defaults of the
    dataset's kind (images or speech: ml.config.config_defaults)."""

    dataset = OwnedDatasetField(help_text="Id of one of your datasets (it must be ready).")

    def get_fields(self):
        return {**super().get_fields(), **optional_hyperparameter_fields()}


class JobCloneSerializer(serializers.Serializer):
    """Only the hyperparameters to change; each is optional and has no default (the job's value stays)."""

    def get_fields(self):
        return {**super().get_fields(), **optional_hyperparameter_fields()}

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if hasattr(self.initial_data, "keys") else []
        if unknown:
            raise serializers.ValidationError({name: ["Not a hyperparameter (the dataset cannot change in a clone)."]
                                               for name in unknown})
        return attrs


# --- Models ------------------------------------------------------------------------------------


class TrainedModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrainedModel
        fields = ["id", "name", "version", "arch", "dataset", "job", "classes", "input_spec", "metrics",
                  "confusion", "size_bytes", "created_at"]
        read_only_fields = fields


class PredictRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="An image (JPEG, PNG, GIF, WebP, BMP, TIFF…).")


class PredictionSerializer(serializers.Serializer):
    label = serializers.CharField()
    probability = serializers.FloatField()


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    file = serializers.CharField()
    predictions = PredictionSerializer(many=True, help_text="Top 5, most probable first.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
