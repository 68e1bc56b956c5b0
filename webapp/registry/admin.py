from django.contrib import admin, messages

from webapp.registry.models import TrainedModel
from webapp.registry.services import model_delete, model_publish, model_set_default


@admin.register(TrainedModel)
class TrainedModelAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "owner", "published", "is_default", "arch", "dataset", "val_acc", "size_bytes",
                    "created_at")
    list_filter = ("published", "is_default", "arch", "created_at", "owner")
    search_fields = ("name", "arch", "owner__username", "dataset__name")
    list_select_related = ("owner", "dataset")
    date_hierarchy = "created_at"
    # A model is the output of a job: its facts are recorded, not edited.
    readonly_fields = ("owner", "job", "dataset", "version", "arch", "classes", "input_spec", "metrics",
                       "confusion", "size_bytes", "lineage", "evaluation", "exports", "is_default", "created_at")
    actions = ["publish", "unpublish", "make_default"]

    def has_add_permission(self, request) -> bool:
        return False  # models come from training jobs, never from a form

    @admin.display(description="val. acc.")
    def val_acc(self, obj: TrainedModel) -> str:
        return "—" if obj.val_acc is None else f"{obj.val_acc * 100:.1f}%"

    @admin.action(description="Publish the selected versions (every signed-in user can use them)")
    def publish(self, request, queryset) -> None:
        for obj in queryset:
            model_publish(model=obj, published=True)
        self.message_user(request, f"{len(queryset)} version(s) published.")

    @admin.action(description="Unpublish the selected versions (back to their owners only)")
    def unpublish(self, request, queryset) -> None:
        for obj in queryset:
            model_publish(model=obj, published=False)
        self.message_user(request, f"{len(queryset)} version(s) unpublished.")

    @admin.action(description="Make the selected version the default of its name")
    def make_default(self, request, queryset) -> None:
        """One version per name: two selected versions of one name would leave the choice to chance."""
        names = [(obj.owner_id, obj.name) for obj in queryset]
        if len(names) != len(set(names)):
            self.message_user(request, "Select at most one version per name to make it the default.", messages.ERROR)
            return
        for obj in queryset:
            model_set_default(model=obj)
        self.message_user(request, f"{len(names)} default version(s) set.")

    # Deleting goes through the service so that the files go with the row.
    def delete_model(self, request, obj: TrainedModel) -> None:
        model_delete(model=obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            model_delete(model=obj)
