"""In-browser inference in a real browser: the model page runs the model's ONNX export with
onnxruntime-web (WASM, served by our own server) and shows it beside the server's answer.

Models are trained here on generated data and registered the real way (model_register exports
and parity-checks the ONNX file). Files already at the model's input size (images of H×W pixels,
16 kHz mono WAVs) reach the graph with the same numbers on both sides, so the probabilities must
agree to float rounding; files the browser must resample (another size, another rate) must still
get the same top-1. No request may leave 127.0.0.1: the runtime and its .wasm are ours.
"""

import io
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from playwright.sync_api import expect

from jobs.models import Job
from ml.audio import decode_audio, fit_length
from ml.data import AudioData, ImageData
from ml.images import decode_image
from ml.synthetic import SHAPES, render_shapes
from tests.audio_fixtures import CLASSES, class_clip, clip_arrays, tone
from tests.e2e.test_speech_mic import FAKE_MIC_ARGS, fake_capture_file, launch, log_in, shot  # noqa: F401 - fixture
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_register

pytestmark = pytest.mark.e2e

SIZE = 16  # image models' input: 16×16 (seconds to train and export on a CPU)
EXACT = 1e-3  # |browser - server| per probability for inputs that need no resampling


def _train(config: dict, data, modality: str):
    from ml import TrainConfig, train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig.from_dict(config, modality=modality), data, device="cpu")
    finally:
        torch.set_num_threads(before)


def shapes_data(mode: str, per_class: int = 60) -> ImageData:
    images, labels = [], []
    for kind, _, image in render_shapes(per_class=per_class, size=SIZE, seed=3, mode=mode):
        array = np.asarray(image, dtype=np.uint8)
        images.append(array[:, :, None] if array.ndim == 2 else array)
        labels.append(SHAPES.index(kind))
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    cut = len(x) * 4 // 5
    return ImageData(x[:cut], y[:cut], x[cut:], y[cut:], list(SHAPES))


@pytest.fixture(scope="module")
def trained():
    """(result, data) per model: resnet in colour and in grayscale, crnn on three tone classes."""
    colour, gray = shapes_data("RGB"), shapes_data("L")
    x, y = clip_arrays(120, seed=0)
    speech = AudioData(x_train=x[:96], y_train=y[:96], x_val=x[96:], y_val=y[96:], classes=list(CLASSES))
    image_config = {"arch": "resnet", "epochs": 10, "batch_size": 16, "seed": 0}  # ~50 % validation accuracy
    return {
        "colour": (_train(image_config, colour, "image"), colour),
        "gray": (_train(image_config, gray, "image"), gray),
        "speech": (_train({"arch": "crnn", "epochs": 6, "batch_size": 8, "seed": 0}, speech, "audio"), speech),
    }


