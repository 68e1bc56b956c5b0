"""Recording with the microphone in a real browser: Debian's Chromium (driven by Playwright) with a
fake microphone that plays a generated clip, against the live stack (tests/live.py).

Chromium's fake device (--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=<wav>)
plays the file in a loop at the capture rate; a 16-bit PCM WAV is what it reads, and 48 kHz stereo
is what it delivers without converting. The page records it through Web Audio, makes a 16 kHz WAV,
posts it, and shows the top classes, a player of the recording and the spectrogram the model heard.
The fake device is faithful (no codec, no echo cancelling: the page asks for none), so the
predicted class is asserted, not only that a prediction appears.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from playwright.sync_api import expect

from jobs.models import Job
from tests.audio_fixtures import CLASSES, clip_arrays, tone
from webapp.datasets.models import Dataset
from webapp.registry.services import model_register

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAKE_MIC_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
CAPTURE_RATE = 48_000
SPOKEN = "high"  # what the fake microphone says: a 2.2 kHz tone, the model's "high"


@pytest.fixture(scope="module")
def speech_result():
    """cnn_mel on the three generated classes, trained in this process (seconds on a CPU)."""
    from ml import TrainConfig, train
    from ml.data import AudioData

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = clip_arrays(120, seed=0)
        data = AudioData(x_train=x[:96], y_train=y[:96], x_val=x[96:], y_val=y[96:], classes=list(CLASSES))
        config = TrainConfig.from_dict({"arch": "cnn_mel", "epochs": 8, "batch_size": 8, "augment": True, "seed": 0}, modality="audio")
        return train(config, data, device="cpu")
    finally:
        torch.set_num_threads(before)


def fake_capture_file(path: Path) -> Path:
    """1.5 s that Chromium loops: 0.6 s of the tone over faint noise, 16-bit PCM, 48 kHz stereo."""
    rng = np.random.default_rng(7)
    wave = rng.normal(0, 0.01, int(1.5 * CAPTURE_RATE)).astype(np.float32)  # a quiet room
    sound = tone(2200, 0.6, CAPTURE_RATE)
    ramp = np.minimum(1.0, np.minimum(np.arange(len(sound)), np.arange(len(sound))[::-1]) / (0.02 * CAPTURE_RATE))
    start = int(0.45 * CAPTURE_RATE)
    wave[start:start + len(sound)] += sound * ramp.astype(np.float32)
    sf.write(path, np.stack([wave, wave], axis=1), CAPTURE_RATE, subtype="PCM_16", format="WAV")
    return path


@pytest.fixture
def speech_model(live, alice, speech_result):
    """A registered speech model of alice's, its files in the live stack's MEDIA_ROOT."""
    dataset = Dataset.objects.create(owner=alice, name="Tones", kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY,
                                     classes=[{"name": c, "train": 32, "val": 8} for c in CLASSES])
    job = Job.objects.create(owner=alice, dataset=dataset, status=Job.Status.SUCCEEDED,
                             config={"arch": "cnn_mel", "epochs": 8})
    return model_register(job=job, result=speech_result)


@pytest.fixture
def launch(live, monkeypatch, tmp_path):
    """Opens Chromium pages on the live stack (with extra flags, init scripts); each page fails the
    test on a JavaScript error, a console error or a broken asset."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    opened = []
    with sync_playwright() as playwright:
        def open_page(args=(), init_script: str | None = None):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args], headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
            if init_script:
                context.add_init_script(init_script)
            page = context.new_page()
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"JavaScript error on {page.url}: {error}"))
            page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
            page.on("response", lambda response: response.status >= 400 and response.request.resource_type
                    in ("stylesheet", "script", "image", "font")
                    and problems.append(f"{response.status} for {response.url}"))
            page.problems = problems
            opened.append((browser, context))
            return page

        try:
            yield open_page
        finally:
            from django.db import connections

            connections.close_all()  # see tests/e2e/test_golden_path.py
            for browser, context in opened:
                context.close()
                browser.close()


def log_in(page, live) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Welcome, alice")).to_be_visible()


def shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_a_user_records_a_word_with_the_microphone_and_sees_what_the_model_heard(live, launch, speech_model, tmp_path):
    capture = fake_capture_file(tmp_path / "fake-mic.wav")
    page = launch([*FAKE_MIC_ARGS, f"--use-file-for-fake-audio-capture={capture}"])
    log_in(page, live)

    page.goto(f"/models/{speech_model.pk}/")
    recorder = page.locator("#recorder")
    expect(recorder).to_be_visible()  # shown by recorder.js: without JavaScript only the upload is there
    expect(page.locator("#predict-file")).to_have_attribute("accept", "audio/*,.wav,.flac,.ogg,.oga,.opus,.mp3,.aif,.aiff")
    button = page.get_by_role("button", name="Record")
    shot(page, "speech-01-model")

    button.click()
    page.wait_for_function("() => window.perceptorRecorder.state === 'recording'")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.locator("#record-button")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("() => window.perceptorRecorder.seconds > 0.5")
    expect(page.locator("#record-time")).not_to_have_text("0.0 s")
    shot(page, "speech-02-recording")

    # It stops by itself after 3 s (the model's 1 s window + 2), encodes and posts the recording.
    expect(page.locator("#prediction-list li")).to_have_count(len(CLASSES), timeout=30_000)
    recorder_state = page.evaluate("() => ({...window.perceptorRecorder})")
    assert recorder_state["state"] == "idle" and recorder_state["recordings"] == 1, recorder_state
    assert 2.9 <= recorder_state["seconds"] <= 3.3, recorder_state
    assert recorder_state["inputRate"] in (44_100, 48_000), recorder_state
    assert recorder_state["peak"] > 0.2, "the fake microphone delivered no sound"
    assert recorder_state["method"] in ("audioworklet", "scriptprocessor")
    expect(page.locator("#record-button")).to_have_text("Record")

    labels = page.locator("#prediction-list li").evaluate_all("items => items.map(li => li.dataset.label)")
    probabilities = page.locator("#prediction-list li").evaluate_all(
        "items => items.map(li => parseFloat(li.dataset.probability))")
    assert sorted(labels) == sorted(CLASSES)
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-3
    expect(page.locator("#top-label")).to_have_text(labels[0])
    assert labels[0] == SPOKEN, (labels, probabilities)
    expect(page.locator("#prediction-error")).to_be_hidden()

    # What was heard: a player of the recording itself, and the model's spectrogram of its window.
    player = page.locator("#prediction-audio")
    expect(player).to_be_visible()
    assert player.evaluate("audio => audio.src").startswith("blob:")
    page.wait_for_function("() => document.getElementById('prediction-audio').readyState >= 1")
    assert 2.9 <= player.evaluate("audio => audio.duration") <= 3.3  # the 16 kHz WAV made in the page
    expect(page.locator("#prediction-file")).to_contain_text("Your recording (3.0 s)")
    spectrogram = page.locator("#prediction-spectrogram")
    expect(spectrogram).to_be_visible()
    assert spectrogram.evaluate("img => img.src").startswith("data:image/png;base64,")
    page.wait_for_function("() => document.getElementById('prediction-spectrogram').naturalWidth > 50")
    expect(page.locator("#prediction-note")).to_contain_text("so it heard the loudest part")
    shot(page, "speech-03-predicted")

    # The server read exactly what the page encoded: mono 16-bit PCM at 16 kHz.
    sent = page.evaluate("""async () => {
        const blob = await (await fetch(document.getElementById('prediction-audio').src)).blob();
        const view = new DataView(await blob.arrayBuffer());
        return {riff: view.getUint32(0, false), channels: view.getUint16(22, true),
                rate: view.getUint32(24, true), bits: view.getUint16(34, true), bytes: blob.size};
    }""")
    assert sent["riff"] == 0x52494646 and (sent["channels"], sent["rate"], sent["bits"]) == (1, 16_000, 16), sent

    # Record again, stopping by hand this time.
    page.locator("#record-button").click()
    page.wait_for_function("() => window.perceptorRecorder.state === 'recording' && window.perceptorRecorder.seconds > 1.6")
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("() => window.perceptorRecorder.recordings === 2 && !window.perceptorPredict.busy")
    seconds = page.evaluate("window.perceptorRecorder.seconds")
    assert 1.6 < seconds < 2.9
    expect(page.locator("#prediction-list li")).to_have_count(len(CLASSES))
    assert page.evaluate("window.perceptorPredict.requests") == 2

    # At a phone's width the recorder and the results still fit.
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth")  # charts resize
    except Exception:
        shot(page, "speech-phone-model-too-wide")
        too_wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
            .slice(0, 8).map(e => `${e.tagName.toLowerCase()}#${e.id}.${e.className}: ${Math.round(e.getBoundingClientRect().right)} px`)""")
        raise AssertionError(f"the page is wider than the phone ({page.evaluate('window.innerWidth')} px): {too_wide}")
    shot(page, "speech-phone-model")

    assert page.problems == []


def test_a_denied_microphone_says_so_and_uploading_still_works(live, launch, speech_model, tmp_path):
    denied = """
        navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
    """
    page = launch(init_script=denied)
    log_in(page, live)
    page.goto(f"/models/{speech_model.pk}/")

    page.locator("#record-button").click()
    error = page.locator("#record-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Microphone access was denied")
    expect(page.locator("#record-button")).to_have_text("Record")
    expect(page.locator("#record-button")).to_be_enabled()

    # The upload path is untouched: a file that is not audio is refused with the reason.
    (tmp_path / "notes.txt").write_text("not a sound")
    page.locator("#predict-file").set_input_files(tmp_path / "notes.txt")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.locator("#prediction-error")).to_contain_text("notes.txt: not an audio file")
    page.problems[:] = [p for p in page.problems if "400 (Bad Request)" not in p]  # the refusal itself
    assert page.problems == []


def test_without_a_microphone_api_the_button_is_disabled_with_a_reason(live, launch, speech_model):
    page = launch(init_script="Object.defineProperty(navigator, 'mediaDevices', {value: undefined});")
    log_in(page, live)
    page.goto(f"/models/{speech_model.pk}/")

    expect(page.locator("#record-button")).to_be_disabled()
    expect(page.locator("#record-error")).to_contain_text("cannot record audio")
    assert page.problems == []


def test_the_new_job_form_switches_architectures_and_defaults_with_the_datasets_kind(live, launch, alice):
    from ml.config import config_defaults
    from ml.nets import architectures_for

    images = Dataset.objects.create(owner=alice, name="Shapes", status=Dataset.Status.READY)
    speech = Dataset.objects.create(owner=alice, name="Digits", kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY)
    page = launch()
    log_in(page, live)
    page.goto(f"/jobs/new/?dataset={images.pk}")

    def options():
        return page.locator("#id_arch option").evaluate_all("items => items.map(o => o.value)")

    assert options() == architectures_for("image")
    expect(page.get_by_label("Architecture")).to_have_value("resnet")
    expect(page.locator("#id_synthetic_voices")).to_be_hidden()  # speech only
    page.get_by_label("Epochs").fill("3")  # the user's own setting, kept while the kind stays the same

    page.get_by_label("Dataset").select_option(str(speech.pk))
    audio = config_defaults("audio")
    assert options() == architectures_for("audio")
    expect(page.get_by_label("Architecture")).to_have_value(audio["arch"])
    expect(page.get_by_label("Batch size")).to_have_value(str(audio["batch_size"]))
    expect(page.get_by_label("Epochs")).to_have_value(str(audio["epochs"]))
    expect(page.locator("#job-kind-note")).to_contain_text("speech")
    expect(page.get_by_label("Synthetic voices per class")).to_be_visible()
    page.get_by_label("Architecture").select_option("crnn")
    shot(page, "speech-04-new-job")

    page.get_by_label("Dataset").select_option(str(images.pk))
    assert options() == architectures_for("image")
    expect(page.get_by_label("Architecture")).to_have_value("resnet")
    expect(page.get_by_label("Batch size")).to_have_value(str(config_defaults("image")["batch_size"]))
    expect(page.locator("#id_synthetic_voices")).to_be_hidden()
    assert page.problems == []
