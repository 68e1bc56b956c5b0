import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from webapp.accounts.services import admin_ensure


class Command(BaseCommand):
    help = (
        "Create the superuser 'admin' once, with PERCEPTOR_ADMIN_PASSWORD or else a random password "
        "saved to var/admin-password.txt, and print how to log in (every time)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--password-file",
            type=Path,
            default=settings.VAR_DIR / "admin-password.txt",
            help="where a generated password is kept (default: var/admin-password.txt)",
        )
        parser.add_argument(
            "--url",
            default=f"http://{os.getenv('HOST', '127.0.0.1')}:{os.getenv('PORT', '8000')}/",
            help="the site's address, for the message",
        )

    def handle(self, *args, username, password_file, url, **options):
        given = os.getenv("PERCEPTOR_ADMIN_PASSWORD", "")
        account = admin_ensure(username=username, password_file=password_file, password=given)
        if account.created:
            self.stdout.write(self.style.SUCCESS(f"Created the superuser {username!r}."))
        if account.file_password is not None:
            how = f"password {account.file_password} (kept in {password_file})"
        elif given and account.user.check_password(given):
            how = "the password in PERCEPTOR_ADMIN_PASSWORD"
        else:
            how = f"your password (forgot it? .venv/bin/python manage.py changepassword {username})"
        self.stdout.write(f"Log in at {url} as {username} with {how}")
