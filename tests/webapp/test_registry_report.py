"""The evaluation report on the model page: filled at registration from the validation split, shown
as summary, per-class table, reliability diagram and gallery, its files served to whoever may see
the model and to nobody else."""

import io
import os

import numpy as np
import pytest
import soundfile as sf
from django.urls import reverse
from PIL import Image

from jobs.models import Job
from tests.audio_fixtures import CLASSES, clip_arrays
from webapp.datasets.models import Dataset
from webapp.registry import services
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_directory, model_register


@pytest.fixture(autouse=True)
def _no_exports(monkeypatch):
    """The other formats (ONNX export and its parity check: seconds per model) are not what these
    tests are about; tests/webapp/test_registry_exports.py covers them."""
    monkeypatch.setattr(services, "model_exports", lambda **kwargs: {})


def _flip(y: np.ndarray, every: int, num_classes: int) -> np.ndarray:
    """Every `every`-th label moved to the next class: mistakes the model is sure to make."""
    y = y.copy()
    y[::every] = (y[::every] + 1) % num_classes
    return y


@pytest.fixture(scope="session")
def image_run():
    """8×8 grayscale images whose class is their brightness (3 classes), a few validation labels
    wrong on purpose; seed_cnn for 3 epochs on CPU (about a second)."""
    from ml import ImageData, TrainConfig, train

    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = np.clip(np.array([20, 128, 235])[y][:, None, None, None] + rng.normal(0, 10, (120, 8, 8, 1)), 0, 255)
    x = x.astype(np.uint8)
    data = ImageData(x[:90], y[:90].astype(np.int64), x[90:], _flip(y[90:].astype(np.int64), 5, 3),
                     ["dark", "grey", "bright"])
    config = TrainConfig.from_dict({"arch": "seed_cnn", "epochs": 3, "batch_size": 16, "seed": 0})
    return train(config, data, device="cpu"), data


@pytest.fixture(scope="session")
def speech_run():
    """cnn_mel for 2 epochs on the generated tones and chirps, some validation labels wrong."""
    from ml import TrainConfig, train
    from ml.data import AudioData

    x, y = clip_arrays(48, seed=1)
    data = AudioData(x_train=x[:36], y_train=y[:36], x_val=x[36:], y_val=_flip(y[36:], 3, 3), classes=list(CLASSES))
    config = TrainConfig.from_dict({"arch": "cnn_mel", "epochs": 2, "batch_size": 8, "seed": 0}, modality="audio")
    return train(config, data, device="cpu"), data


def register(owner, run, *, kind=Dataset.Kind.IMAGE, data="run") -> TrainedModel:
    result, dataset_arrays = run
    dataset = Dataset.objects.create(owner=owner, name="Report", kind=kind, status=Dataset.Status.READY)
    job = Job.objects.create(owner=owner, dataset=dataset, status=Job.Status.SUCCEEDED, config={"arch": "x"})
    return model_register(job=job, result=result, data=dataset_arrays if data == "run" else data)


def file_url(model: TrainedModel, name: str) -> str:
    return reverse("models:report_file", args=[model.pk, name])


# --- Registering fills the report ---------------------------------------------------------------


@pytest.mark.django_db
def test_registering_with_the_data_fills_the_report_and_writes_the_gallery(alice, image_run):
    model = register(alice, image_run)
    model.refresh_from_db()
    report = model.evaluation

    assert (report["split"], report["samples"]) == ("validation", 30)
    assert report["accuracy"] == pytest.approx(model.metrics["val_acc"])
    assert [row["label"] for row in report["per_class"]] == ["dark", "grey", "bright"]
    assert [row["support"] for row in report["per_class"]] == [sum(row) for row in model.confusion]
    assert len(report["calibration"]["bins"]) == 15 and 0 <= report["calibration"]["ece"] <= 1
    assert report["misclassified_total"] >= 6  # the six flipped labels at least
    gallery = report["misclassified"]
    assert len(gallery) == report["misclassified_total"] and gallery[0]["file"] == "report/miss-00.png"
    assert [e["confidence"] for e in gallery] == sorted((e["confidence"] for e in gallery), reverse=True)
    directory = model_directory(model)
    written = sorted(p.name for p in (directory / "report").iterdir())
    assert written == [f"miss-{i:02d}.png" for i in range(len(gallery))]
    with Image.open(directory / gallery[0]["file"]) as thumb:
        assert thumb.size == (64, 64)


