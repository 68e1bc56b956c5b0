"""Reads of trained models, through the registry's visibility rule.

A model is visible to its owner and staff, and to every signed-in user once it is published.
Changing it (publish, default, delete) stays with the owner and staff: those views look it up with
get_owned_model_or_404, so to anyone else a published model reads as absent there too (404).
"""

from django.db.models import Q, QuerySet
from django.http import Http404

from webapp.ownership import get_owned_or_404
from webapp.registry.models import TrainedModel


def _models() -> QuerySet[TrainedModel]:
    return TrainedModel.objects.select_related("dataset", "job", "owner")


def visible_models(user) -> QuerySet[TrainedModel]:
    """The models `user` may see: their own and the published ones (staff: all; anonymous: none)."""
    if not user.is_authenticated:
        return TrainedModel.objects.none()
    if user.is_staff:
        return _models()
    return _models().filter(Q(owner=user) | Q(published=True))


def get_visible_model_or_404(user, pk) -> TrainedModel:
    try:
        return visible_models(user).get(pk=pk)
    except (TrainedModel.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No trained model {pk}") from None


def get_owned_model_or_404(user, pk) -> TrainedModel:
    """For changes: the owner's (or, for staff, any) model; a published model of someone else is a 404."""
    return get_owned_or_404(_models(), user, pk)


def model_versions(user, model: TrainedModel) -> list[TrainedModel]:
    """The versions of `model`'s name that `user` may see, newest first; the name's default
    version (the owner's choice, else the newest) has `shown_default` set."""
    versions = list(visible_models(user).filter(owner=model.owner_id, name=model.name).order_by("-version"))
    defaults = _default_versions({(model.owner_id, model.name)})
    for version in versions:
        version.shown_default = version.pk in defaults
    return versions


def _default_versions(names: set[tuple[int, str]]) -> set[int]:
    """The ids of the default version of each (owner, name): the one with is_default, else the
    newest. Counted over all versions, also those the viewer cannot see, so that another user
    never takes the newest published version for the default."""
    best: dict[tuple[int, str], tuple[bool, int, int]] = {}
    owners, labels = {owner for owner, _ in names}, {name for _, name in names}
    rows = TrainedModel.objects.filter(owner__in=owners, name__in=labels).values_list(
        "owner_id", "name", "is_default", "version", "pk")
    for owner, name, is_default, version, pk in rows:
        key = (owner, name)
        if key in names and (key not in best or (is_default, version) > best[key][:2]):
            best[key] = (is_default, version, pk)
    return {pk for _, _, pk in best.values()}


def model_groups(user) -> list[dict]:
    """The visible models, one entry per (owner, name): all its visible versions (newest first),
    the one to open (the default when visible, else the newest), the best validation accuracy and
    how many versions are published. Ordered by the newest version, most recent first."""
    groups: dict[tuple[int, str], list[TrainedModel]] = {}
    for model in visible_models(user).order_by("-created_at", "-version"):
        groups.setdefault((model.owner_id, model.name), []).append(model)
    defaults = _default_versions(set(groups))
    result = []
    for versions in groups.values():
        versions.sort(key=lambda v: -v.version)
        for version in versions:
            version.shown_default = version.pk in defaults
        accuracies = [v.val_acc for v in versions if v.val_acc is not None]
        result.append({
            "name": versions[0].name,
            "owner": versions[0].owner,
            "default": next((v for v in versions if v.shown_default), versions[0]),
            "versions": versions,
            "best_val_acc": max(accuracies) if accuracies else None,
            "published": sum(v.published for v in versions),
        })
    return result
