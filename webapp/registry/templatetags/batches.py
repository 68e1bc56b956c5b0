"""The model page's batch prediction section (registry/_batch.html): the form and the user's batches."""

from django import template
from django.conf import settings

from webapp.registry.batch import batch_csv_path
from webapp.registry.models import BatchPrediction

register = template.Library()

BATCHES_SHOWN = 10


@register.simple_tag
def batches_of(model, user) -> list[BatchPrediction]:
    """The user's latest batch predictions with this model (their own only, staff included: the
    section is about what this user started), each with `has_csv`."""
    batches = list(BatchPrediction.objects.filter(model=model, owner=user)[:BATCHES_SHOWN])
    for batch in batches:
        batch.has_csv = batch_csv_path(batch) is not None
    return batches


@register.simple_tag
def max_upload_bytes() -> int:
    """For upload.js to refuse an oversized archive before sending it (the server refuses it too)."""
    return settings.MAX_UPLOAD_BYTES
