"""Integration fixtures: a real Celery worker process and a real Daphne server, on the test database.

    @pytest.mark.integration
    def test_something(live, alice):            # `live` = live_stack + transactional_db + settings
        job = job_create(...)                    # committed, queued on the stack's own queue
        with live.websocket(f"/ws/jobs/{job.pk}/", user=alice) as ws: ...
        live.wait_for(lambda: ..., timeout=30, what="the job to finish")

The children share the pytest-django test database (for SQLite the file in
settings.DATABASES["default"]["TEST"]["NAME"], for PostgreSQL the test_* database), a temporary
MEDIA_ROOT, and their own Celery queue and channel-layer prefix, so a developer's running worker can
never steal a task and a developer's pages never see test events. Data must be committed to be
seen by them, hence transactional_db. A failing test gets the tails of both logs in its report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 90  # torch-free startup, but 2 cores shared with other engineers' test runs
LOG_TAIL_LINES = 80


@dataclass
class LiveStack:
    url: str  # http://127.0.0.1:<port>, served by Daphne (HTTP and websockets)
    media_root: Path
    queue: str
    channel_prefix: str
    worker_name: str
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    channel_layers: dict = field(default_factory=dict)  # the project's Redis layer, our prefix

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    # --- Logging in --------------------------------------------------------------------------
    def session_cookie(self, user) -> str:
        """A session id the server accepts for `user` (the session row is committed)."""
        from django.conf import settings
        from django.test import Client

        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    def headers(self, user=None) -> dict[str, str]:
        from django.conf import settings

        headers = {"Origin": self.url}  # AllowedHostsOriginValidator refuses websockets without one
        if user is not None:
            headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={self.session_cookie(user)}"
        return headers

    # --- Talking to the server ---------------------------------------------------------------
    def get(self, path: str, user=None, timeout: float = 30) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=self.headers(user))
        try:
            with _no_proxy_opener().open(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    @contextlib.contextmanager
    def websocket(self, path: str, user=None, open_timeout: float = 20):
        """A connected websocket client (websockets' sync client: no event loop in the test)."""
        from websockets.sync.client import connect

        headers = self.headers(user)
        with connect(
            self.ws_url + path,
            origin=headers.pop("Origin"),
            additional_headers=headers,
            open_timeout=open_timeout,
            proxy=None,
        ) as ws:
            yield ws

    @staticmethod
    def receive_json(ws, timeout: float = 30) -> dict:
        return json.loads(ws.recv(timeout=timeout))

    # --- The worker ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def paused_worker(self):
        """Stop the worker taking tasks from the queue (they wait, as with no worker at all), then
        resume: lets a test watch a job's whole life without racing the worker."""
        from webapp.celery import app

        _control_reply(app.control.cancel_consumer(self.queue, destination=[self.worker_name], reply=True, timeout=10))
        try:
            yield
        finally:
            _control_reply(app.control.add_consumer(self.queue, destination=[self.worker_name], reply=True, timeout=10))

    def follow_job(self, start, *, user, timeout: float = 180) -> list[dict]:
        """Every websocket message of a job's life, from its history to its end: `start()` creates
        the job and returns its id while the worker is held, so the websocket listens before the
        worker takes it and no event of the run is missed."""
        with contextlib.ExitStack() as stack:
            with self.paused_worker():
                job_id = start()
                ws = stack.enter_context(self.websocket(f"/ws/jobs/{job_id}/", user=user))
            messages = [self.receive_json(ws)]
            while messages[-1]["job"]["status"] not in ("succeeded", "failed", "cancelled"):
                messages.append(self.receive_json(ws, timeout=timeout))
        return messages

    def wait_for(self, predicate, *, timeout: float, what: str, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.check_alive()
            time.sleep(interval)
        raise AssertionError(f"Timed out after {timeout} s waiting for {what}.\n{self.log_tails()}")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"The {name} exited with code {process.returncode}.\n{self.log_tails()}")

    def log_tails(self) -> str:
        parts = []
        for name, path in self.logs.items():
            try:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except OSError as exc:
                lines = [f"(cannot read {path}: {exc})"]
            parts.append(f"----- {name} log ({path}) -----\n" + "\n".join(lines))
        return "\n".join(parts)


def _control_reply(replies) -> None:
    if not replies or not any("ok" in r for reply in replies for r in reply.values()):
        raise AssertionError(f"The test worker did not acknowledge a control command: {replies!r}")


def _no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    """The URL of the test database that pytest-django has set up (children must use the same)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError("live_stack needs a file-based SQLite test database (see webapp/settings.py)")
        return f"sqlite:///{Path(name).resolve()}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = db.get("HOST") or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}@{host}{port}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"live_stack does not know how to share a {db['ENGINE']} database")


def _redis_channel_layers(prefix: str) -> dict:
    """settings.CHANNEL_LAYERS (read before any test overrides it) with the stack's own prefix."""
    from django.conf import settings

    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    if layers["default"]["BACKEND"] != "channels_redis.core.RedisChannelLayer":
        raise RuntimeError("Integration tests need the Redis channel layer: unset CHANNEL_LAYER=memory")
    layers["default"]["CONFIG"]["prefix"] = prefix
    return layers


def worker_command(*, queue: str, name: str) -> list[str]:
    """One Celery worker, one job at a time, on its own queue, without chatter to other workers."""
    return [str(VENV_BIN / "celery"), "-A", "webapp", "worker", "-P", "solo", "-c", "1", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-Q", queue, "-n", name, "--loglevel", "INFO"]


def server_command(*, port: int) -> list[str]:
    return [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"]


def child_env(*, database_url: str, media_root: Path, queue: str, channel_prefix: str) -> dict[str, str]:
    """The environment of a worker or server that shares this process's database and files."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "DATABASE_URL": database_url,
        "MEDIA_ROOT": str(media_root),
        "CELERY_QUEUE": queue,
        "CHANNEL_PREFIX": channel_prefix,
        "CHANNEL_LAYER": "redis",
        "CELERY_TASK_ALWAYS_EAGER": "False",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    }


def start_process(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    try:
        # A new session: teardown signals the child and everything it started, nothing else.
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        handle.close()  # the child has its own descriptor


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:  # a worker in the middle of training waits for it: don't
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def wait_until_ready(stack: LiveStack) -> None:
    from webapp.celery import app

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    worker_ready = server_ready = False
    while time.monotonic() < deadline and not (worker_ready and server_ready):
        stack.check_alive()
        if not server_ready:
            try:
                with _no_proxy_opener().open(stack.url + "/login/", timeout=2) as response:
                    server_ready = response.status == 200
            except (OSError, urllib.error.URLError):
                pass
        if not worker_ready:
            worker_ready = bool(app.control.ping(destination=[stack.worker_name], timeout=0.5))
        time.sleep(0.2)
    if not (worker_ready and server_ready):
        raise RuntimeError(
            f"The live stack did not start in {STARTUP_TIMEOUT_S} s "
            f"(worker ready: {worker_ready}, server ready: {server_ready}).\n{stack.log_tails()}"
        )


@contextlib.contextmanager
def running_stack(*, database_url: str, base: Path):
    """Start a worker and a server on `database_url` with files under `base`; stop both after."""
    token = uuid.uuid4().hex[:10]
    media_root = base / "media"
    media_root.mkdir(exist_ok=True)
    port = free_port()
    stack = LiveStack(
        url=f"http://127.0.0.1:{port}",
        media_root=media_root,
        queue=f"perceptor-test-{token}",
        channel_prefix=f"perceptor-test-{token}",
        worker_name=f"perceptor-test-{token}@{socket.gethostname()}",
        logs={"worker": base / "worker.log", "server": base / "daphne.log"},
        channel_layers=_redis_channel_layers(f"perceptor-test-{token}"),
    )
    env = child_env(database_url=database_url, media_root=media_root, queue=stack.queue,
                    channel_prefix=stack.channel_prefix)
    try:
        stack.processes["worker"] = start_process(
            worker_command(queue=stack.queue, name=stack.worker_name), env, stack.logs["worker"]
        )
        stack.processes["server"] = start_process(server_command(port=port), env, stack.logs["server"])
        wait_until_ready(stack)
        yield stack
    finally:
        for process in stack.processes.values():
            stop_process(process)


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """Daphne + one Celery worker (solo pool) for the whole session, started on first use."""
    with django_db_blocker.unblock():
        database_url = _database_url()
    with running_stack(database_url=database_url, base=tmp_path_factory.mktemp("live")) as stack:
        yield stack


@pytest.fixture
def live(live_stack, transactional_db, settings):
    """The live stack, with this test process configured exactly like its children."""
    from webapp.celery import app

    settings.MEDIA_ROOT = live_stack.media_root  # after conftest's autouse per-test MEDIA_ROOT
    settings.CELERY_TASK_DEFAULT_QUEUE = live_stack.queue
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CHANNEL_LAYERS = live_stack.channel_layers
    # Celery read its settings once; the app's own config is what .delay() uses.
    saved = {"task_default_queue": app.conf.task_default_queue, "task_always_eager": app.conf.task_always_eager}
    app.conf.task_default_queue = live_stack.queue
    app.conf.task_always_eager = False
    try:
        yield live_stack
    finally:
        for key, value in saved.items():
            setattr(app.conf, key, value)


@pytest.fixture
def live_server_url(live) -> str:
    return live.url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    stack = getattr(item, "funcargs", {}).get("live_stack") or getattr(item, "funcargs", {}).get("live")
    if report.failed and isinstance(stack, LiveStack):
        report.sections.append(("live stack logs", stack.log_tails()))
    return report
