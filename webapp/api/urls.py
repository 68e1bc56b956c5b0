from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from webapp.api import views

# Shown at the top of /api/docs/: what the schema alone cannot say (auth, the websocket).
DESCRIPTION = """
Upload datasets, train models, watch jobs and predict.

## Authentication
Send `Authorization: Token <key>` with every request. Get a key with
`POST /api/token/` (`username`, `password`), or on the server with
`python manage.py drf_create_token <username>` (add `-r` to replace an existing key).
Requests from a logged-in browser session work too (with the CSRF token for writes).

Objects you do not own answer 404, exactly like ids that do not exist. Staff see everything.

## Live progress: websocket `/ws/jobs/{id}/`
Connect with your session cookie (same origin). The server sends JSON messages:

* first `{"type": "history", "job": {...}, "points": [point, ...]}`;
* then `{"type": "progress", "job": {...}, "point": point}` while training, and
  `{"type": "status", "job": {...}}` when the status changes.

`job` has the fields of `GET /api/jobs/{id}/` without `points`; a `point` is
`{kind, epoch, step, train_loss, train_acc, val_loss, val_acc, lr, samples_per_s}` (`kind` is
`step` or `epoch`; validation values are set on epoch points). Pushes are throttled to about
4 per second; epoch ends and status changes always arrive. The database is the truth: after a
reconnect the history message has everything. When a job resumes from a checkpoint (after a crash,
or `POST /api/jobs/{id}/resume/`), a status message carries `rewind_to_step`: drop the points
after that step, training repeats them. A job that is not yours closes the socket with
code 4404.
"""

SCHEMA_SETTINGS = {
    "DESCRIPTION": DESCRIPTION,
    # Datasets and jobs both have a `status`; name the two enums instead of hashing them apart.
    "ENUM_NAME_OVERRIDES": {
        "DatasetStatusEnum": "webapp.datasets.models.Dataset.Status",
        "DatasetKindEnum": "webapp.datasets.models.Dataset.Kind",
        "UploadKindEnum": "webapp.datasets.services.KIND_CHOICES",
        "JobStatusEnum": "jobs.models.Job.Status",
    },
}

urlpatterns = [
    path("token/", obtain_auth_token, name="api-token"),
    path("datasets/", views.DatasetListCreate.as_view(), name="api-dataset-list"),
    path("datasets/<int:pk>/", views.DatasetDetail.as_view(), name="api-dataset-detail"),
    path("jobs/", views.JobListCreate.as_view(), name="api-job-list"),
    path("jobs/<int:pk>/", views.JobDetail.as_view(), name="api-job-detail"),
    path("jobs/<int:pk>/cancel/", views.JobCancel.as_view(), name="api-job-cancel"),
    path("jobs/<int:pk>/resume/", views.JobResume.as_view(), name="api-job-resume"),
    path("jobs/<int:pk>/retry/", views.JobRetry.as_view(), name="api-job-retry"),
    path("jobs/<int:pk>/clone/", views.JobClone.as_view(), name="api-job-clone"),
    path("models/", views.ModelList.as_view(), name="api-model-list"),
    path("models/<int:pk>/", views.ModelDetail.as_view(), name="api-model-detail"),
    path("models/<int:pk>/predict/", views.ModelPredict.as_view(), name="api-model-predict"),
    path("models/<int:pk>/batches/", views.ModelBatchCreate.as_view(), name="api-model-batches"),
    path("batches/", views.BatchList.as_view(), name="api-batch-list"),
    path("batches/<int:pk>/", views.BatchDetail.as_view(), name="api-batch-detail"),
    path("batches/<int:pk>/csv/", views.BatchCsv.as_view(), name="api-batch-csv"),
    path("batches/<int:pk>/cancel/", views.BatchCancel.as_view(), name="api-batch-cancel"),
    path("models/<int:pk>/download/", views.ModelDownload.as_view(), name="api-model-download"),
    path("models/<int:pk>/publish/", views.ModelPublish.as_view(), name="api-model-publish"),
    path("models/<int:pk>/default/", views.ModelDefault.as_view(), name="api-model-default"),
    path("schema/", SpectacularAPIView.as_view(custom_settings=SCHEMA_SETTINGS), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
