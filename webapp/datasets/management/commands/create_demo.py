"""python manage.py create_demo [--owner admin] [--only shapes|digits]: the demo datasets
("Shapes (demo)" and "Spoken digits (demo)"), generated and ingested right here. Idempotent.

The same services as the site's demo buttons (dataset_create_demo makes the row, dataset_ingest
generates the archive and ingests it), run synchronously with a progress bar instead of in a worker."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.datasets.models import Dataset
from webapp.datasets.services import DEMOS, dataset_create_demo, dataset_ingest


class Command(BaseCommand):
    help = ("Create the demo datasets ('Shapes (demo)', 'Spoken digits (demo)') for a user (idempotent) "
            "and ingest them synchronously.")

    def add_arguments(self, parser):
        parser.add_argument("--owner", default="admin", help="Username that will own the datasets (default: admin).")
        parser.add_argument("--only", choices=list(DEMOS), help="Create only this demo (default: all of them).")

    def handle(self, *args, owner: str, only: str | None = None, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: owner})
        except User.DoesNotExist:
            raise CommandError(
                f"There is no user {owner!r}. Create one with `python manage.py createsuperuser`, "
                "or pass --owner <username>."
            ) from None
        failures = []
        for which in [only] if only else list(DEMOS):
            try:
                self._demo(user, which)
            except CommandError as exc:  # one demo failing does not keep the others from being made
                self.stderr.write(str(exc))
                failures.append(str(exc))
        if failures:
            raise CommandError(" ".join(failures))

    def _demo(self, user, which: str) -> None:
        demo = DEMOS[which]
        owner = user.get_username()
        dataset, created = dataset_create_demo(owner=user, which=which, queue_ingest=False)
        if not created and dataset.status == Dataset.Status.READY:
            self.stdout.write(self.style.SUCCESS(
                f"{owner} already has {dataset.name} (dataset {dataset.pk}, {dataset.num_samples:,} "
                f"{_things(dataset)}); nothing to do."))
            return
        if dataset.status != Dataset.Status.PENDING:
            self.stdout.write(f"{dataset.name} (dataset {dataset.pk}) is {dataset.get_status_display().lower()} "
                              "in a worker; leaving it alone.")
            return
        steps = "Ingesting" if dataset.archive else "Generating and ingesting"  # one bar over both
        self.stdout.write(f"{'Created' if created else 'Found'} {dataset.name} (dataset {dataset.pk}) for {owner}: "
                          f"{demo.summary}. {steps} …")
        dataset_ingest(dataset_id=dataset.pk, progress=self._bar())
        self._end_bar()
        dataset.refresh_from_db()
        if dataset.status == Dataset.Status.FAILED and not dataset.archive:
            # Not fatal: `make run` goes on to start the server with the demos that could be made.
            self.stderr.write(self.style.WARNING(f"{dataset.error} Skipped."))
            return
        if dataset.status == Dataset.Status.FAILED:
            raise CommandError(f"Ingest of {dataset.name} failed: {dataset.error}")
        if dataset.status != Dataset.Status.READY:  # a worker claimed it first
            self.stdout.write(f"{dataset.name} (dataset {dataset.pk}) is {dataset.get_status_display().lower()} "
                              "in a worker; leaving it alone.")
            return
        if dataset.kind == Dataset.Kind.AUDIO:
            shape = f"{dataset.clip_seconds:g} s at {dataset.info.get('sample_rate', 0) / 1000:g} kHz"
        else:
            shape = f"{dataset.width}×{dataset.height}×{dataset.channels}"
        self.stdout.write(self.style.SUCCESS(
            f"{dataset.name} is ready: {dataset.num_samples:,} {_things(dataset)} in {len(dataset.classes)} classes "
            f"({dataset.num_train:,} training, {dataset.num_val:,} validation), {shape}."))

    def _bar(self):
        """A progress(done, total) callback: a redrawn bar on a terminal; a line every 10 % in a
        log, never a line per file."""
        self._drawn = False
        last = -1

        def progress(done: int, total: int) -> None:
            nonlocal last
            percent = 100 * done // max(total, 1)
            tty = self.stdout.isatty()
            if percent == last or (not tty and percent % 10):
                return
            last = percent
            self._drawn = True
            line = f"  [{'#' * (percent * 30 // 100):.<30}] {percent:3d} %"
            self.stdout.write("\r" + line if tty else line, ending="" if tty else "\n")
            self.stdout.flush()

        return progress

    def _end_bar(self) -> None:
        if self._drawn and self.stdout.isatty():
            self.stdout.write("")  # end the redrawn bar's line
        self._drawn = False


def _things(dataset: Dataset) -> str:
    return "clips" if dataset.kind == Dataset.Kind.AUDIO else "images"
