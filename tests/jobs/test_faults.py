"""Fault injection with real processes: Celery workers killed mid-job, a job that kills its worker
every time, Redis restarted under a training job. Each test starts its own workers on its own queue
(tests/live.py's helpers), with short heartbeats so that the reaper acts within seconds.

    .venv/bin/pytest -m integration tests/jobs/test_faults.py -s     # -s prints the fault figures

The figures printed here are the ones recorded in docs/benchmarks.md ("Faults").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.utils import timezone

from jobs.models import Job, MetricPoint
from jobs.services import job_cancel, job_create, job_resume
from tests.jobs.conftest import TINY_CONFIG, make_ready_dataset
from tests.live import (
    LiveStack,
    _database_url,
    _no_proxy_opener,
    child_env,
    free_port,
    server_command,
    start_process,
    stop_process,
    worker_command,
)
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.integration

# Heartbeat every second, stale after 3 s, a reaper round every second: a dead job is seen within
# about 4 s instead of the default 40 s.
FAST_FAULTS = {"PERCEPTOR_HEARTBEAT_S": "1", "PERCEPTOR_STALE_AFTER_S": "3", "PERCEPTOR_REAP_EVERY_S": "1"}
if os.environ.get("FAULTS_WITH_DEFAULT_TIMINGS") == "1":  # bench/faults.py --default-timings: 5 s, 30 s, 10 s
    FAST_FAULTS = {"PERCEPTOR_HEARTBEAT_S": "5", "PERCEPTOR_STALE_AFTER_S": "30", "PERCEPTOR_REAP_EVERY_S": "10"}
HOOKS = "tests.jobs.fault_hooks"
# About a second per epoch on one quiet core (a minute when the machine is very busy): long enough to
# kill a worker in the middle of one. Waits are long for the same reason; a pass takes seconds.
SLOW_CONFIG = {**TINY_CONFIG, "epochs": 3, "batch_size": 4}
WAIT_S = 300
SLOW_DATA = {"num_train": 1024, "num_val": 16, "size": 16}
LOG_TAIL_LINES = 60


@dataclass
class Faults:
    """Workers started by one test, all on its own queue and sharing the test database."""

    base: Path
    media_root: Path
    queue: str
    database_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start_worker(self, name: str, *, pool: str = "solo", env: dict | None = None) -> subprocess.Popen:
        node = f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        args = worker_command(queue=self.queue, name=node) + ["--include", HOOKS]
        if pool != "solo":
            args[args.index("solo")] = pool
        environment = {**child_env(database_url=self.database_url, media_root=self.media_root, queue=self.queue,
                                   channel_prefix=self.queue), **FAST_FAULTS, **(env or {})}
        log = self.base / f"{name}.log"
        self.logs[name] = log
        process = start_process(args, environment, log)
        process.node = node
        self.processes[name] = process
        return process

    def start_server(self, name: str, *, env: dict | None = None) -> LiveStack:
        """A Daphne on the test database and this test's channel prefix, ready when this returns."""
        port = free_port()
        environment = {**child_env(database_url=self.database_url, media_root=self.media_root, queue=self.queue,
                                   channel_prefix=self.queue), **(env or {})}
        log = self.base / f"{name}.log"
        self.logs[name] = log
        self.processes[name] = start_process(server_command(port=port), environment, log)
        server = LiveStack(url=f"http://127.0.0.1:{port}", media_root=self.media_root, queue=self.queue,
                           channel_prefix=self.queue, worker_name="", logs={name: log},
                           processes={name: self.processes[name]})
        server.wait_for(lambda: _answers(server.url + "/login/"), timeout=60, what="Daphne to answer")
        return server

    def kill(self, name: str) -> None:
        """SIGKILL to the worker's whole process group: nothing gets to clean up or requeue."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def wait_for(self, predicate, *, timeout: float, what: str, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"Timed out after {timeout} s waiting for {what}.\n{self.log_tails()}")

    def log_tails(self) -> str:
        parts = []
        for name, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if path.exists() else []
            parts.append(f"----- {name} ({path}) -----\n" + "\n".join(lines))
        return "\n".join(parts)


@pytest.fixture
def faults(transactional_db, settings, tmp_path):
    from webapp.celery import app

    media_root = tmp_path / "media-shared"
    media_root.mkdir()
    settings.MEDIA_ROOT = media_root
    queue = f"perceptor-faults-{uuid.uuid4().hex[:10]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    saved = {"task_default_queue": app.conf.task_default_queue, "task_always_eager": app.conf.task_always_eager}
    app.conf.task_default_queue, app.conf.task_always_eager = queue, False
    state = Faults(base=tmp_path, media_root=media_root, queue=queue, database_url=_database_url())
    try:
        yield state
    finally:
        for process in state.processes.values():
            stop_process(process, timeout=10)
        for key, value in saved.items():
            setattr(app.conf, key, value)


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        with _no_proxy_opener().open(url, timeout=2) as response:
            return response.status == 200
    return False


def job_state(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def assert_one_clean_curve(job: Job, *, epochs: int) -> list[MetricPoint]:
    points = list(job.points.order_by("id"))
    steps = [p.step for p in points]
    assert steps == sorted(steps), "points were stored out of order"
    for kind in ("step", "epoch"):
        kind_steps = [p.step for p in points if p.kind == kind]
        assert len(kind_steps) == len(set(kind_steps)), f"a {kind} point was stored twice"
    assert [p.epoch for p in points if p.kind == "epoch"] == list(range(1, epochs + 1))
    return points


def test_a_job_resumes_from_its_checkpoint_after_its_worker_is_killed(faults, alice):
    faults.start_worker("first")
    job = job_create(user=alice, dataset=make_ready_dataset(alice, **SLOW_DATA), config=SLOW_CONFIG)
    first_epoch = faults.wait_for(
        lambda: MetricPoint.objects.filter(job=job, kind="epoch", epoch=1).first(), timeout=WAIT_S,
        what="the first epoch to end")
    faults.wait_for(lambda: job_state(job.pk).step > first_epoch.step + 20, timeout=60, what="epoch 2 to be under way")

    before_kill = job_state(job.pk)
    killed_at_step = before_kill.step
    pace_s = (timezone.now() - before_kill.started_at).total_seconds() / max(killed_at_step, 1)  # per step
    last_id_before = MetricPoint.objects.filter(job=job).order_by("-id").values_list("id", flat=True)[0]
    faults.kill("first")
    killed = time.monotonic()
    assert job_state(job.pk).status == Job.Status.RUNNING  # the database does not know yet

    faults.start_worker("second")
    faults.wait_for(lambda: job_state(job.pk).status == Job.Status.RUNNING and job_state(job.pk).attempts == 2,
                    timeout=WAIT_S, what="another worker to take the job over")
    running_again_s = time.monotonic() - killed
    job = faults.wait_for(lambda: (j := job_state(job.pk)).is_finished and j, timeout=WAIT_S,
                          what="the resumed job to succeed")

    assert job.status == Job.Status.SUCCEEDED, job.error
    points = assert_one_clean_curve(job, epochs=SLOW_CONFIG["epochs"])
    # Training went on from the checkpoint of epoch 1: the first point stored after the crash
    # continues the step count from there, and nothing past the checkpoint was kept twice.
    after = [p for p in points if p.id > last_id_before]
    assert after and after[0].step > first_epoch.step
    assert after[0].step <= killed_at_step, "training skipped the steps lost in the crash"
    assert all(p.step <= first_epoch.step for p in points if p.id <= last_id_before)
    assert job.attempts == 2 and job.error == ""
    assert any("Resumed from the checkpoint of epoch 1" in n["message"] for n in job.notices)
    assert TrainedModel.objects.filter(job=job).count() == 1
    assert not (faults.media_root / "jobs" / str(job.pk)).exists()  # the checkpoint went with success
    lost_steps = killed_at_step - first_epoch.step  # done before the crash, done again after it
    print(f"\nFAULTS sigkill_to_running_again_s={running_again_s:.1f} (includes starting a worker) "
          f"steps_lost={lost_steps} training_lost_s={lost_steps * pace_s:.1f}")


def test_a_job_that_kills_its_worker_every_time_fails_after_three_attempts(faults, alice):
    # A prefork worker: the parent survives each crash of its child and requeues the task (acks_late,
    # reject_on_worker_lost); only the attempt count stops the loop.
    worker = faults.start_worker("poisoned", pool="prefork", env={"PERCEPTOR_TEST_DIE_AT_STEP": "3"})
    job = job_create(user=alice, dataset=make_ready_dataset(alice), config=TINY_CONFIG)

    job = faults.wait_for(lambda: (j := job_state(job.pk)).is_finished and j, timeout=WAIT_S,
                          what="the poison job to fail")

    assert job.status == Job.Status.FAILED and job.attempts == 3
    assert "stopped 3 times" in job.error and "at most 3 attempts" in job.error
    assert not TrainedModel.objects.filter(job=job).exists()
    assert worker.poll() is None, "the worker itself must survive its children's crashes"
    time.sleep(3)  # leftover deliveries of the task find the job failed and do nothing
    assert job_state(job.pk).status == Job.Status.FAILED and job_state(job.pk).attempts == 3


def test_the_reaper_requeues_a_job_whose_heartbeat_stopped_and_another_worker_finishes_it(faults, alice):
    faults.start_worker("doomed")
    faults.start_worker("survivor")
    job = job_create(user=alice, dataset=make_ready_dataset(alice, **SLOW_DATA), config=SLOW_CONFIG)
    holder = faults.wait_for(lambda: (j := job_state(job.pk)).status == Job.Status.RUNNING and j.worker,
                             timeout=WAIT_S, what="a worker to start the job")
    name = next(n for n, p in faults.processes.items() if p.node == holder)
    # As if the holder ran on another machine: the survivor cannot look up its pid and must go by
    # the heartbeat alone (the case with the longest delay).
    Job.objects.filter(pk=job.pk).update(claimed_by="another-host:1")

    faults.kill(name)
    killed = time.monotonic()
    faults.wait_for(lambda: job_state(job.pk).attempts == 2 or job_state(job.pk).status != Job.Status.RUNNING,
                    timeout=60, what="the reaper to take the dead job back")
    shown_running_s = time.monotonic() - killed
    job = faults.wait_for(lambda: (j := job_state(job.pk)).is_finished and j, timeout=WAIT_S,
                          what="the job to finish on the other worker")

    assert job.status == Job.Status.SUCCEEDED and job.attempts == 2 and job.worker != holder
    assert_one_clean_curve(job, epochs=SLOW_CONFIG["epochs"])
    assert TrainedModel.objects.filter(job=job).count() == 1
    limit = int(FAST_FAULTS["PERCEPTOR_STALE_AFTER_S"]) + int(FAST_FAULTS["PERCEPTOR_REAP_EVERY_S"])
    assert shown_running_s < limit + 5  # the stated limit, plus slack for a busy machine
    print(f"\nFAULTS dead_job_shown_running_s={shown_running_s:.1f} (limit {limit} s with these settings)")


def test_a_cancelled_running_job_keeps_its_checkpoint_frees_the_worker_and_resumes(faults, alice):
    faults.start_worker("canceller")
    dataset = make_ready_dataset(alice, **SLOW_DATA)
    # Six epochs: on an idle machine one takes under a second, less than the worker's cancel poll,
    # so with two the job could finish before it saw the cancel asked for after the first.
    job = job_create(user=alice, dataset=dataset, config={**SLOW_CONFIG, "epochs": 6})
    first_epoch = faults.wait_for(
        lambda: MetricPoint.objects.filter(job=job, kind="epoch", epoch=1).first(), timeout=WAIT_S,
        what="the first epoch to end")

    asked = time.monotonic()
    job_cancel(job=job_state(job.pk))
    faults.wait_for(lambda: job_state(job.pk).status == Job.Status.CANCELLED, timeout=30, what="the cancel")
    cancelled_s = time.monotonic() - asked
    checkpoint = faults.media_root / "jobs" / str(job.pk) / "checkpoint.pt"
    assert checkpoint.is_file()
    # The worker is free: a second job starts on it at once.
    other = job_create(user=alice, dataset=make_ready_dataset(alice, name="small"), config=TINY_CONFIG)
    faults.wait_for(lambda: job_state(other.pk).status == Job.Status.SUCCEEDED, timeout=WAIT_S, what="the next job")
    free_s = time.monotonic() - asked

    job_resume(job=job_state(job.pk))
    job = faults.wait_for(lambda: (j := job_state(job.pk)).is_finished and j, timeout=WAIT_S,
                          what="the resumed job to succeed")
    assert job.status == Job.Status.SUCCEEDED, job.error
    points = assert_one_clean_curve(job, epochs=6)
    assert points[0].step <= first_epoch.step and TrainedModel.objects.filter(job=job).count() == 1
    assert any("Resumed from the checkpoint" in n["message"] for n in job.notices)
    print(f"\nFAULTS cancel_to_cancelled_s={cancelled_s:.1f} cancel_to_next_job_done_s={free_s:.1f}")


@contextlib.contextmanager
def private_redis(port: int, base: Path):
    """A throwaway redis-server that keeps nothing on disk, like a Redis that lost its data."""
    args = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(base)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield process
    finally:
        stop_process(process, timeout=5)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
def test_after_a_redis_restart_mid_training_the_job_finishes_with_its_full_history_and_pages_stream_again(faults, alice, tmp_path):
    from celery import Celery

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {"REDIS_URL": url}

    def send(job_id):  # through the private Redis, as the web server would
        with Celery(broker=url, set_as_current=False) as client:
            client.send_task("jobs.tasks.run_job", args=[job_id], queue=faults.queue)

    dataset = make_ready_dataset(alice, **SLOW_DATA)
    job = Job.objects.create(owner=alice, dataset=dataset, config={**TINY_CONFIG, **SLOW_CONFIG}, queue=faults.queue)
    with private_redis(port, tmp_path) as redis:
        faults.start_worker("redis-client", env=env)
        send(job.pk)
        faults.wait_for(lambda: MetricPoint.objects.filter(job=job, kind="epoch").exists(), timeout=WAIT_S,
                        what="the first epoch")
        stop_process(redis, timeout=5)
    time.sleep(1)
    with private_redis(port, tmp_path):
        job = faults.wait_for(lambda: (j := job_state(job.pk)).is_finished and j, timeout=WAIT_S,
                              what="the job to finish after Redis came back")
        assert job.status == Job.Status.SUCCEEDED, job.error
        assert_one_clean_curve(job, epochs=SLOW_CONFIG["epochs"])
        assert job.attempts == 1 and TrainedModel.objects.filter(job=job).count() == 1
        # A page that reconnects through a web server on the restarted Redis gets the whole curve.
        server = faults.start_server("server", env=env)
        with server.websocket(f"/ws/jobs/{job.pk}/", user=alice) as ws:
            history = server.receive_json(ws)
        assert history["type"] == "history" and history["job"]["status"] == "succeeded"
        assert [p["epoch"] for p in history["points"] if p["kind"] == "epoch"] == list(range(1, SLOW_CONFIG["epochs"] + 1))
        # The worker reconnected, and live events flow again from it to a websocket client: a new
        # job sent through the restarted Redis streams its progress and its success.
        second = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, queue=faults.queue)
        with server.websocket(f"/ws/jobs/{second.pk}/", user=alice) as ws:
            messages = [server.receive_json(ws)]
            send(second.pk)
            while messages[-1]["job"]["status"] not in ("succeeded", "failed", "cancelled"):
                messages.append(server.receive_json(ws, timeout=WAIT_S))
        assert messages[-1]["job"]["status"] == "succeeded"
        assert [m["point"]["epoch"] for m in messages if m["type"] == "progress" and m["point"]
                and m["point"]["kind"] == "epoch"] == list(range(1, TINY_CONFIG["epochs"] + 1))
