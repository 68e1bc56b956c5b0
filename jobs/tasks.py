import logging
import os
import threading

from celery import shared_task
from celery.signals import worker_init, worker_ready, worker_shutdown
from celery.worker.control import inspect_command

logger = logging.getLogger(__name__)
# Imported while the worker boots, before it takes any task: jobs whose last heartbeat under this
# worker's name is older than this were left by a previous life of the worker.
_BOOTED_AT = None


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: int) -> None:
    from jobs.services import job_run  # tasks <-> services import cycle

    job_run(job_id=job_id)


@inspect_command()
def perceptor_worker(state) -> dict:
    """What the Workers page shows: this worker's training device and the jobs it is running."""
    from jobs.workers import worker_info

    return worker_info()


# The reaper runs as a thread in every worker's main process, not as a beat task: a task would
# wait in the queue behind the training job it is meant to watch (one job per worker, prefetch 1),
# and a thread needs no extra process in `make run` or the tests. Several reapers are harmless:
# every takeover is a conditional UPDATE on the job's lease.
_reaper_stop = threading.Event()
# The prefork pool forks a new child from this process whenever one dies. A child forked while the
# reaper is inside a SQLite write inherits SQLite's in-process record of that lock, which nothing in
# the child will ever release: its first write waits out the busy timeout and fails ("database is
# locked"). So a fork waits for the reaper's round to end, and a round closes its connection.
_reaper_round = threading.Lock()
os.register_at_fork(before=_reaper_round.acquire, after_in_parent=_reaper_round.release,
                    after_in_child=_reaper_round.release)


def _reap_forever(interval: float) -> None:
    from django.db import connection

    from jobs.services import job_reap
    from webapp.datasets.services import dataset_reap  # ingests and batches use the same leases and heartbeats
    from webapp.registry.batch import batch_reap

    while not _reaper_stop.wait(interval):
        with _reaper_round:
            for reap in (job_reap, dataset_reap, batch_reap):
                try:
                    reap()
                except Exception:  # noqa: BLE001 - the database or broker is down: try again next round
                    logger.exception("The reaper (%s) failed; trying again in %s s", reap.__name__, interval)
            connection.close()


@worker_init.connect
def remember_boot_time(**kwargs) -> None:
    global _BOOTED_AT
    from django.utils.timezone import now

    _BOOTED_AT = now()


@worker_ready.connect
def recover_and_start_reaper(sender, **kwargs) -> None:
    """A worker that starts cannot be running anything yet: jobs still marked as running on it were
    left behind by its previous life (killed, out of memory, machine restarted). Queue them again,
    then watch every running job's heartbeat from now on."""
    from django.conf import settings
    from django.db import connection

    from jobs.services import job_requeue_orphans

    job_requeue_orphans(worker=sender.hostname, started_at=_BOOTED_AT)
    connection.close()  # forks copy an open one (see _reaper_round)
    _reaper_stop.clear()
    threading.Thread(target=_reap_forever, args=(float(settings.JOB_REAP_EVERY_S),), name="job-reaper",
                     daemon=True).start()


@worker_shutdown.connect
def stop_reaper(**kwargs) -> None:
    _reaper_stop.set()
