from django.urls import path

from jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_new, name="new"),
    path("workers/", views.workers, name="workers"),
    path("compare/", views.job_compare, name="compare"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/cancel/", views.job_cancel_view, name="cancel"),
    path("<int:pk>/resume/", views.job_resume_view, name="resume"),
    path("<int:pk>/retry/", views.job_retry_view, name="retry"),
]
