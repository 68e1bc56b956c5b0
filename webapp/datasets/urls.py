from django.urls import path

from webapp.datasets import views

app_name = "datasets"
urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("upload/", views.dataset_upload, name="upload"),
    path("demo/", views.dataset_demo, name="demo"),
    path("<int:pk>/", views.dataset_detail, name="detail"),
    path("<int:pk>/status/", views.dataset_status, name="status"),
    path("<int:pk>/samples/<int:index>.png", views.dataset_sample, name="sample"),
    path("<int:pk>/clips/<int:index>.wav", views.dataset_clip, {"fmt": "wav"}, name="clip_wav"),
    path("<int:pk>/clips/<int:index>.png", views.dataset_clip, {"fmt": "png"}, name="clip_png"),
    path("<int:pk>/delete/", views.dataset_delete_view, name="delete"),
]
