"""In-browser inference latency: the default image and speech models run by onnxruntime-web in
headless Chromium, as the model page runs them ("Run in your browser", static/js/browser_infer.js).

Each model is built with its default architecture (resnet at 32×32 RGB; crnn on 1 s clips at
16 kHz; 10 classes, untrained: latency does not depend on the weights), exported to ONNX exactly
as registration does (ml.export.export_onnx: uint8 `pixels` / float32 `waveform` in, softmax
`probabilities` out), and loaded by a bare page that uses the same runtime files the site serves
(onnxruntime-web's WASM build, one thread: the site is not cross-origin isolated, so browsers give
it no SharedArrayBuffer), in onnxruntime-web's proxy worker as the site runs it (`--in-page`: on the
page's own thread instead, for comparison). Batch 1, `--warmup` runs, then `--runs` timed runs of
session.run(), each with a fresh input tensor (the proxy transfers, and so detaches, its buffer);
Chromium rounds performance.now() to 0.1 ms on such pages. "Page stall" is the longest the page's
own thread went without running a 5 ms timer while the model loaded and ran: what a user feels as
a frozen page. For reference the same files in native
onnxruntime (Python, one thread) are timed the same way.

    .venv/bin/python bench/browser_infer.py               # 50 runs after 10 warm-up runs
    .venv/bin/python bench/browser_infer.py --in-page     # the runtime on the page's thread
    nice -n 5 .venv/bin/python bench/browser_infer.py --runs 200

Needs Debian's Chromium (/usr/bin/chromium, as the browser tests) and node_modules (make node).
Nothing leaves 127.0.0.1: the page and its files are served by this script.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ORT_DIST = REPO / "node_modules" / "onnxruntime-web" / "dist"
# The files the site serves (settings.STATICFILES_NODE_FILES).
ORT_FILES = ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]

PAGE = """<!doctype html><meta charset="utf-8"><title>browser inference bench</title>
<script src="ort.wasm.min.js"></script>
<script>
// Same settings as static/js/browser_infer.js.
ort.env.wasm.wasmPaths = {mjs: "./ort-wasm-simd-threaded.mjs", wasm: "./ort-wasm-simd-threaded.wasm"};
ort.env.wasm.numThreads = 1;
window.bench = async (file, dtype, shape, warmup, runs, proxy) => {
  ort.env.wasm.proxy = proxy;  // read when the first session starts the runtime
  let last = performance.now(), stall = 0;
  const ticker = setInterval(() => { const now = performance.now(); stall = Math.max(stall, now - last); last = now; }, 5);
  const start = performance.now();
  const bytes = new Uint8Array(await (await fetch(file)).arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"], graphOptimizationLevel: "all"});
  const loadMs = performance.now() - start;
  const size = shape.reduce((a, b) => a * b, 1);
  const data = dtype === "uint8" ? Uint8Array.from({length: size}, (_, i) => (i * 37) % 256)
                                 : Float32Array.from({length: size}, (_, i) => 0.5 * Math.sin(i / 7));
  const times = [];
  for (let i = 0; i < warmup + runs; i++) {
    const feeds = {[session.inputNames[0]]: new ort.Tensor(dtype, data.slice(), shape)};
    const t = performance.now();
    await session.run(feeds);
    if (i >= warmup) times.push(performance.now() - t);
  }
  clearInterval(ticker);
  stall = Math.max(stall, performance.now() - last);
  await session.release();
  return {loadMs, times, stallMs: stall, crossOriginIsolated: self.crossOriginIsolated, userAgent: navigator.userAgent};
};
</script>"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    parser.add_argument("--in-page", action="store_true",
                        help="run the runtime on the page's own thread, not in its proxy worker (the site's way)")
    return parser.parse_args()


