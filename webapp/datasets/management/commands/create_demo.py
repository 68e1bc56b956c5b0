"""python manage.py create_demo [--owner admin]: the "Shapes (demo)" dataset, ingested right here."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.datasets.models import Dataset
from webapp.datasets.services import DEMO_SHAPES, dataset_create_demo, dataset_ingest


class Command(BaseCommand):
    help = "Create the 'Shapes (demo)' dataset for a user (idempotent) and ingest it synchronously."

    def add_arguments(self, parser):
        parser.add_argument("--owner", default="admin", help="Username that will own the dataset (default: admin).")

    def handle(self, *args, owner: str, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: owner})
        except User.DoesNotExist:
            raise CommandError(
                f"There is no user {owner!r}. Create one with `python manage.py createsuperuser`, "
                "or pass --owner <username>."
            ) from None

        dataset, created = dataset_create_demo(owner=user, queue_ingest=False)
        if not created and dataset.status == Dataset.Status.READY:
            self.stdout.write(self.style.SUCCESS(
                f"{owner} already has {dataset.name} (dataset {dataset.pk}, {dataset.num_samples:,} images); nothing to do."))
            return
        if dataset.status != Dataset.Status.PENDING:
            self.stdout.write(f"{dataset.name} (dataset {dataset.pk}) is {dataset.get_status_display().lower()} "
                              "in a worker; leaving it alone.")
            return
        self.stdout.write(f"Created {dataset.name} (dataset {dataset.pk}) for {owner}: "
                          f"{DEMO_SHAPES['per_class']:,} images per shape, {DEMO_SHAPES['size']}×{DEMO_SHAPES['size']}. "
                          "Ingesting …")
        dataset_ingest(dataset_id=dataset.pk, progress=self._progress)
        if self.stdout.isatty():
            self.stdout.write("")  # end the redrawn bar's line
        dataset.refresh_from_db()
        if dataset.status != Dataset.Status.READY:
            raise CommandError(f"Ingest failed: {dataset.error}")
        self.stdout.write(self.style.SUCCESS(
            f"{dataset.name} is ready: {dataset.num_samples:,} images in {len(dataset.classes)} classes "
            f"({dataset.num_train:,} training, {dataset.num_val:,} validation), "
            f"{dataset.width}×{dataset.height}×{dataset.channels}."))

    _last_percent = -1

    def _progress(self, done: int, total: int) -> None:
        # A redrawn bar on a terminal; a line every 10 % in a log, never a line per file.
        percent = 100 * done // max(total, 1)
        tty = self.stdout.isatty()
        if percent == self._last_percent or (not tty and percent % 10):
            return
        self._last_percent = percent
        line = f"  [{'#' * (percent * 30 // 100):.<30}] {percent:3d} %"
        self.stdout.write("\r" + line if tty else line, ending="" if tty else "\n")
        self.stdout.flush()