@pytest.mark.django_db
def test_without_readable_data_the_model_is_kept_and_the_page_says_why_there_is_no_report(alice, alice_client,
                                                                                         image_run):
    model = register(alice, image_run, data=None)  # the dataset row has no files

    assert model.evaluation == {"error": "the dataset's files could not be read"}
    html = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert "No evaluation report: the dataset&#x27;s files could not be read" in html


@pytest.mark.django_db
def test_a_dataset_without_a_validation_split_gets_no_report_and_says_so(alice, alice_client, image_run):
    result, data = image_run
    empty = type(data)(data.x_train, data.y_train, data.x_val[:0], data.y_val[:0], data.classes)
    model = register(alice, (result, empty))

    assert "no validation samples" in model.evaluation["error"]
    assert not (model_directory(model) / "report").exists()
    assert "No evaluation report: the dataset has no validation samples" in alice_client.get(
        reverse("models:detail", args=[model.pk])).text


# --- The page --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_shows_summary_per_class_table_reliability_diagram_and_gallery(alice, alice_client, image_run):
    model = register(alice, image_run)
    report = model.evaluation

    html = alice_client.get(reverse("models:detail", args=[model.pk])).text

    assert 'id="model-report"' in html and 'id="model-confusion"' in html
    assert f'<dd data-metric="accuracy">{report["accuracy"] * 100:.1f} %</dd>' in html
    assert f'<dd data-metric="macro_f1">{report["macro_f1"]:.3f}</dd>' in html
    assert f'<dd data-metric="ece">{report["calibration"]["ece"] * 100:.1f} %</dd>' in html
    grey = report["per_class"][1]
    assert (f'<tr><th scope="row">grey</th><td class="num">{grey["precision"] * 100:.1f} %</td>'
            f'<td class="num">{grey["recall"] * 100:.1f} %</td><td class="num">{grey["f1"]:.3f}</td>'
            f'<td class="num">{grey["support"]}</td></tr>') in html
    # One bar per non-empty confidence bin, drawn without a script or an external request.
    bins = [b for b in report["calibration"]["bins"] if b["count"]]
    section = html[html.index('id="model-report"'):]
    assert section.count('<rect class="bar"') == len(bins) and '<line class="diagonal"' in section
    assert "http://" not in section and "https://" not in section
    first = report["misclassified"][0]
    assert f'<img src="{file_url(model, "miss-00.png")}"' in html
    assert (f"true <strong>{first['true']}</strong> → predicted <strong>{first['predicted']}</strong> "
            f"({first['confidence'] * 100:.1f} %)") in html


@pytest.mark.django_db
def test_a_model_stored_before_reports_existed_says_it_has_none(alice, alice_client):
    dataset = Dataset.objects.create(owner=alice, name="Old", status=Dataset.Status.READY)
    model = TrainedModel.objects.create(owner=alice, dataset=dataset, name="Old · seed_cnn", arch="seed_cnn",
                                        classes=["a", "b"], input_spec={"height": 8, "width": 8, "channels": 1})

    html = alice_client.get(reverse("models:detail", args=[model.pk])).text

    assert "No evaluation report: this model was stored before evaluation reports were made" in html


@pytest.mark.django_db
def test_a_speech_model_s_gallery_plays_each_mistake_beside_its_spectrogram(alice, alice_client, speech_run):
    model = register(alice, speech_run, kind=Dataset.Kind.AUDIO)
    first = model.evaluation["misclassified"][0]
    assert (first["file"], first["spectrogram"]) == ("report/miss-00.wav", "report/miss-00.png")

    html = alice_client.get(reverse("models:detail", args=[model.pk])).text
    assert f'<img src="{file_url(model, "miss-00.png")}" alt="Spectrogram of validation clip {first["index"]}"' in html
    assert f'<audio controls preload="none" src="{file_url(model, "miss-00.wav")}"></audio>' in html

    wav = alice_client.get(file_url(model, "miss-00.wav"))
    assert wav.status_code == 200 and wav["Content-Type"] == "audio/wav"
    wave, rate = sf.read(io.BytesIO(b"".join(wav.streaming_content)), dtype="int16")
    assert rate == 16_000 and np.array_equal(wave, speech_run[1].x_val[first["index"]])
    png = alice_client.get(file_url(model, "miss-00.png"))
    assert png.status_code == 200 and png["Content-Type"] == "image/png"


