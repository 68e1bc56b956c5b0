from celery import shared_task


# reject_on_worker_lost: a prefork child killed mid-ingest (or while generating a demo's archive,
# the first phase of a demo's ingest) gives the task back to the queue; the next claim takes the
# dataset over (its lease is dead) and redoes the unfinished phase, or fails it after MAX_INGEST_ATTEMPTS.
@shared_task(acks_late=True, reject_on_worker_lost=True)
def ingest_dataset(dataset_id: int) -> None:
    from webapp.datasets.services import dataset_ingest  # tasks <-> services import cycle

    dataset_ingest(dataset_id=dataset_id)
