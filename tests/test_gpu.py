"""CUDA checks, run by bench/gpu_check.sh on a machine with a GPU; skipped everywhere else."""

import time

import numpy as np
import pytest
import torch

from ml import ImageData, TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def brightness_task(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class = which colour channel is bright: learnable in a few steps by any network."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 90, (n, 16, 16, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y] += 150
    return x, y.astype(np.int64)


@pytest.mark.parametrize("arch", ["seed_cnn", "resnet"])
def test_training_on_cuda_learns_and_reports_the_gpu(arch):
    x, y = brightness_task(1200)
    data = ImageData(x[:1000], y[:1000], x[1000:], y[1000:], ["red", "green", "blue"])
    result = train(TrainConfig(arch=arch, epochs=3, batch_size=128), data, device="cuda")
    assert result.device.startswith("cuda")
    assert result.metrics["val_acc"] > 0.9
    assert next(result.model.parameters()).device.type == "cpu"  # handed back ready to save


def test_a_job_through_the_worker_trains_on_cuda(live, alice):
    from jobs.models import Job
    from jobs.services import job_create
    from tests.jobs.conftest import TINY_CONFIG, make_ready_dataset

    dataset = make_ready_dataset(alice, num_train=64)
    job = job_create(user=alice, dataset=dataset, config={**TINY_CONFIG, "epochs": 2})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            break
        time.sleep(0.5)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.device.startswith("cuda")
    assert job.trained_model is not None
