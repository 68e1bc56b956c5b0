"""Server prediction under load: latency p50/p99 and throughput of POST /api/models/{id}/predict/
with many concurrent clients, for the default image model (resnet) and speech model (crnn).

Each client is a thread with its own keep-alive HTTP connection (http.client), sending the same
file again and again for --seconds; the first requests of each model (not counted) load it into
the server's predictor cache, so the figures are of cached models, as in steady use. Latency is
request sent to response read, at the client; throughput is answered requests per second of wall
time. Any answer but 200 is counted as an error and left out of the latencies.

    .venv/bin/python bench/serve_load.py                       # own server and models, 32 clients, 20 s each
    .venv/bin/python bench/serve_load.py --clients 32 --seconds 60 --image-size 64
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --token KEY --model 3 --model 7

Without --url it needs nothing running: a throwaway SQLite database and media folder, one Daphne
started like the tests' live stack (tests/live.py; no worker, and an in-memory channel layer:
predictions are plain HTTP), and two models trained here for one epoch on generated data: resnet
on shapes at --image-size pixels (ml.synthetic) and crnn on 1 s clips of tones and chirps at 16 kHz
(tests/audio_fixtures). They are barely trained; the network's size, not its accuracy, sets the
cost of a prediction. The server predicts on its CPU (the predictor never uses a GPU), each request
in its own thread (Django's ASGI handler), so concurrent requests share the cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WARMUP_REQUESTS = 5  # per model, one client: loads it into the server's cache


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (threads)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per model, after the warm-up")
    parser.add_argument("--url", help="a running Perceptor (with --token and --model); default: start our own")
    parser.add_argument("--token", help="API token of a user who may use the models (--url only)")
    parser.add_argument("--model", type=int, action="append", default=[], help="model id (--url only; repeat)")
    parser.add_argument("--image-size", type=int, default=64, help="own image model's input side (the upload default)")
    parser.add_argument("--server-threads", type=int, help="own server: OMP_NUM_THREADS (torch's threads per "
                        "prediction); default: torch's own choice, one per core")
    args = parser.parse_args()
    if args.url and not (args.token and args.model):
        parser.error("--url needs --token and at least one --model")
    return args


# --- Load ------------------------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float]  # seconds, answered requests only
    errors: dict[str, int]
    wall_s: float

    def line(self, label: str) -> str:
        ms = np.asarray(self.latencies) * 1000
        p50, p99 = (np.percentile(ms, [50, 99]) if len(ms) else (float("nan"), float("nan")))
        errors = sum(self.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.errors.items()))})" if errors else ""
        return (f"{label:<34} {len(ms):>7} {len(ms) / self.wall_s:>8.1f} {p50:>8.1f} {p99:>8.1f} "
                f"{ms.mean() if len(ms) else float('nan'):>8.1f} {errors:>6}{detail}")


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(url: str, token: str, model_id: int, filename: str, data: bytes, *, clients: int, seconds: float) -> Result:
    """`clients` threads posting the file until `seconds` have passed; each finishes its last request."""
    parts = urlsplit(url)
    path = f"/api/models/{model_id}/predict/"
    body, content_type = multipart(filename, data)
    headers = {"Authorization": f"Token {token}", "Accept": "application/json", "Content-Type": content_type}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def post(conn: http.client.HTTPConnection) -> None:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        with lock:
            if response.status == 200:
                latencies.append(elapsed)
            else:
                errors[f"HTTP {response.status}"] = errors.get(f"HTTP {response.status}", 0) + 1

    def client(stop_at: float) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
        try:
            while time.monotonic() < stop_at:
                try:
                    post(conn)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
        finally:
            conn.close()

    warm = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=300)
    for _ in range(WARMUP_REQUESTS):
        post(warm)
    warm.close()
    if errors:
        raise SystemExit(f"Model {model_id} does not answer 200 at {url}{path}: {errors}")
    latencies.clear()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(started + seconds,), daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Result(latencies, errors, time.monotonic() - started)


# --- Inputs ------------------------------------------------------------------------------------------


def sample_file(spec: dict) -> tuple[str, bytes]:
    """A file the model takes, of realistic decoding cost: a photo-like PNG at its input size, or a
    one-second recording at 16 kHz."""
    rng = np.random.default_rng(0)
    if spec.get("kind") == "audio":
        from tests.audio_fixtures import class_clip, wav_bytes

        return "clip.wav", wav_bytes(class_clip("sweep", rng, int(spec["sample_rate"])), int(spec["sample_rate"]))
    from ml.synthetic import image_bytes

    shape = (int(spec["height"]), int(spec["width"]), int(spec["channels"]))
    smooth = np.cumsum(rng.integers(-8, 9, shape), axis=1) + 128  # not flat noise: compresses like a picture
    return "image.png", image_bytes(np.clip(smooth, 0, 255).astype(np.uint8))


# --- Our own server and models ---------------------------------------------------------------------


def train_models(owner, image_size: int) -> list:
    """The default image and speech architectures (ml.DEFAULT_ARCH), one epoch on generated data,
    stored like registered models (row + model.safetensors + model.json)."""
    from ml import DEFAULT_ARCH, ImageData, TrainConfig, save_model, train
    from ml.data import AudioData
    from ml.synthetic import render_shapes
    from tests.audio_fixtures import CLASSES, clip_arrays
    from webapp.registry.models import TrainedModel
    from webapp.registry.services import model_directory

    shapes = list(render_shapes(per_class=40, size=image_size))
    x = np.stack([np.asarray(image) for _, _, image in shapes])
    names = sorted({label for label, _, _ in shapes})
    y = np.array([names.index(label) for label, _, _ in shapes], dtype=np.int64)
    images = ImageData(x_train=x[:160], y_train=y[:160], x_val=x[160:], y_val=y[160:], classes=names)
    waves, labels = clip_arrays(60, seed=0)
    speech = AudioData(x_train=waves[:48], y_train=labels[:48], x_val=waves[48:], y_val=labels[48:],
                       classes=list(CLASSES))
    models = []
    for modality, data in (("image", images), ("audio", speech)):
        arch = DEFAULT_ARCH[modality]
        started = time.monotonic()
        config = TrainConfig.from_dict({"arch": arch, "epochs": 1, "batch_size": 16}, modality=modality)
        result = train(config, data, device="cpu")
        model = TrainedModel.objects.create(owner=owner, name=f"load test · {arch}", arch=arch,
                                            classes=list(result.classes), input_spec=dict(result.input_spec))
        save_model(result, model_directory(model))
        print(f"  trained {arch} ({modality}) in {time.monotonic() - started:.1f} s")
        models.append(model)
    return models


def own_server(base: Path, threads: int | None):
    """Daphne on a free port with this process's database and media folder (tests/live.py's way)."""
    from tests.live import child_env, free_port, server_command, start_process

    port = free_port()
    env = {**child_env(database_url=os.environ["DATABASE_URL"], media_root=Path(os.environ["MEDIA_ROOT"]),
                       queue="serve-load", channel_prefix="serve-load"), "CHANNEL_LAYER": "memory", "LOG_LEVEL": "WARNING"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    process = start_process(server_command(port=port), env, base / "daphne.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Daphne exited:\n{(base / 'daphne.log').read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/login/")
            if conn.getresponse().status == 200:
                return process, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("Daphne did not start in 90 s")


# --- Main ------------------------------------------------------------------------------------------


def describe(url: str, token: str, model_id: int) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    conn.request("GET", f"/api/models/{model_id}/", headers={"Authorization": f"Token {token}"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"GET /api/models/{model_id}/ answered {response.status}")
    return json.loads(response.read())


def run(args: argparse.Namespace, url: str, token: str, model_ids: list[int]) -> None:
    print(f"\n{args.clients} clients, {args.seconds:g} s per model, against {url}")
    print(f"{'model':<34} {'answers':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'errors':>6}")
    for model_id in model_ids:
        model = describe(url, token, model_id)
        filename, data = sample_file(model["input_spec"])
        result = load(url, token, model_id, filename, data, clients=args.clients, seconds=args.seconds)
        spec = model["input_spec"]
        size = (f"{spec['clip_samples'] / spec['sample_rate']:g} s audio" if spec.get("kind") == "audio"
                else f"{spec['height']}x{spec['width']}x{spec['channels']}")
        print(result.line(f"{model['arch']} ({size}, {len(data) // 1024} KiB)"), flush=True)


def main() -> None:
    args = parse_args()
    import torch

    print(f"Perceptor server load · {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · torch {torch.__version__} · python {platform.python_version()}")
    if args.url:
        run(args, args.url.rstrip("/"), args.token, args.model)
        return
    base = Path(tempfile.mkdtemp(prefix="perceptor-serve-load-"))
    process = None
    try:
        from overhead import setup_django  # bench/overhead.py: a throwaway database and media folder

        setup_django(base, "cpu")
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        from tests.live import stop_process

        user = get_user_model().objects.create_user("load", password=None)
        token = Token.objects.create(user=user).key
        print(f"Training the default models on generated data (image models at {args.image_size} px):")
        models = train_models(user, args.image_size)
        process, url = own_server(base, args.server_threads)
        print(f"Server: Daphne, torch threads {args.server_threads or 'default (one per core)'}")
        run(args, url, token, [m.pk for m in models])
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
