from celery import shared_task
from celery.signals import worker_ready
from celery.worker.control import inspect_command


@shared_task(bind=True, acks_late=True)
def run_job(self, job_id: int) -> None:
    from jobs.services import job_run  # tasks <-> services import cycle

    job_run(job_id=job_id)


@inspect_command()
def perceptor_worker(state) -> dict:
    """What the Workers page shows: this worker's training device and the jobs it is running."""
    from jobs.workers import worker_info

    return worker_info()


@worker_ready.connect
def fail_orphaned_jobs(sender, **kwargs) -> None:
    """A worker that starts cannot be running anything yet: jobs still marked as running on it
    were left behind by its previous life (killed, out of memory, machine restarted)."""
    from jobs.services import job_fail_orphans

    job_fail_orphans(worker=sender.hostname)
