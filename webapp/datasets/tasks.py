from celery import shared_task


@shared_task(acks_late=True)
def ingest_dataset(dataset_id: int) -> None:
    from webapp.datasets.services import dataset_ingest  # tasks <-> services import cycle

    dataset_ingest(dataset_id=dataset_id)
