"""The JSON API: thin views over the same services the pages use.

Every object is looked up through webapp.ownership: anyone but its owner or staff gets a 404.
Django ValidationErrors from services become 400s with the same messages, keyed by field.
"""

from contextlib import contextmanager

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.models import Job
from webapp.api import serializers as s
from webapp.datasets.models import Dataset
from webapp.ownership import get_owned_or_404, owned_by
from webapp.registry.selectors import get_owned_model_or_404, get_visible_model_or_404, visible_models


@contextmanager
def service_errors(rename: dict[str, str] | None = None):
    """Turn a service's django ValidationError into DRF's (400, {field: [messages]}), renaming the
    service's field names to the API's where they differ."""
    try:
        yield
    except DjangoValidationError as exc:
        errors = serializers.as_serializer_error(exc)
        raise serializers.ValidationError({(rename or {}).get(k, k): v for k, v in errors.items()}) from None


NOT_FOUND = OpenApiResponse(s.ErrorSerializer, description="No such object, or not yours.")


# --- Datasets ----------------------------------------------------------------------------------


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The upload is too large."
    default_code = "upload_too_large"


class RefusesOversizedUploads:
    """A POST larger than the upload limit is refused by its Content-Length, before authentication:
    session authentication's CSRF check would read the whole body. The error is keyed by `upload_field`."""

    upload_field = "file"

    def initial(self, request, *args, **kwargs):
        if request.method == "POST":
            from webapp.datasets.services import dataset_upload_size_error

            error = dataset_upload_size_error(content_length=request.META.get("CONTENT_LENGTH"))
            if error:
                raise UploadTooLarge({self.upload_field: [error]})
        super().initial(request, *args, **kwargs)


class DatasetListCreate(RefusesOversizedUploads, generics.ListCreateAPIView):
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return owned_by(Dataset.objects.all(), self.request.user)

    def get_serializer_class(self):
        return s.DatasetCreateSerializer if self.request.method == "POST" else s.DatasetSerializer

    @extend_schema(summary="List your datasets")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Upload an archive as a new dataset",
        description="Ingestion runs in the background; poll `GET /api/datasets/{id}/` until `status` "
        "is `ready` (or `failed`, with `error`). Skipped files are listed in `skipped`; a speech dataset's "
        "figures (durations, clips trimmed, split, noise, warnings) are in `info`.",
        request=s.DatasetCreateSerializer,
        responses={201: s.DatasetSerializer, 413: OpenApiResponse(description="The request is larger than the "
                   "upload limit; refused before the body is read, nothing stored.")},
    )
    def post(self, request, *args, **kwargs):
        from webapp.datasets.services import OPTION_DEFAULTS, dataset_create

        form = s.DatasetCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        options = {key: data[key] for key in OPTION_DEFAULTS if key in data}
        with service_errors(rename={"archive": "file"}):
            dataset = dataset_create(owner=request.user, name=data["name"], archive=data["file"], options=options)
        dataset.refresh_from_db()  # ingestion may already have run (eager Celery)
        return Response(s.DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


@extend_schema(summary="One of your datasets", responses={200: s.DatasetSerializer, 404: NOT_FOUND})
class DatasetDetail(generics.RetrieveAPIView):
    serializer_class = s.DatasetSerializer

    def get_queryset(self):
        return owned_by(Dataset.objects.all(), self.request.user)


# --- Jobs --------------------------------------------------------------------------------------


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Any unique string of up to 64 characters (a UUID). Sending a request again with the "
    "same key (after a timeout, say) returns the job the first request created, with status 200, "
    "instead of starting a second one.",
)
REPLAYED = "This Idempotency-Key was used before: the job it created, unchanged (nothing new was started)."


def _jobs_for(user):
    from jobs.selectors import job_list_for_user

    return job_list_for_user(user=user)


class JobListCreate(generics.ListCreateAPIView):
    def get_queryset(self):
        return _jobs_for(self.request.user)

    def get_serializer_class(self):
        return s.JobCreateSerializer if self.request.method == "POST" else s.JobSerializer

    @extend_schema(summary="List your training jobs")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Start a training job",
        description="Hyperparameters you leave out take their defaults. Errors name the field and the "
        "allowed range or choices. Follow progress with `GET /api/jobs/{id}/` or the websocket "
        "`/ws/jobs/{id}/`.",
        request=s.JobCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={201: s.JobSerializer, 200: OpenApiResponse(s.JobSerializer, description=REPLAYED)},
    )
    def post(self, request, *args, **kwargs):
        from jobs.services import job_create

        form = s.JobCreateSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        config = dict(form.validated_data)
        dataset = config.pop("dataset")
        with service_errors(rename={"idempotency_key": "Idempotency-Key"}):
            job = job_create(user=request.user, dataset=dataset, config=config,
                             idempotency_key=request.headers.get("Idempotency-Key"))
        return _created(request, job)