# --- Serving the files -------------------------------------------------------------------------


@pytest.mark.django_db
def test_report_files_are_served_to_the_owner_as_png(alice, alice_client, image_run):
    model = register(alice, image_run)

    response = alice_client.get(file_url(model, "miss-00.png"))

    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == (model_directory(model) / "report" / "miss-00.png").read_bytes()


@pytest.mark.django_db
def test_bob_gets_404_on_alices_report_files_until_she_publishes_the_model(alice, bob_client, image_run):
    model = register(alice, image_run)

    assert bob_client.get(file_url(model, "miss-00.png")).status_code == 404
    services.model_publish(model=model, published=True)
    assert bob_client.get(file_url(model, "miss-00.png")).status_code == 200  # published: visible to all


@pytest.mark.django_db
def test_staff_may_read_every_report(alice, client, charlie, image_run):
    model = register(alice, image_run)
    client.force_login(charlie)

    assert client.get(file_url(model, "miss-00.png")).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "miss-99.png", "..", "miss-00.wav"])
def test_a_name_not_in_the_report_is_a_404(alice, alice_client, image_run, name):
    model = register(alice, image_run)
    (model_directory(model) / "report" / "miss-00.wav").write_bytes(b"RIFF")  # on disk, but not in the report

    assert alice_client.get(file_url(model, name)).status_code == 404


@pytest.mark.django_db
def test_no_path_reaches_outside_the_report_folder(alice, alice_client, image_run):
    model = register(alice, image_run)
    base = reverse("models:detail", args=[model.pk])

    for path in ("report/..%2Fmodel.json", "report/%2E%2E%2Fmodel.json", "report/report%2Fmiss-00.png",
                 "report/../model.json"):
        assert alice_client.get(base + path).status_code == 404, path


@pytest.mark.django_db
def test_a_report_file_missing_from_storage_is_a_404(alice, alice_client, image_run):
    model = register(alice, image_run)
    (model_directory(model) / "report" / "miss-00.png").unlink()

    assert alice_client.get(file_url(model, "miss-00.png")).status_code == 404


# --- In a browser ------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_in_a_browser_the_report_loads_every_file_and_fits_a_phone(live_server, client, alice, image_run, speech_run,
                                                                    monkeypatch, kind):
    """Chromium on Django's live server: every gallery file loads, nothing is fetched from elsewhere,
    and at a phone's width the page does not scroll sideways. Screenshots go to $E2E_SCREENSHOTS."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    model = register(alice, image_run) if kind == "image" else register(alice, speech_run, kind=Dataset.Kind.AUDIO)
    client.force_login(alice)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs in this thread
    requests, problems = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
        try:
            page.goto(f"/models/{model.pk}/")
            report = page.locator("#model-report")
            page.locator("#report-gallery").scroll_into_view_if_needed()  # the thumbnails load lazily
            page.wait_for_function("[...document.querySelectorAll('#report-gallery img')].every(i => i.complete)")
            images = page.eval_on_selector_all("#report-gallery img", "els => els.map(e => e.naturalWidth)")
            assert len(images) == len(model.evaluation["misclassified"]) and all(w > 0 for w in images)
            assert report.locator("svg .bar").count() >= 1 and report.locator("svg").bounding_box()["height"] > 100
            screenshot(report, f"report-{kind}")
            page.set_viewport_size({"width": 390, "height": 844})
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow} px too wide for a phone"
            screenshot(report, f"report-{kind}-phone")
        finally:
            from django.db import connections

            connections.close_all()
            context.close()
            browser.close()
    assert problems == []
    assert all(url.startswith(live_server.url) for url in requests)


def screenshot(locator, name: str) -> None:
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        locator.screenshot(path=os.path.join(folder, f"{name}.png"))
