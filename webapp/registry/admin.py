from django.contrib import admin

from webapp.registry.models import TrainedModel
from webapp.registry.services import model_delete


@admin.register(TrainedModel)
class TrainedModelAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "owner", "arch", "dataset", "val_acc", "size_bytes", "created_at")
    list_filter = ("arch", "created_at", "owner")
    search_fields = ("name", "arch", "owner__username", "dataset__name")
    list_select_related = ("owner", "dataset")
    date_hierarchy = "created_at"
    # A model is the output of a job: its facts are recorded, not edited.
    readonly_fields = ("owner", "job", "dataset", "version", "arch", "classes", "input_spec", "metrics",
                       "confusion", "size_bytes", "created_at")

    def has_add_permission(self, request) -> bool:
        return False  # models come from training jobs, never from a form

    @admin.display(description="val. acc.")
    def val_acc(self, obj: TrainedModel) -> str:
        return "—" if obj.val_acc is None else f"{obj.val_acc * 100:.1f}%"

    # Deleting goes through the service so that the files go with the row.
    def delete_model(self, request, obj: TrainedModel) -> None:
        model_delete(model=obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            model_delete(model=obj)
