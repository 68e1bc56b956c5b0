"""Celery workers as the Workers page sees them: asked over the broker, with a short timeout.

Each worker answers our own inspect command, `perceptor_worker` (registered in jobs/tasks.py), in
one round trip: its training device and the jobs it is running. A built-in inspect call would need
one round trip per question, and each waits for the whole timeout (Celery cannot know how many
workers exist, so it collects replies until the time is up).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from celery.app.control import flatten_reply

logger = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0


@dataclass
class Worker:
    name: str
    device: str = ""  # as on the job page: "cpu", "cuda (H200)"
    job_ids: list[int] = field(default_factory=list)
    error: str = ""


@functools.cache
def _device_label() -> str:
    from jobs.services import train_device

    return train_device()[1]


def worker_info() -> dict:
    """Run inside a worker, answering `perceptor_worker`."""
    from celery.worker import state as worker_state

    from jobs.tasks import run_job

    job_ids = []
    for request in list(worker_state.active_requests):
        info = request.info()
        if info.get("name") == run_job.name and info.get("args"):
            job_ids.append(info["args"][0])
    return {"device": _device_label(), "job_ids": job_ids}


def worker_list(*, timeout: float = INSPECT_TIMEOUT_S) -> list[Worker]:
    """The workers that answered within `timeout`. Raises OSError-like errors if the broker is down."""
    from webapp.celery import app

    replies = flatten_reply(app.control.broadcast("perceptor_worker", reply=True, timeout=timeout) or [])
    workers = []
    for name, reply in sorted(replies.items()):
        if not isinstance(reply, dict) or "error" in reply:
            # A worker running older code does not know our command; list it all the same.
            error = reply.get("error", "") if isinstance(reply, dict) else str(reply)
            workers.append(Worker(name=name, error=f"Did not describe itself ({error})."))
            continue
        workers.append(
            Worker(
                name=name,
                device=str(reply.get("device", "")),
                job_ids=[int(i) for i in reply.get("job_ids", []) if str(i).isdigit()],
            )
        )
    return workers
