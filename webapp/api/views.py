"""The JSON API: thin views over the same services the pages use.

Every object is looked up through webapp.ownership: anyone but its owner or staff gets a 404.
Django ValidationErrors from services become 400s with the same messages, keyed by field.
"""

from contextlib import contextmanager

from django.core.exceptions import ValidationError as DjangoValidationError
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
from webapp.registry.models import TrainedModel


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


class DatasetListCreate(generics.ListCreateAPIView):
    parser_classes = [MultiPartParser, FormParser]

    def initial(self, request, *args, **kwargs):
        # Before authentication: session authentication's CSRF check would read the whole body.
        if request.method == "POST":
            from webapp.datasets.services import dataset_upload_size_error

            error = dataset_upload_size_error(content_length=request.META.get("CONTENT_LENGTH"))
            if error:
                raise UploadTooLarge({"file": [error]})
        super().initial(request, *args, **kwargs)

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
        from jobs.services import JobStateError, job_cancel

        job = get_owned_or_404(Job, request.user, pk)
        try:
            job_cancel(job=job)
        except JobStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(s.JobSerializer(_jobs_for(request.user).get(pk=pk)).data)


def _restart(request, pk: int, service_name: str) -> Response:
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
        return _restart(request, pk, "job_resume")


class JobRetry(APIView):
    @extend_schema(
        summary="Retry a cancelled or failed job from the start",
        description="Queues the job again from its first epoch: its checkpoint and curve are discarded.",
        request=None, responses={200: s.JobSerializer, 404: NOT_FOUND, 409: NOT_RESTARTABLE},
    )
    def post(self, request, pk: int):
        return _restart(request, pk, "job_retry")


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
    return owned_by(TrainedModel.objects.all(), user)


@extend_schema(summary="List your trained models")
class ModelList(generics.ListAPIView):
    serializer_class = s.TrainedModelSerializer

    def get_queryset(self):
        return _models_for(self.request.user)


@extend_schema(summary="One trained model", responses={200: s.TrainedModelSerializer, 404: NOT_FOUND})
class ModelDetail(generics.RetrieveAPIView):
    serializer_class = s.TrainedModelSerializer

    def get_queryset(self):
        return _models_for(self.request.user)


class ModelPredict(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        summary="Classify one image",
        description="The image is decoded and resized exactly as in training, by the model itself.",
        request={"multipart/form-data": s.PredictRequestSerializer},
        responses={
            200: s.PredictResponseSerializer,
            400: OpenApiResponse(description="Not an image, empty, or over the size limit; `file` says which and why."),
            404: NOT_FOUND,
            410: OpenApiResponse(s.ErrorSerializer, description="The model's files are missing or damaged."),
        },
    )
    def post(self, request, pk: int):
        from webapp.registry.services import ModelUnavailable, prediction_create, read_upload

        model = get_owned_or_404(TrainedModel, request.user, pk)
        form = s.PredictRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        try:
            predictions = prediction_create(model=model, data=read_upload(upload), filename=upload.name)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"file": exc.messages}) from None
        except ModelUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_410_GONE)
        return Response({"model": model.pk, "file": upload.name, "predictions": predictions})
