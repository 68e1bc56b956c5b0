from django.urls import path

from webapp.registry import batch_views, views

app_name = "models"
urlpatterns = [
    path("", views.model_list, name="list"),
    path("<int:pk>/", views.model_detail, name="detail"),
    path("<int:pk>/download/", views.model_download, name="download"),
    path("<int:pk>/predict/", views.model_predict, name="predict"),
    path("<int:pk>/batches/", batch_views.batch_new, name="batch_new"),
    path("batches/<int:pk>/", batch_views.batch_detail, name="batch"),
    path("batches/<int:pk>/status/", batch_views.batch_status, name="batch_status"),
    path("batches/<int:pk>/csv/", batch_views.batch_csv, name="batch_csv"),
    path("batches/<int:pk>/cancel/", batch_views.batch_cancel_view, name="batch_cancel"),
    path("batches/<int:pk>/delete/", batch_views.batch_delete_view, name="batch_delete"),
    path("<int:pk>/publish/", views.model_publish_view, name="publish"),
    path("<int:pk>/default/", views.model_default_view, name="default"),
    path("<int:pk>/delete/", views.model_delete_view, name="delete"),
    path("<int:pk>/report/<str:name>", views.model_report_file, name="report_file"),
]
