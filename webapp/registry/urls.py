from django.urls import path

from webapp.registry import views

app_name = "models"
urlpatterns = [
    path("", views.model_list, name="list"),
    path("<int:pk>/", views.model_detail, name="detail"),
    path("<int:pk>/download/", views.model_download, name="download"),
    path("<int:pk>/predict/", views.model_predict, name="predict"),
]
