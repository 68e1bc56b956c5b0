from django.contrib import admin

from jobs.models import Job, MetricPoint


class MetricPointInline(admin.TabularInline):
    """The epoch ends only: step points run into thousands and would make the page unusable."""

    model = MetricPoint
    fields = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Epoch ends (all points: see Metric points)"

    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=MetricPoint.Kind.EPOCH)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "dataset", "arch", "status", "progress", "epoch", "attempts", "device", "worker",
                    "heartbeat_at", "created_at")
    list_filter = ("status", "device", "created_at")
    search_fields = ("=id", "owner__username", "dataset__name", "worker", "error")
    list_select_related = ("owner", "dataset")
    raw_id_fields = ("owner", "dataset")
    date_hierarchy = "created_at"
    # Status moves only through jobs.services (conditional updates); the admin shows, never edits it.
    readonly_fields = (
        "status", "cancel_requested", "error", "progress", "epoch", "step", "total_steps", "samples_per_s",
        "eta_s", "device", "worker", "queue", "attempts", "max_attempts", "lease", "claimed_by", "heartbeat_at",
        "notices", "idempotency_key", "created_at", "started_at", "finished_at",
    )
    inlines = [MetricPointInline]

    def has_add_permission(self, request) -> bool:
        return False  # a job is created by jobs.services.job_create, which also queues it


@admin.register(MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ("job", "kind", "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "created_at")
    list_filter = ("kind",)
    search_fields = ("=job__id",)
    raw_id_fields = ("job",)
    list_select_related = ("job",)
