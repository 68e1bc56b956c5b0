from celery import shared_task


# acks_late + reject_on_worker_lost: a pool process that dies mid-batch gives the task back to the
# queue. A worker killed outright gives nothing back (until the broker's visibility timeout): every
# worker's reaper (batch_reap) queues its batch again. Either way the next delivery takes the batch
# over, under a new lease, and starts again from its first file (batch_run's claim).
@shared_task(acks_late=True, reject_on_worker_lost=True)
def predict_archive(batch_id: int) -> None:
    from webapp.registry.batch import batch_run  # tasks <-> services import cycle

    batch_run(batch_id=batch_id)
