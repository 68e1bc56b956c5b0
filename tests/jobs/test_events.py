"""jobs.events: progress pushes never hold up training, status pushes go out after them, in order,
and a broken channel layer is logged, never raised."""

import threading
import time

import pytest

from jobs import events

REDIS_LAYER = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                           "CONFIG": {"hosts": ["redis://127.0.0.1:9/0"], "prefix": "never-used"}}}


@pytest.fixture(autouse=True)
def fresh_sender(monkeypatch):
    monkeypatch.setattr(events, "_sender", events._Sender())


@pytest.fixture
def slow_redis(settings, monkeypatch):
    """A Redis layer whose every send takes 0.2 s; records what was sent, in order."""
    settings.CHANNEL_LAYERS = REDIS_LAYER
    sent = []

    def send(layer, group, message):
        time.sleep(0.2)
        sent.append((group, message["type"], message["n"]))

    monkeypatch.setattr(events, "_send", send)
    events.get_channel_layer()  # importing channels_redis is not what is timed
    return sent


def test_a_progress_push_returns_at_once_and_a_status_push_waits_for_everything_before_it(slow_redis):
    started = time.monotonic()
    assert events.push_job_event(7, events.PROGRESS, {"n": 1}, wait=False)
    assert events.push_job_event(7, events.PROGRESS, {"n": 2}, wait=False)
    queued_in = time.monotonic() - started
    assert events.push_job_event(7, events.STATUS, {"n": 3})

    assert queued_in < 0.1
    assert slow_redis == [("job-7", "job.progress", 1), ("job-7", "job.progress", 2), ("job-7", "job.status", 3)]


def test_progress_pushes_are_dropped_with_a_warning_when_the_layer_falls_behind(settings, monkeypatch, caplog):
    settings.CHANNEL_LAYERS = REDIS_LAYER
    release = threading.Event()
    monkeypatch.setattr(events, "_send", lambda layer, group, message: release.wait(5))

    accepted = [events.push_job_event(1, events.PROGRESS, {}, wait=False) for _ in range(events.MAX_BACKLOG + 3)]
    release.set()

    assert accepted == [True] * events.MAX_BACKLOG + [False] * 3
    assert caplog.text.count("Channel layer is not keeping up") == 1
    assert events.push_job_event(1, events.STATUS, {})  # status still goes out, after the backlog


def test_an_unreachable_redis_is_logged_once_per_outage_and_reported_not_raised(settings, caplog):
    settings.CHANNEL_LAYERS = REDIS_LAYER  # port 9 (discard): nothing listens there

    assert events.push_job_event(3, events.STATUS, {"job": {}}) is False
    assert events.push_job_event(3, events.STATUS, {"job": {}}) is False

    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("ERROR", "Could not push job.status to job-3", True),
        ("WARNING", "Could not push job.status to job-3 (still failing)", False),
    ]
