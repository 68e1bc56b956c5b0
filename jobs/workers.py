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
from datetime import datetime, timedelta

from celery.app.control import flatten_reply

logger = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 1.0


@dataclass
class Worker:
    name: str
    device: str = ""  # as on the job page: "cpu", "cuda (H200)"
    job_ids: list[int] = field(default_factory=list)
    error: str = ""
    memory_bytes: int | None = None  # the GPU's memory; None on CPU
    answered: bool = True  # False: known only from the heartbeat of a job it runs (see below)
    last_heartbeat: datetime | None = None  # of the job it runs

    @property
    def host(self) -> str:
        return self.name.partition("@")[2] or self.name

    @property
    def memory_gib(self) -> float | None:
        return None if self.memory_bytes is None else self.memory_bytes / 2**30


@functools.cache
def _device() -> tuple[str, int | None]:
    from jobs.services import train_device

    device, label = train_device()
    memory = None
    if device.type == "cuda":
        import torch

        memory = torch.cuda.get_device_properties(device).total_memory
    return label, memory


def worker_info() -> dict:
    """Run inside a worker, answering `perceptor_worker`."""
    from celery.worker import state as worker_state

    from jobs.tasks import run_job

    job_ids = []
    for request in list(worker_state.active_requests):
        info = request.info()
        if info.get("name") == run_job.name and info.get("args"):
            job_ids.append(info["args"][0])
    label, memory = _device()
    return {"device": label, "memory_bytes": memory, "job_ids": job_ids}


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
                memory_bytes=reply.get("memory_bytes") if isinstance(reply.get("memory_bytes"), int) else None,
            )
        )
    return workers


def workers_with_jobs(found: list[Worker]) -> list[Worker]:
    """The workers that answered, with the heartbeats of the jobs they run, plus the workers that
    did not answer but run a job with a live heartbeat: a worker with the solo pool (one process)
    answers broadcasts only between jobs, and a busy one is still very much online."""
    from django.utils.timezone import now

    from jobs.models import Job
    from jobs.services import stale_after_s

    by_name = {w.name: w for w in found}
    live_since = now() - timedelta(seconds=stale_after_s())
    running = Job.objects.filter(status=Job.Status.RUNNING).exclude(worker="").values_list(
        "id", "worker", "device", "heartbeat_at")
    for job_id, name, device, heartbeat in running:
        worker = by_name.get(name)
        if worker is None:
            if heartbeat is None or heartbeat < live_since:
                continue  # dead: the reaper takes its job back
            worker = by_name[name] = Worker(name=name, device=device, answered=False)
        if job_id not in worker.job_ids:
            worker.job_ids.append(job_id)
        if heartbeat and (worker.last_heartbeat is None or heartbeat > worker.last_heartbeat):
            worker.last_heartbeat = heartbeat
    return sorted(by_name.values(), key=lambda w: w.name)
