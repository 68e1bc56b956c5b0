"""One rule for every object a user owns: the owner and staff see it, everyone else gets a 404."""

from django.db.models import Model, QuerySet
from django.http import Http404


def owned_by(queryset: QuerySet, user) -> QuerySet:
    if user.is_staff:
        return queryset
    if not user.is_authenticated:
        return queryset.none()
    return queryset.filter(owner=user)


def get_owned_or_404(queryset: QuerySet | type[Model], user, pk) -> Model:
    if isinstance(queryset, type):
        queryset = queryset.objects.all()
    try:
        return owned_by(queryset, user).get(pk=pk)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No {queryset.model._meta.verbose_name} {pk}") from None