def _created(request, job) -> Response:
    code = status.HTTP_201_CREATED if job.created_now else status.HTTP_200_OK
    return Response(s.JobSerializer(_jobs_for(request.user).get(pk=job.pk)).data, status=code)


@extend_schema(
    summary="A job with its metrics history",
    description="`points` holds every recorded point (throttled steps and epoch ends); `model_id` is "
    "set once the job succeeded.",
    responses={200: s.JobDetailSerializer, 404: NOT_FOUND},
)
class JobDetail(generics.RetrieveAPIView):
    serializer_class = s.JobDetailSerializer

    def get_queryset(self):
        return _jobs_for(self.request.user)


class JobCancel(APIView):
    @extend_schema(
        summary="Cancel a job",
        description="A queued job is cancelled at once; a running one stops within about a second "
        "(its status becomes `cancelled` then).",
        request=None,
        responses={200: s.JobSerializer, 404: NOT_FOUND,
                   409: OpenApiResponse(s.ErrorSerializer, description="The job has already finished.")},
    )
    def post(self, request, pk: int):
        return _job_action(request, pk, "job_cancel")


def _job_action(request, pk: int, service_name: str) -> Response:
    """Cancel, resume or retry: the jobs.services function of that name; 409 when the job's state forbids it."""
    from jobs import services

    job = get_owned_or_404(Job, request.user, pk)
    try:
        getattr(services, service_name)(job=job)
    except services.JobStateError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return Response(s.JobSerializer(_jobs_for(request.user).get(pk=pk)).data)


NOT_RESTARTABLE = OpenApiResponse(s.ErrorSerializer, description="The job is not cancelled or failed (or, to "
                                  "resume, has no checkpoint).")


class JobResume(APIView):
    @extend_schema(
        summary="Resume a cancelled or failed job",
        description="Queues the job again; it continues from its last checkpoint (saved at every epoch end "
        "and on cancel), with its attempts counted afresh. `can_resume` says whether it has one.",
        request=None, responses={200: s.JobSerializer, 404: NOT_FOUND, 409: NOT_RESTARTABLE},
    )
    def post(self, request, pk: int):
        return _job_action(request, pk, "job_resume")


class JobRetry(APIView):
    @extend_schema(
        summary="Retry a cancelled or failed job from the start",
        description="Queues the job again from its first epoch: its checkpoint and curve are discarded.",
        request=None, responses={200: s.JobSerializer, 404: NOT_FOUND, 409: NOT_RESTARTABLE},
    )
    def post(self, request, pk: int):
        return _job_action(request, pk, "job_retry")


class JobClone(APIView):
    @extend_schema(
        summary="Start a new job like this one, with some hyperparameters changed",
        description="The body holds only the hyperparameters to change (any of those of `POST /api/jobs/`); "
        "the rest, and the dataset, come from the job. Honours `Idempotency-Key` like `POST /api/jobs/`.",
        request=s.JobCloneSerializer, parameters=[IDEMPOTENCY_KEY],
        responses={201: s.JobSerializer, 200: OpenApiResponse(s.JobSerializer, description=REPLAYED), 404: NOT_FOUND},
    )
    def post(self, request, pk: int):
        from jobs.services import job_clone

        job = get_owned_or_404(_jobs_for(request.user), request.user, pk)
        form = s.JobCloneSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        with service_errors(rename={"idempotency_key": "Idempotency-Key"}):
            clone = job_clone(user=request.user, job=job, changes=dict(form.validated_data),
                              idempotency_key=request.headers.get("Idempotency-Key"))
        return _created(request, clone)


# --- Models ------------------------------------------------------------------------------------


def _models_for(user):
    return visible_models(user)


def _bad_filter(name: str, value: str, expected: str):
    return serializers.ValidationError({name: [f"{value!r} is not {expected}."]})


