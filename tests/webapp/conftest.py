"""Fixtures for the site's apps."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_predictor_cache():
    """Each test loads its models afresh: the registry keeps loaded predictors per process."""
    from webapp.registry import services

    services._cache.clear()
    yield
    services._cache.clear()
