"""The one way job events leave a process: a group_send to the job's channel group.

The database is the truth and the channel layer is lossy, so a failed push is logged and dropped:
it must never break the training that produced it. Pages recover by reloading history from the
database (the websocket consumer sends it on connect).

Pushes to Redis are made by one sender thread per process, in the order they were asked for. A
push costs a few milliseconds (a new event loop, a connection, a Lua script); progress pushes hand
their message over and return at once, so training never waits for Redis. Status pushes wait until
they (and every push before them) went out, so a finished job's last word is never left behind.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from asgiref.sync import async_to_sync
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers, get_channel_layer

logger = logging.getLogger(__name__)

PROGRESS = "job.progress"
STATUS = "job.status"
SEND_TIMEOUT_S = 10.0
# Pushes waiting for the sender (Redis slow or down): past this, progress pushes are dropped.
MAX_BACKLOG = 64


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def push_job_event(job_id: int, type: str, payload: dict, *, wait: bool = True) -> bool:
    """Send `{"type": type, **payload}` to everyone watching the job. With wait=False, return once
    the message is queued for sending. Returns False when it did not (or will not) go out.

    Call from sync code only (services run by views and Celery tasks); consumers await the layer.
    """
    message = {"type": type, **payload}
    try:
        layer = get_channel_layer()
    except Exception:
        logger.exception("No usable channel layer: %s for job %s not pushed", type, job_id)
        return False
    if layer is None:
        logger.warning("No channel layer configured: %s for job %s not pushed", type, job_id)
        return False
    if not hasattr(layer, "close_pools"):
        # The in-memory layer (tests, development) lives on the consumers' own event loop: send
        # from this thread, as async_to_sync then runs on that loop.
        try:
            _send(layer, job_group(job_id), message)
        except Exception:
            logger.exception("Could not push %s for job %s", type, job_id)
            return False
        return True
    return _sender.submit(job_group(job_id), message, wait=wait)


class _Sender:
    """One thread that sends Redis pushes one after another (so in order), per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid: int | None = None
        self._pending = 0
        self._dropping = False
        self._failing = False  # one traceback per outage, not four a second

    def submit(self, group: str, message: dict, *, wait: bool) -> bool:
        with self._lock:
            if self._executor is None or self._pid != os.getpid():  # a forked child has no thread
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-events")
                self._pid = os.getpid()
            if not wait and self._pending >= MAX_BACKLOG:
                if not self._dropping:
                    logger.warning("Channel layer is not keeping up: dropping progress pushes until it does")
                self._dropping = True
                return False
            self._dropping = False
            self._pending += 1
            future = self._executor.submit(self._run, group, message)
        if not wait:
            return True
        try:
            return future.result(timeout=SEND_TIMEOUT_S)
        except FutureTimeout:
            logger.error("Push of %s to %s still not sent after %s s", message["type"], group, SEND_TIMEOUT_S)
            return False

    def _run(self, group: str, message: dict) -> bool:
        try:
            # A private layer instance each time: closing its pools (below) must not touch the
            # connections of anything else in this process, such as a server's consumers.
            _send(channel_layers.make_backend(DEFAULT_CHANNEL_LAYER), group, message)
        except Exception:
            if self._failing:
                logger.warning("Could not push %s to %s (still failing)", message["type"], group)
            else:
                logger.exception("Could not push %s to %s", message["type"], group)
            self._failing = True
            return False
        else:
            if self._failing:
                logger.info("Pushing job events works again")
            self._failing = False
            return True
        finally:
            with self._lock:
                self._pending -= 1


_sender = _Sender()


def _send(layer, group: str, message: dict) -> None:
    async_to_sync(_send_and_close)(layer, group, message)


async def _send_and_close(layer, group: str, message: dict) -> None:
    # From a plain thread async_to_sync runs each call on a new event loop, and channels_redis 4
    # keeps Redis pools per loop: left open, they are torn down later on a closed loop
    # ("RuntimeError: Event loop is closed", django/channels_redis#332). Close them here.
    try:
        await layer.group_send(group, message)
    finally:
        close_pools = getattr(layer, "close_pools", None)
        if close_pools is not None:
            await close_pools()