@extend_schema(
    summary="List the trained models you can use",
    description="Yours and the versions other users have published (staff: all), newest first. "
    "Every version of a name is listed; `is_default` marks the owner's chosen one.",
    parameters=[
        OpenApiParameter("name", str, description="Only the versions of this name (exact, e.g. `Digits · seed_cnn`)."),
        OpenApiParameter("dataset", int, description="Only models trained on this dataset id."),
        OpenApiParameter("published", bool, description="`true`: only published versions; `false`: only private ones."),
    ],
)
class ModelList(generics.ListAPIView):
    serializer_class = s.TrainedModelSerializer

    def get_queryset(self):
        models = _models_for(self.request.user)
        params = self.request.query_params
        if "name" in params:
            models = models.filter(name=params["name"])
        if "dataset" in params:
            if not params["dataset"].isdigit():
                raise _bad_filter("dataset", params["dataset"], "a dataset id")
            models = models.filter(dataset_id=int(params["dataset"]))
        if "published" in params:
            published = params["published"].lower()
            if published not in ("true", "false"):
                raise _bad_filter("published", params["published"], "true or false")
            models = models.filter(published=published == "true")
        return models


@extend_schema(summary="One trained model", responses={200: s.TrainedModelSerializer, 404: NOT_FOUND})
class ModelDetail(generics.RetrieveAPIView):
    serializer_class = s.TrainedModelSerializer

    def get_queryset(self):
        return _models_for(self.request.user)


class ModelDownload(APIView):
    @extend_schema(
        summary="Download a model: all its files as a zip, or one of them",
        description="The same files as the model page offers; the URLs per format are in the model's `downloads`.",
        parameters=[OpenApiParameter(
            "file", str, enum=["model.safetensors", "model.json", "model.torchscript.pt", "model.onnx"],
            description="One file instead of the zip. An exported format is there only when its export (and, for "
            "ONNX, the parity check) succeeded; otherwise 404 with the reason.")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 404: NOT_FOUND},
    )
    def get(self, request, pk: int):
        from webapp.registry.views import model_download

        # The page's view serves the bytes; DRF has put the token's user on the underlying request.
        get_visible_model_or_404(request.user, pk)
        return model_download(request._request, pk)


OWNER_ONLY = OpenApiResponse(s.ErrorSerializer, description="No such model, or not yours (a version someone else "
                             "published can be used, not changed).")


class ModelPublish(APIView):
    @extend_schema(
        summary="Publish or unpublish a version of your model",
        description="A published version can be seen, used and downloaded by every signed-in user; only you "
        "(and staff) can change or delete it.",
        request=s.PublishSerializer, responses={200: s.TrainedModelSerializer, 404: OWNER_ONLY},
    )
    def post(self, request, pk: int):
        from webapp.registry.services import model_publish

        model = get_owned_model_or_404(request.user, pk)
        form = s.PublishSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        model_publish(model=model, published=form.validated_data["published"])
        return Response(s.TrainedModelSerializer(model, context={"request": request}).data)


class ModelDefault(APIView):
    @extend_schema(
        summary="Make this version the default of its name",
        description="The previous default of the name stops being one.",
        request=None, responses={200: s.TrainedModelSerializer, 404: OWNER_ONLY},
    )
    def post(self, request, pk: int):
        from webapp.registry.services import model_set_default

        model = get_owned_model_or_404(request.user, pk)
        model_set_default(model=model)
        return Response(s.TrainedModelSerializer(model, context={"request": request}).data)


class ModelPredict(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        summary="Classify one image or speech clip",
        description="The file is decoded and resized (images) or resampled and fitted to the model's "
                    "window (speech) exactly as in training. Speech answers also say what the model "
                    "heard (`heard`).",
        request={"multipart/form-data": s.PredictRequestSerializer},
        responses={
            200: s.PredictResponseSerializer,
            400: OpenApiResponse(description="Not an image (or not audio, for a speech model), empty, or over the "
                                             "size limit; `file` says which and why."),
            404: NOT_FOUND,
            410: OpenApiResponse(s.ErrorSerializer, description="The model's files are missing or damaged."),
        },
    )
    def post(self, request, pk: int):
        from webapp.registry.services import ModelUnavailable, prediction_with_heard, read_upload

        model = get_visible_model_or_404(request.user, pk)
        form = s.PredictRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            predictions, heard = prediction_with_heard(model=model, data=read_upload(upload), filename=upload.name)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"file": exc.messages}) from None
        except ModelUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_410_GONE)
        body = {"model": model.pk, "file": upload.name, "predictions": predictions}
        if heard is not None:
            body["heard"] = heard.as_dict()
        return Response(body)


