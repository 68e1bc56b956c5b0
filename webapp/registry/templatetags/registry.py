"""Template tags of the registry's model page partials (which get the page's context as it is)."""

from datetime import datetime

from django import template

from webapp.registry.selectors import model_versions

register = template.Library()


@register.simple_tag
def versions_of(model, user) -> list:
    """The versions of the model's name the user may see, newest first (see selectors.model_versions)."""
    return model_versions(user, model)


@register.filter
def iso_datetime(value):
    """An ISO 8601 string (as JSON fields store times) -> a datetime for the `date` filter; "" if not one."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return ""
