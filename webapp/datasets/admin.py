from django.contrib import admin

from webapp.datasets.models import Dataset
from webapp.datasets.services import dataset_delete


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "kind", "status", "num_samples", "num_classes", "shape", "created_at"]
    list_filter = ["status", "kind", "created_at"]
    search_fields = ["name", "owner__username", "error"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    # Everything but the name is written by upload and ingest; editing it would desynchronise the
    # row from the arrays on disk.
    readonly_fields = [f.name for f in Dataset._meta.fields if f.name not in ("name", "id")]

    @admin.display(description="classes")
    def num_classes(self, obj: Dataset) -> int:
        return len(obj.classes)

    @admin.display(description="size")
    def shape(self, obj: Dataset) -> str:
        if obj.clip_seconds:
            return f"{obj.clip_seconds:g} s clips"
        return f"{obj.width}×{obj.height}×{obj.channels}" if obj.channels else "—"

    def has_add_permission(self, request) -> bool:
        return False  # datasets come from an upload and an ingest, not a blank form

    # Deleting here must also remove the archive and the arrays, so it goes through the service.
    # Staff may delete a dataset that jobs are still using (force); the jobs go with it.
    def delete_model(self, request, obj: Dataset) -> None:
        dataset_delete(dataset=obj, force=True)

    def delete_queryset(self, request, queryset) -> None:
        for dataset in queryset:
            dataset_delete(dataset=dataset, force=True)
