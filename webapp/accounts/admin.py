from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from webapp.accounts.services import user_delete

User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class PerceptorUserAdmin(UserAdmin):
    """Deleting a user goes through user_delete, so their files go with their rows."""

    def delete_model(self, request, obj):
        user_delete(user=obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            user_delete(user=user)
