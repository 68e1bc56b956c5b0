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
from webapp.registry.models import BatchPrediction, TrainedModel

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


class EvaluationSummarySerializer(serializers.Serializer):
    accuracy = serializers.FloatField(allow_null=True, help_text="Validation accuracy, 0..1.")
    macro_f1 = serializers.FloatField(allow_null=True, help_text="Mean of the per-class F1 scores.")
    ece = serializers.FloatField(allow_null=True, help_text="Expected calibration error, 0..1 (lower is better).")
    error = serializers.CharField(required=False, help_text="Only when the report could not be made: why.")


class TrainedModelSerializer(serializers.ModelSerializer):
    evaluation = serializers.SerializerMethodField()
    downloads = serializers.SerializerMethodField()

    class Meta:
        model = TrainedModel
        fields = ["id", "name", "version", "published", "is_default", "owner", "arch", "dataset", "job", "classes",
                  "input_spec", "metrics", "confusion", "size_bytes", "lineage", "exports", "evaluation",
                  "downloads", "created_at"]
        read_only_fields = fields
        extra_kwargs = {
            "name": {"help_text": "`<dataset> · <architecture>`; training again on it adds a version."},
            "version": {"help_text": "1, 2, 3… per owner and name."},
            "published": {"help_text": "Shared: every signed-in user may see, use and download this version."},
            "is_default": {"help_text": "The owner's chosen version of the name (at most one; when none is "
                                        "chosen, the latest version is the default)."},
            "owner": {"help_text": "Id of the user who trained it."},
            "lineage": {"help_text": "Where it came from: `dataset` {`id`, `name`, `kind`, `fingerprint` (a hash "
                                     "of labels and samples; null, with `fingerprint_error`, when the dataset's "
                                     "files could not be read), `num_train`, `num_val`}, `job`, `hyperparameters`, "
                                     "`code_version` (git commit), `torch`, `python`, `device`, `duration_s`, "
                                     "`worker`, `started_at`, `finished_at`; or `{error}` when it could not be "
                                     "recorded."},
            "exports": {"help_text": "Per format (`torchscript`, `onnx`): `ok`, and `file`, `bytes`, `seconds` "
                                     "(ONNX: `opset`, `input`, `output`, `parity` {`samples`, `top1_agree`, "
                                     "`max_abs_diff`, `tolerance`, `passed`}) or, when not offered, `reason`."},
        }

    @extend_schema_field(EvaluationSummarySerializer(allow_null=True))
    def get_evaluation(self, model: TrainedModel) -> dict | None:
        """The report's headline figures (the full report is on the model's page); null before any."""
        evaluation = model.evaluation or {}
        if "error" in evaluation:
            return {"accuracy": None, "macro_f1": None, "ece": None, "error": evaluation["error"]}
        if not evaluation:
            return None
        return {"accuracy": evaluation.get("accuracy"), "macro_f1": evaluation.get("macro_f1"),
                "ece": (evaluation.get("calibration") or {}).get("ece")}

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "format": "uri"},
                          "description": "Download URLs (`GET /api/models/{id}/download/`): `zip` (all files), "
                                         "`safetensors`, `json`, and `torchscript` / `onnx` when that export "
                                         "succeeded."})
    def get_downloads(self, model: TrainedModel) -> dict:
        from django.urls import reverse

        from webapp.registry.services import EXPORT_FILES, model_files

        formats = {"model.safetensors": "safetensors", "model.json": "json", **EXPORT_FILES}
        base = reverse("api-model-download", args=[model.pk])
        urls = {"zip": base, **{formats[name]: f"{base}?file={name}" for name in model_files(model)}}
        request = self.context.get("request")
        return {fmt: request.build_absolute_uri(url) if request else url for fmt, url in urls.items()}


class PublishSerializer(serializers.Serializer):
    published = serializers.BooleanField(help_text="true shares the version with every signed-in user; false "
                                         "makes it private again.")


class PredictRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="An image (JPEG, PNG, GIF, WebP, BMP, TIFF…).")


class PredictionSerializer(serializers.Serializer):
    label = serializers.CharField()
    probability = serializers.FloatField()


class HeardSerializer(serializers.Serializer):
    spectrogram = serializers.CharField(help_text="The log-mel spectrogram of the model's input, as a PNG data URL.")
    seconds = serializers.FloatField(help_text="Length of the file as sent.")
    clip_seconds = serializers.FloatField(help_text="The model's window.")
    fitted = serializers.CharField(help_text='"trimmed" (the loudest window was kept), "padded" (silence added) or "".')
    silent = serializers.BooleanField(help_text="The clip is (almost) silent: check the microphone or the file.")
    note = serializers.CharField(help_text="One sentence for people about the above (may be empty).")


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    file = serializers.CharField()
    predictions = PredictionSerializer(many=True, help_text="Top 5, most probable first.")
    heard = HeardSerializer(required=False, help_text="Speech models only: what the model heard of the file.")


# --- Batch predictions ---------------------------------------------------------------------------


class BatchPredictionSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True, help_text="done / total, 0..1.")
    csv = serializers.SerializerMethodField()

    class Meta:
        model = BatchPrediction
        fields = ["id", "model", "status", "filename", "total", "done", "progress", "skipped", "error",
                  "cancel_requested", "created_at", "started_at", "finished_at", "csv"]
        read_only_fields = fields
        extra_kwargs = {
            "filename": {"help_text": "The archive's name as uploaded."},
            "total": {"help_text": "Files in the archive (system files such as __MACOSX/ left out): one CSV row each."},
            "done": {"help_text": "Files predicted or skipped so far (updated a few times a second)."},
            "skipped": {"help_text": "Files that could not be predicted, each `{file, reason}` (also rows of the "
                                     "CSV, with the reason in `error`)."},
            "error": {"help_text": "Why the batch failed (empty otherwise)."},
        }

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True,
                          "description": "The CSV's URL once the batch has finished with one; null before."})
    def get_csv(self, batch: BatchPrediction) -> str | None:
        from django.urls import reverse

        from webapp.registry.batch import batch_csv_path

        if batch_csv_path(batch) is None:
            return None
        url = reverse("api-batch-csv", args=[batch.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class BatchCreateSerializer(serializers.Serializer):
    archive = serializers.FileField(help_text="A .zip, .tar or .tar.gz of images (image models) or recordings "
                                    "(speech models), in any folders.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
