from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("webapp.accounts.urls")),
    path("datasets/", include("webapp.datasets.urls")),
    path("jobs/", include("jobs.urls")),
    path("models/", include("webapp.registry.urls")),
    path("api/", include("webapp.api.urls")),
]
