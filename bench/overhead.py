"""Platform overhead: a job trained through Celery with live streaming vs. the bare training loop.

Same network, same data (the same memory-mapped perceptor-images/1 folder), same config, same
device. The bare loop is `ml.train` without callbacks, in this process. The job goes the whole way:
job_create -> Redis -> a Celery worker process (solo pool) -> ml.train with the job callback (DB
writes of progress and points, throttled pushes over channels-redis, cancel polling) -> Daphne ->
a websocket client that receives every event. Both throughputs are ml's own figure (training
images per second of training time, callbacks included), so they compare like with like; the
end-to-end train() duration is printed too. Runs alternate (bare, job, bare, job, ...) so that
load from elsewhere on the machine hits both alike; the overhead is the median over the pairs.

On a shared machine those end-to-end figures mostly measure the neighbours. The robust figure is
the last line: the share of training time the worker's training thread spent inside the job's
progress callback (database writes, handing pushes to the sender thread, cancel polls), which the
worker measures itself and logs at the end of each job.

    .venv/bin/python bench/overhead.py                     # seed_cnn, 4,096 images 32x32, 3 pairs
    .venv/bin/python bench/overhead.py --arch resnet --images 1024 --pairs 5

Needs Redis on REDIS_URL (as `make run` does). Uses its own SQLite database, media folder, Celery
queue and channel prefix in a temporary folder, so it cannot disturb a running Perceptor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FINISHED = ("succeeded", "failed", "cancelled")
# Logged by the worker at the end of each job (jobs.services._TrainingCallback.log_cost).
COST_LINE = re.compile(r"Job (\d+): progress reporting took ([\d.]+) s in (\d+) calls over ([\d.]+) s of training")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="seed_cnn")
    parser.add_argument("--images", type=int, default=4096, help="training images (plus 1/8 as many for validation)")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=3, help="bare/job pairs to run")
    parser.add_argument("--device", default=os.getenv("PERCEPTOR_DEVICE", "auto"))
    return parser.parse_args()


def setup_django(base: Path, device: str) -> None:
    """A throwaway SQLite database and media folder, shared with the worker and server we start."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DATABASE_URL=f"sqlite:///{base / 'bench.sqlite3'}",
        MEDIA_ROOT=str(base / "media"),
        CHANNEL_LAYER="redis",
        CELERY_TASK_ALWAYS_EAGER="False",
        PERCEPTOR_DEVICE=device,
        LOG_LEVEL="WARNING",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def write_dataset(owner, *, images: int, size: int):
    """Random pixels in 10 classes: throughput does not depend on what the pictures show."""
    from django.core.files.storage import default_storage

    from webapp.datasets.models import Dataset

    num_val = max(images // 8, 10)
    n = images + num_val
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    classes = [f"class{i}" for i in range(10)]
    dataset = Dataset.objects.create(owner=owner, name="overhead", status=Dataset.Status.READY, num_samples=n,
                                     num_train=images, num_val=num_val, height=size, width=size, channels=3,
                                     classes=[{"name": c} for c in classes])
    directory = Path(default_storage.path(dataset.storage_dir))
    directory.mkdir(parents=True)
    np.save(directory / "images.npy", x, allow_pickle=False)
    np.save(directory / "labels.npy", y, allow_pickle=False)
    (directory / "dataset.json").write_text(json.dumps({
        "format": "perceptor-images/1", "classes": classes, "height": size, "width": size, "channels": 3,
        "num_train": images, "num_val": num_val,
    }))
    return dataset, directory


def run_bare(config: dict, directory: Path, device: str) -> dict:
    import ml

    result = ml.train(ml.TrainConfig.from_dict(config), ml.load_image_dataset(directory), device=device)
    return {"samples_per_s": result.metrics["samples_per_s"], "duration_s": result.metrics["duration_s"]}


def run_job(stack, user, dataset, config: dict) -> dict:
    """Queue the job with the worker paused, watch it over a websocket from the first event on."""
    from jobs.models import Job
    from jobs.services import job_create
    from webapp.registry.models import TrainedModel

    messages: list[dict] = []
    with stack.paused_worker():
        job = job_create(user=user, dataset=dataset, config=config)
        ws_context = stack.websocket(f"/ws/jobs/{job.pk}/", user=user)
        ws = ws_context.__enter__()
        messages.append(stack.receive_json(ws))
    listener = threading.Thread(target=_listen, args=(stack, ws, messages), daemon=True)
    listener.start()
    listener.join(timeout=3600)
    ws_context.__exit__(None, None, None)

    job.refresh_from_db()
    if job.status != Job.Status.SUCCEEDED:
        raise SystemExit(f"The benchmark job ended {job.status}: {job.error}\n{stack.log_tails()}")
    metrics = TrainedModel.objects.get(job=job).metrics
    progress = [m for m in messages if m["type"] == "progress"]
    costs = {int(m[1]): (float(m[2]), int(m[3]), float(m[4])) for m in COST_LINE.finditer(stack.logs["worker"].read_text())}
    busy_s, calls, training_s = costs[job.pk]
    return {
        "callback_share": busy_s / training_s,
        "callback_ms": 1000 * busy_s / max(calls, 1),
        "samples_per_s": metrics["samples_per_s"],
        "duration_s": metrics["duration_s"],
        "messages": len(messages),
        "points_pushed": sum(1 for m in progress if m["point"]),
        "points_stored": job.points.count(),
        "seconds": (job.finished_at - job.started_at).total_seconds(),
    }


def _listen(stack, ws, messages: list[dict]) -> None:
    while messages[-1]["job"]["status"] not in FINISHED:
        messages.append(stack.receive_json(ws, timeout=600))


def main() -> None:
    args = parse_args()
    base = Path(tempfile.mkdtemp(prefix="perceptor-overhead-"))
    try:
        setup_django(base, args.device)
        bench(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bench(args: argparse.Namespace, base: Path) -> None:
    import torch
    from django.contrib.auth import get_user_model

    from jobs.services import train_device
    from tests.live import running_stack
    from webapp.celery import app

    user = get_user_model().objects.create_user("overhead", password=None)
    dataset, directory = write_dataset(user, images=args.images, size=args.size)
    config = {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size}
    warmup = {**config, "epochs": 1}
    device, label = train_device()

    print(f"Perceptor platform overhead · {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · torch {torch.__version__} · device {label}")
    print(f"{args.arch}, {args.images} training images {args.size}x{args.size}, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.pairs} pairs\n")
    with running_stack(database_url=os.environ["DATABASE_URL"], base=base) as stack:
        app.conf.task_default_queue = stack.queue
        run_bare(warmup, directory, device)  # first-use costs (allocator, kernels) out of the figures
        run_job(stack, user, dataset, warmup)  # ... and the worker's torch import
        pairs = []
        print(f"{'pair':>4}  {'bare img/s':>10}  {'job img/s':>10}  {'slower':>7}  {'bare s':>7}  {'job s':>7}  "
              f"{'ws msgs':>7}  {'points':>6}  {'in callback':>11}  {'ms/call':>7}")
        for i in range(1, args.pairs + 1):
            bare = run_bare(config, directory, device)
            job = run_job(stack, user, dataset, config)
            overhead = 1 - job["samples_per_s"] / bare["samples_per_s"]
            pairs.append((bare, job, overhead))
            print(f"{i:>4}  {bare['samples_per_s']:>10.1f}  {job['samples_per_s']:>10.1f}  {overhead:>7.1%}  "
                  f"{bare['duration_s']:>7.1f}  {job['duration_s']:>7.1f}  {job['messages']:>7}  "
                  f"{job['points_stored']:>6}  {job['callback_share']:>11.2%}  {job['callback_ms']:>7.2f}")
    bare_sps = statistics.median(b["samples_per_s"] for b, _, _ in pairs)
    job_sps = statistics.median(j["samples_per_s"] for _, j, _ in pairs)
    duration = statistics.median(j["duration_s"] / b["duration_s"] - 1 for b, j, _ in pairs)
    best_bare = max(b["samples_per_s"] for b, _, _ in pairs)
    best_job = max(j["samples_per_s"] for _, j, _ in pairs)
    print(f"best of {len(pairs)} (the least disturbed runs): bare {best_bare:.1f} img/s, job {best_job:.1f} img/s: "
          f"{1 - best_job / best_bare:.1%} less throughput")
    share = statistics.median(j["callback_share"] for _, j, _ in pairs)
    print(f"\nmedian: bare {bare_sps:.1f} img/s, job {job_sps:.1f} img/s: {statistics.median(o for _, _, o in pairs):.1%} "
          f"less throughput, {duration:.1%} longer train()")
    print(f"training time spent in the job's progress callback (DB writes, pushes, cancel polls): {share:.2%} "
          f"(target <= 3%)")


if __name__ == "__main__":
    main()