def register(owner, kind: str, trained) -> TrainedModel:
    result, data = trained[kind]
    modality = Dataset.Kind.AUDIO if kind == "speech" else Dataset.Kind.IMAGE
    dataset = Dataset.objects.create(owner=owner, name=f"Generated {kind}", kind=modality, status=Dataset.Status.READY,
                                     classes=[{"name": c, "train": 1, "val": 1} for c in data.classes])
    job = Job.objects.create(owner=owner, dataset=dataset, status=Job.Status.SUCCEEDED, config=result.config.to_dict())
    model = model_register(job=job, result=result, data=data)
    assert model.exports["onnx"]["ok"], model.exports
    return model


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav(wave: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def watch_requests(page) -> list[str]:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def assert_all_local(urls: list[str]) -> None:
    remote = [u for u in urls if urlparse(u).scheme not in ("blob", "data") and urlparse(u).hostname != "127.0.0.1"]
    assert not remote, f"requests left the machine: {remote}"


def answers(page, name: str) -> dict:
    """Both answers (browser, then server) for the file called `name`, once the page has them."""
    page.wait_for_function("name => { const s = window.perceptorBrowser; "
                           "return s.state !== 'running' && s.last && s.last.file === name; }",
                           arg=name, timeout=120_000)
    return page.evaluate("() => window.perceptorBrowser.last")


def classify(page, path) -> dict:
    """Choose `path` in the section's file input and wait for both answers."""
    page.locator("#browser-file").set_input_files(str(path))
    return answers(page, path.name)


def model_input(page) -> np.ndarray:
    return np.asarray(page.evaluate("() => window.perceptorBrowser.input()"))


def server_pixels(path, model) -> np.ndarray:
    """What the server feeds the graph for an image file: decode_image's H×W×C as C×H×W."""
    spec = model.input_spec
    array = decode_image(path.read_bytes(), size=(spec["height"], spec["width"]), channels=spec["channels"])
    return array.transpose(2, 0, 1).ravel()


def server_wave(path, model) -> np.ndarray:
    wave, _ = fit_length(decode_audio(path.read_bytes()), model.input_spec["clip_samples"])
    return wave


def assert_agree(last: dict, *, exact: bool) -> None:
    browser, server = last["browser"], last["server"]
    assert browser and server.get("predictions"), last
    assert [p["label"] for p in browser["predictions"]][0] == server["predictions"][0]["label"], last
    assert last["agreement"]["top1"] is True
    if exact:
        assert last["agreement"]["maxDiff"] < EXACT, last
        assert [p["label"] for p in browser["predictions"]] == [p["label"] for p in server["predictions"]], last
    assert browser["medianMs"] > 0 and len(browser["runsMs"]) == 5


def open_model(page, live, model) -> None:
    log_in(page, live)
    page.goto(f"/models/{model.pk}/")
    section = page.locator("#browser-predict")
    expect(section.get_by_role("heading", name="Run in your browser")).to_be_visible()


def test_an_image_model_answers_the_same_in_the_browser_as_on_the_server(live, launch, alice, trained, tmp_path):
    colour = register(alice, "colour", trained)
    page = launch()
    urls = watch_requests(page)
    open_model(page, live, colour)

    samples = [image for _, _, image in render_shapes(per_class=1, size=SIZE, seed=42)]
    for i, image in enumerate(samples[:3]):  # already 16×16: the same pixels on both sides
        path = tmp_path / f"shape-{i}.png"
        path.write_bytes(png(image))
        last = classify(page, path)
        assert_agree(last, exact=True)
        assert np.array_equal(model_input(page), server_pixels(path, colour))  # the very same pixels
    expect(page.locator("#browser-status")).to_contain_text("Model loaded in")
    expect(page.locator("#browser-status")).to_contain_text("in a background worker")
    # The runtime runs in onnxruntime-web's proxy worker (a Worker started from ort.wasm.min.js),
    # not on the page's thread.
    assert [w.url for w in page.workers if "/vendor/onnxruntime-web/ort.wasm" in w.url], [w.url for w in page.workers]
    state = page.evaluate("() => ({loadMs: window.perceptorBrowser.loadMs, bytes: window.perceptorBrowser.modelBytes})")
    assert state["bytes"] == colour.exports["onnx"]["bytes"] and state["loadMs"] > 0
    expect(page.locator("#browser-list li")).to_have_count(5)
    expect(page.locator("#server-list li")).to_have_count(5)
    expect(page.locator("#browser-latency")).to_contain_text("median of 5 runs")
    expect(page.locator("#server-latency")).to_contain_text("Round trip")
    expect(page.locator("#browser-agreement")).to_contain_text("Both pick")
    shot(page, "browser-01-image")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the two answers stack
    page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.set_viewport_size({"width": 1280, "height": 900})

    # A bigger image with transparency: squashed by the browser's smoothing, not Pillow's.
    big = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    big.paste(samples[3].resize((64, 48), Image.Resampling.NEAREST), (0, 0))
    big.putalpha(Image.new("L", (64, 48), 255))
    (tmp_path / "big.png").write_bytes(png(big))
    assert_agree(classify(page, tmp_path / "big.png"), exact=False)
    difference = np.abs(model_input(page) - server_pixels(tmp_path / "big.png", colour))
    assert difference.mean() < 4 and difference.max() < 64, (difference.mean(), difference.max())

    assert page.problems == []

    # Not an image: both sides say so, next to the file's name.
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    last = classify(page, tmp_path / "notes.png")
    assert last["browser"] is None and "not an image" in last["server"]["error"]
    expect(page.locator("#browser-error")).to_contain_text("notes.png: not an image")
    expect(page.locator("#server-error")).to_contain_text("notes.png")
    expect(page.locator("#browser-camera-row")).to_be_hidden()  # no camera in this browser
    assert page.problems == ["console: Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    assert_all_local(urls)
    assert any("/static/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm" in u for u in urls)


def test_a_grayscale_model_converts_colour_like_pillow_and_takes_camera_snapshots(live, launch, alice, trained, tmp_path):
    gray = register(alice, "gray", trained)
    page = launch(FAKE_MIC_ARGS)  # Chromium's fake camera: a test pattern, 640×480
    urls = watch_requests(page)
    open_model(page, live, gray)
    images = [image for _, _, image in render_shapes(per_class=1, size=SIZE, seed=7)]

    # The model file does not arrive the first time: the page says so, the server still answers,
    # and the next file tries again.
    page.route("**/download/?file=model.onnx", lambda route: route.fulfill(status=404, body="gone"), times=1)
    (tmp_path / "first.png").write_bytes(png(images[4]))
    last = classify(page, tmp_path / "first.png")
    assert last["browser"] is None and last["server"]["predictions"], last
    expect(page.locator("#browser-error")).to_have_text(
        "The model could not be loaded in this browser: the model file could not be downloaded (HTTP 404)")
    page.problems[:] = [p for p in page.problems if "404 (Not Found)" not in p]  # that refusal itself

    for i, image in enumerate(images[:3]):  # colour files
        path = tmp_path / f"colour-{i}.png"
        path.write_bytes(png(image))
        assert_agree(classify(page, path), exact=True)
        assert np.array_equal(model_input(page), server_pixels(path, gray))  # Pillow's luma, to the unit
    expect(page.locator("#browser-error")).to_be_hidden()

    page.get_by_role("button", name="Use the camera").click()
    page.get_by_role("button", name="Take a snapshot").click()
    last = answers(page, "snapshot.png")
    assert last["browser"]["predictions"] and last["server"]["predictions"], last
    expect(page.locator("#browser-source")).to_contain_text("Camera snapshot (640 × 480)")
    page.get_by_role("button", name="Stop the camera").click()
    expect(page.locator("#browser-video")).to_be_hidden()
    assert page.problems == []
    assert_all_local(urls)


def test_a_speech_model_answers_the_same_in_the_browser_for_files_and_the_microphone(live, launch, alice, trained,
                                                                                    tmp_path):
    speech = register(alice, "speech", trained)
    capture = fake_capture_file(tmp_path / "fake-mic.wav")
    page = launch([*FAKE_MIC_ARGS, f"--use-file-for-fake-audio-capture={capture}"])
    urls = watch_requests(page)
    open_model(page, live, speech)

    rng = np.random.default_rng(11)
    exact_files = {
        "clip.wav": class_clip("high", rng),  # exactly 1 s at 16 kHz: the model's clip
        "short.wav": tone(350, 0.4) * 0.8,  # padded, centred
        "long.wav": np.concatenate([np.zeros(9000, np.float32), class_clip("sweep", rng),  # trimmed
                                    np.zeros(5000, np.float32)]),
    }
    fits = []
    for name, wave in exact_files.items():
        (tmp_path / name).write_bytes(wav(wave))
        last = classify(page, tmp_path / name)
        assert_agree(last, exact=True)
        # The same window of the same samples: Chromium scales positive 16-bit samples by 1/32767,
        # libsndfile all by 1/32768, so they may differ by under one step of 16-bit audio.
        assert np.allclose(model_input(page), server_wave(tmp_path / name, speech), rtol=0, atol=1 / 32768)
        fits.append(last["browser"]["fit"])
    assert fits == ["", "padded", "trimmed"]

    # 44.1 kHz stereo: the browser's resampler, not torchaudio's; the same answer all the same.
    low = tone(300, 0.7, 44_100)
    (tmp_path / "stereo.wav").write_bytes(wav(np.stack([low, low * 0.5], axis=1), 44_100))
    assert_agree(classify(page, tmp_path / "stereo.wav"), exact=False)

    # The microphone: the recorder's 16 kHz WAV goes to both, so they hear the same samples.
    recorder = page.locator("#browser-recorder")
    expect(recorder).to_be_visible()
    recorder.get_by_role("button", name="Record").click()
    page.wait_for_function("() => window.perceptorRecorders['browser-recorder'].state === 'recording'")
    last = answers(page, "recording.wav")  # it stops by itself after 3 s
    assert_agree(last, exact=True)
    assert last["browser"]["predictions"][0]["label"] == "high"
    expect(page.locator("#browser-source")).to_contain_text("Your recording")
    expect(page.locator("#browser-latency")).to_contain_text("it heard the loudest part")
    assert page.evaluate("window.perceptorRecorder.recordings") == 0  # the predict form's recorder was not used
    shot(page, "browser-02-speech")
    assert page.problems == []
    assert_all_local(urls)


@pytest.mark.django_db
@pytest.mark.parametrize(("exports", "says"), [
    ({"onnx": {"ok": False, "reason": "ONNX answered differently from PyTorch on 2 of 32 samples."}},
     "Not available for this model: ONNX answered differently from PyTorch on 2 of 32 samples."),
    ({"error": "RuntimeError: out of memory"}, "its exports could not be made (RuntimeError: out of memory)"),
    ({}, "it has no ONNX export"),
])
def test_the_page_says_why_a_model_cannot_run_in_the_browser(alice, alice_client, exports, says):
    model = TrainedModel.objects.create(owner=alice, name="Shades · resnet", arch="resnet", classes=["a", "b"],
                                        input_spec={"height": 8, "width": 8, "channels": 3}, exports=exports)
    response = alice_client.get(f"/models/{model.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="browser-unavailable"' in html and says in html
    assert "ort.wasm.min.js" not in html and 'id="browser-form"' not in html
