"""Job test fixtures: ready datasets written straight in the perceptor-images/1 format (no ingest),
and fake training events."""

import json

import numpy as np
import pytest
from django.core.files.storage import default_storage

from webapp.datasets.models import Dataset

# The smallest network and a run of a second or two on CPU.
TINY_CONFIG = {"arch": "seed_cnn", "epochs": 2, "batch_size": 8, "lr": 3e-3, "augment": False}


def write_image_dataset(directory, *, num_train=32, num_val=8, size=8, classes=("dark", "bright"), seed=0) -> dict:
    """Noise images whose class is their brightness (learnable in a few steps), train first."""
    rng = np.random.default_rng(seed)
    n = num_train + num_val
    labels = (np.arange(n) % len(classes)).astype(np.int64)
    images = rng.integers(0, 100, (n, size, size, 3)).astype(np.uint8) + (labels * 120).astype(np.uint8)[:, None, None, None]
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "images.npy", images, allow_pickle=False)
    np.save(directory / "labels.npy", labels, allow_pickle=False)
    meta = {
        "format": "perceptor-images/1", "classes": list(classes), "height": size, "width": size, "channels": 3,
        "num_train": num_train, "num_val": num_val,
        "counts": {"train": [int((labels[:num_train] == c).sum()) for c in range(len(classes))],
                   "val": [int((labels[num_train:] == c).sum()) for c in range(len(classes))]},
        "samples": {name: [i for i in range(n) if labels[i] == c][:8] for c, name in enumerate(classes)},
        "skipped": [], "options": {"image_size": size, "val_fraction": num_val / n, "seed": seed}, "resized": False,
    }
    (directory / "dataset.json").write_text(json.dumps(meta))
    return meta


def make_ready_dataset(owner, *, name="brightness", **kwargs) -> Dataset:
    """A READY Dataset row with its arrays under the current MEDIA_ROOT."""
    dataset = Dataset.objects.create(owner=owner, name=name, status=Dataset.Status.READY)
    meta = write_image_dataset(_path(dataset.storage_dir), **kwargs)
    Dataset.objects.filter(pk=dataset.pk).update(
        num_samples=meta["num_train"] + meta["num_val"], num_train=meta["num_train"], num_val=meta["num_val"],
        classes=[{"name": c, "train": t, "val": v} for c, t, v in zip(meta["classes"], *meta["counts"].values())],
        height=meta["height"], width=meta["width"], channels=meta["channels"],
    )
    dataset.refresh_from_db()
    return dataset


def _path(relative):
    from pathlib import Path

    return Path(default_storage.path(relative))


@pytest.fixture
def dataset(alice):
    return make_ready_dataset(alice)


def progress_event(kind="step", *, epoch=1, epochs=2, step=1, total_steps=8, train_loss=0.7, train_acc=0.5,
                   val_loss=None, val_acc=None, lr=1e-3, samples_per_s=100.0, elapsed_s=1.0):
    from ml import ProgressEvent

    return ProgressEvent(kind=kind, epoch=epoch, epochs=epochs, step=step, total_steps=total_steps,
                         train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, lr=lr,
                         samples_per_s=samples_per_s, elapsed_s=elapsed_s)


@pytest.fixture(autouse=True)
def _memory_channel_layer(settings):
    """Unit tests push through the in-memory layer (the `live` fixture swaps in Redis)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def _fresh_throttle():
    """Test databases reuse job ids; a worker process never does."""
    from jobs.services import _throttle

    _throttle.clear()


@pytest.fixture
def pushes(monkeypatch):
    """Every event the services push, as (job_id, type, payload), in order."""
    sent = []
    monkeypatch.setattr(
        "jobs.events.push_job_event", lambda job_id, type, payload, **kwargs: sent.append((job_id, type, payload)) or True
    )
    return sent


@pytest.fixture
def queued(monkeypatch):
    """Job ids handed to Celery (run_job.delay), without a broker."""
    ids = []
    monkeypatch.setattr("jobs.tasks.run_job.apply_async", lambda args, **kwargs: ids.append(args[0]))
    return ids


@pytest.fixture(autouse=True)
def _quiet_heartbeat(settings):
    """In-process tests run job_run inside a test transaction that the heartbeat thread's own
    database connection cannot see: it would find no job to beat for and stop training. Its beat is
    pushed past any test here (test_recovery.py tests the thread itself on a committed row)."""
    settings.JOB_HEARTBEAT_S = 3600
