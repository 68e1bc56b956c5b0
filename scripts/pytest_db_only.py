"""pytest plugin: `-p scripts.pytest_db_only --db-only` keeps only the tests that use the database.

`make test-postgres` runs those once more on PostgreSQL; the rest (ml/, pure functions) would only
repeat what the SQLite run already showed.
"""

DB_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_setup",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
    "live_server",
}


def pytest_addoption(parser):
    parser.addoption("--db-only", action="store_true", help="run only the tests that touch the database")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("db_only"):
        return
    keep, drop = [], []
    for item in items:
        uses_db = item.get_closest_marker("django_db") is not None or DB_FIXTURES & set(
            getattr(item, "fixturenames", ())
        )
        (keep if uses_db else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