def build_models(folder: Path) -> list[dict]:
    """The two default models as ONNX files in `folder`, with an input of the right shape."""
    import torch

    from ml.export import export_onnx
    from ml.nets import DEFAULT_ARCH, build_audio_model, build_model

    torch.manual_seed(0)
    image = build_model(DEFAULT_ARCH["image"], num_classes=10, in_channels=3, height=32, width=32,
                        mean=[125.0] * 3, std=[60.0] * 3)
    speech = build_audio_model(DEFAULT_ARCH["audio"], num_classes=10, sample_rate=16_000, clip_samples=16_000,
                               mean=[0.0] * 40, std=[1.0] * 40)
    models = [
        {"name": f"image: {DEFAULT_ARCH['image']} 32×32 RGB", "file": "image.onnx", "model": image,
         "dtype": "uint8", "shape": [1, 3, 32, 32],
         "example": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)},
        {"name": f"speech: {DEFAULT_ARCH['audio']} 1 s at 16 kHz", "file": "speech.onnx", "model": speech,
         "dtype": "float32", "shape": [1, 16_000], "example": torch.rand(2, 16_000) - 0.5},
    ]
    for entry in models:
        start = time.perf_counter()
        export_onnx(entry["model"], folder / entry["file"], entry["example"])
        entry["export_s"] = time.perf_counter() - start
        entry["bytes"] = (folder / entry["file"]).stat().st_size
    return models


class Handler(http.server.SimpleHTTPRequestHandler):
    # A module script is refused unless served as JavaScript; WebAssembly streams only as application/wasm.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args) -> None:
        pass


def native_times(path: Path, entry: dict, warmup: int, runs: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    size = int(np.prod(entry["shape"]))
    if entry["dtype"] == "uint8":
        x = (np.arange(size) * 37 % 256).astype(np.uint8).reshape(entry["shape"])
    else:
        x = (0.5 * np.sin(np.arange(size) / 7)).astype(np.float32).reshape(entry["shape"])
    feeds = {session.get_inputs()[0].name: x}
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, feeds)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    args = parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium (make chromium)")
    missing = [name for name in ORT_FILES if not (ORT_DIST / name).is_file()]
    if missing:
        sys.exit(f"onnxruntime-web files missing from {ORT_DIST}: {', '.join(missing)}; run make node")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="perceptor-browser-bench-") as tmp:
        folder = Path(tmp)
        for name in ORT_FILES:
            shutil.copy(ORT_DIST / name, folder / name)
        (folder / "index.html").write_text(PAGE)
        print("Exporting the default models to ONNX…", file=sys.stderr)
        models = build_models(folder)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page()
                page.goto(url)
                for entry in models:
                    out = page.evaluate("([f, d, s, w, r, p]) => window.bench(f, d, s, w, r, p)",
                                        [entry["file"], entry["dtype"], entry["shape"], args.warmup, args.runs,
                                         not args.in_page])
                    entry.update(load_ms=out["loadMs"], browser=out["times"], stall_ms=out["stallMs"],
                                 agent=out["userAgent"])
                browser.close()
        finally:
            server.shutdown()
        for entry in models:
            entry["native"] = native_times(folder / entry["file"], entry, args.warmup, args.runs)

    agent = models[0]["agent"]
    chrome = next((part for part in agent.split() if part.startswith(("HeadlessChrome/", "Chrome/"))), agent)
    where = "on the page's thread" if args.in_page else "in its proxy worker"
    print(f"In-browser inference, batch 1: {chrome}, onnxruntime-web (WASM, 1 thread, {where}); "
          f"{args.runs} runs after {args.warmup} warm-up; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    header = (f"{'model':<28} {'ONNX MB':>7} {'load ms':>8} {'browser p50':>11} {'p90':>7} "
              f"{'page stall':>10} {'native ORT p50':>14} {'p90':>7}")
    print(header)
    print("-" * len(header))
    for e in models:
        print(f"{e['name']:<28} {e['bytes'] / 1e6:>7.2f} {e['load_ms']:>8.0f} "
              f"{statistics.median(e['browser']):>8.2f} ms {percentile(e['browser'], 90):>7.2f} "
              f"{e['stall_ms']:>7.0f} ms "
              f"{statistics.median(e['native']):>11.2f} ms {percentile(e['native'], 90):>7.2f}")
    print("load ms: fetching the .onnx from 127.0.0.1 and creating the session; the first model's also "
          "includes fetching and compiling the runtime's 14 MB .wasm.")


if __name__ == "__main__":
    main()
