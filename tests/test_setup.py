"""The setup around the code: the Makefile, the runner script, the service checks, docker compose."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_makefile_knows_every_documented_target():
    result = subprocess.run(["make", "-n", "run", "test", "test-postgres", "bench", "clean"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "scripts/serve" in result.stdout
    assert "-p scripts.pytest_db_only --db-only" in result.stdout


def test_check_redis_says_how_to_start_redis_when_it_is_not_reachable():
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}
    result = subprocess.run([ROOT / "scripts" / "check-redis"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Redis is not reachable at redis://127.0.0.1:" in result.stderr
    assert "redis-server --daemonize yes" in result.stderr
    assert "docker compose up -d redis" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_postgres_says_how_to_start_it_when_it_is_not_reachable():
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{_free_port()}/perceptor"}
    result = subprocess.run([ROOT / "scripts" / "check-postgres"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "PostgreSQL is not reachable at postgres://postgres@127.0.0.1:" in result.stderr
    assert "pg_ctlcluster" in result.stderr


@pytest.mark.skipif(_compose_command() is None, reason="neither docker-compose nor docker compose is installed")
def test_docker_compose_accepts_the_compose_file():
    env = {**os.environ, "SECRET_KEY": "test-only"}
    result = subprocess.run([*_compose_command(), "config", "--quiet"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(_compose_command() is None, reason="neither docker-compose nor docker compose is installed")
def test_docker_compose_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run([*_compose_command(), "config", "--quiet"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Set SECRET_KEY in .env" in result.stderr


class _Lines:
    """A child's output, read by a thread so that waiting for a line can time out."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._new:
            return self._new.wait_for(lambda: any(text in line for line in self.lines), timeout=timeout)

    def __str__(self) -> str:
        return "".join(self.lines)


@pytest.mark.integration
def test_serve_starts_the_web_server_and_a_worker_and_ctrl_c_stops_both(tmp_path):
    """`make run`'s last step. Ctrl-C (SIGINT to the script) must leave no process behind."""
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "PERCEPTOR_VAR_DIR": str(tmp_path),  # an empty database: the login line says what failed
        "CELERY_QUEUE": f"test-serve-{port}",  # steal no one's jobs
        "CHANNEL_PREFIX": f"test-serve-{port}",
    }
    env.pop("DATABASE_URL", None)
    # Ctrl-C as in a terminal: a test run started in the background (`make test &`) has SIGINT
    # ignored, bash cannot trap a signal ignored at its start, and the script would never stop.
    serve = subprocess.Popen([ROOT / "scripts" / "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = _Lines(serve.stdout)
    pids: list[int] = []
    try:
        assert output.wait_for(f"==> Perceptor is running at http://127.0.0.1:{port}/", timeout=120), str(output)
        assert output.wait_for(" ready.", timeout=60), str(output)  # the worker, so its shutdown is tested too
        pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(serve.pid)], capture_output=True,
                                               text=True).stdout.split()]
        assert len(pids) == 2, str(output)  # daphne and celery

        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:  # say what the script was doing, not only that it hung
            pytest.fail(f"scripts/serve still running 60 s after Ctrl-C; its output:\n{output}")
    finally:
        if serve.poll() is None:  # the test failed: leave nothing running all the same
            for pid in [*pids, serve.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert serve.returncode == 0, str(output)
    assert output.wait_for("==> Stopped.", timeout=5), str(output)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the script"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
