from celery import shared_task


# acks_late + reject_on_worker_lost: a worker that dies mid-batch gives the task back to the queue;
# the next delivery takes the batch over and starts again from its first file (batch_run's claim).
@shared_task(acks_late=True, reject_on_worker_lost=True)
def predict_archive(batch_id: int) -> None:
    from webapp.registry.batch import batch_run  # tasks <-> services import cycle

    batch_run(batch_id=batch_id)