# --- Batch predictions -------------------------------------------------------------------------


def _batches_for(user):
    from webapp.registry.batch import batch_list_for_user

    return batch_list_for_user(user=user)


def _batch(request, batch) -> dict:
    return s.BatchPredictionSerializer(batch, context={"request": request}).data


class ModelBatchCreate(RefusesOversizedUploads, APIView):
    parser_classes = [MultiPartParser]
    upload_field = "archive"

    @extend_schema(
        summary="Predict every file of an archive with this model",
        description="The archive is checked at once (a zip or tar within the limits, with files the model "
        "takes); a worker then predicts every file in the background. Poll `GET /api/batches/{id}/` until "
        "`status` is `succeeded` (or `failed` / `cancelled`), then fetch `csv`: one row per file with "
        "`file, top1, probability, top5, error` (top5 as `label:0.9312;label:0.0400;…`; a file that could not "
        "be read has its reason in `error` and no prediction). Works with your models and published ones.",
        request={"multipart/form-data": s.BatchCreateSerializer},
        responses={
            202: s.BatchPredictionSerializer,
            400: OpenApiResponse(description="Not an archive, corrupt, empty, or nothing the model takes; "
                                 "`archive` names the file and says why. Nothing is stored."),
            404: NOT_FOUND,
            413: OpenApiResponse(description="The request is larger than the upload limit; refused before the "
                                 "body is read, nothing stored."),
        },
    )
    def post(self, request, pk: int):
        from webapp.registry.batch import batch_create

        model = get_visible_model_or_404(request.user, pk)
        form = s.BatchCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with service_errors():
            batch = batch_create(user=request.user, model=model, upload=form.validated_data["archive"])
        batch.refresh_from_db()  # eager Celery may have run it already
        return Response(_batch(request, batch), status=status.HTTP_202_ACCEPTED)


@extend_schema(summary="List your batch predictions")
class BatchList(generics.ListAPIView):
    serializer_class = s.BatchPredictionSerializer

    def get_queryset(self):
        return _batches_for(self.request.user)


@extend_schema(responses={200: s.BatchPredictionSerializer, 204: None, 404: NOT_FOUND})
class BatchDetail(generics.RetrieveDestroyAPIView):
    serializer_class = s.BatchPredictionSerializer

    def get_queryset(self):
        return _batches_for(self.request.user)

    @extend_schema(summary="One of your batch predictions")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(summary="Delete a batch prediction and its CSV",
                   description="A running batch stops after the files it is predicting.")
    def delete(self, request, *args, **kwargs):
        return super().delete(request, *args, **kwargs)

    def perform_destroy(self, instance):
        from webapp.registry.batch import batch_delete

        batch_delete(batch=instance)


class BatchCsv(APIView):
    @extend_schema(
        summary="The CSV of a finished batch prediction",
        description="Columns `file, top1, probability, top5, error`, one row per file in archive order. "
        "A cancelled batch has the rows of the files done before the cancel.",
        responses={(200, "text/csv"): OpenApiTypes.BINARY, 404: NOT_FOUND,
                   409: OpenApiResponse(s.ErrorSerializer, description="No CSV yet: the batch has not finished.")},
    )
    def get(self, request, pk: int):
        from webapp.registry.batch import batch_csv_filename, batch_csv_path

        batch = get_owned_or_404(_batches_for(request.user), request.user, pk)
        path = batch_csv_path(batch)
        if path is None:
            return Response({"detail": f"No CSV yet: the batch is {batch.get_status_display().lower()}."},
                            status=status.HTTP_409_CONFLICT)
        return FileResponse(path.open("rb"), as_attachment=True, content_type="text/csv",
                            filename=batch_csv_filename(batch))


class BatchCancel(APIView):
    @extend_schema(
        summary="Cancel a batch prediction",
        description="A queued batch is cancelled at once; a running one stops after the files it is predicting "
        "(`status` becomes `cancelled`, and its CSV keeps the rows done).",
        request=None,
        responses={200: s.BatchPredictionSerializer, 404: NOT_FOUND,
                   409: OpenApiResponse(s.ErrorSerializer, description="The batch has already finished.")},
    )
    def post(self, request, pk: int):
        from webapp.registry.batch import BatchStateError, batch_cancel

        batch = get_owned_or_404(_batches_for(request.user), request.user, pk)
        try:
            batch_cancel(batch=batch)
        except BatchStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(_batch(request, batch))
