"""Accounts: creating users, and the one admin account that `make run` sets up."""

import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction


def user_create(*, username: str, password: str, email: str = "") -> AbstractBaseUser:
    """A regular (non-staff) user. The caller has validated the password (forms do)."""
    return get_user_model().objects.create_user(username=username, email=email, password=password)


@dataclass(frozen=True)
class AdminAccount:
    user: AbstractBaseUser
    created: bool
    # The generated password kept in the password file, when the file exists and still matches.
    # None when the password came from the caller, or was changed since (the file is then stale).
    file_password: str | None


@transaction.atomic
def admin_ensure(*, username: str, password_file: Path, password: str = "") -> AdminAccount:
    """Create the superuser `username` once, with `password` or else a random one kept in `password_file`.

    Idempotent: later calls change nothing and only report. A generated password is written (owner
    read/write only) before the user is committed, so a crash never leaves an admin whose password
    nobody knows; a given password is never written to disk.
    """
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        generated = "" if password else secrets.token_urlsafe(12)
        if generated:
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.chmod(0o600)
            password_file.write_text(generated + "\n")
        user = User.objects.create_superuser(username=username, email="", password=password or generated)
        return AdminAccount(user=user, created=True, file_password=generated or None)

    kept = password_file.read_text().strip() if password_file.is_file() else ""
    return AdminAccount(user=user, created=False, file_password=kept if kept and user.check_password(kept) else None)


def user_delete(*, user: AbstractBaseUser) -> None:
    """Delete a user and everything they own, files included: a plain cascade would delete the
    rows of their datasets, jobs and models but leave the archives, arrays and weights on disk."""
    from webapp.datasets.services import dataset_delete
    from webapp.registry.batch import batch_delete
    from webapp.registry.services import model_delete

    for batch in user.batch_predictions.all():  # theirs, with anyone's models
        batch_delete(batch=batch)
    for model in user.trained_models.all():
        model_delete(model=model)
    for dataset in user.datasets.all():
        dataset_delete(dataset=dataset, force=True)
    user.delete()
