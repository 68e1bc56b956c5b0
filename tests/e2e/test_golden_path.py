"""The golden path in a real browser: log in, upload a dataset, train, watch it live, predict.

Real Chromium (Debian's, driven by Playwright), real daphne, a real Celery worker and the Redis
channel layer (tests/live.py). Screenshots of each page go to $E2E_SCREENSHOTS when it is set
(e.g. E2E_SCREENSHOTS=/tmp/perceptor-e2e), for a person to look at.
"""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from jobs.models import Job
from ml.synthetic import SHAPES, image_bytes, render_shapes, write_shapes_archive
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet on a machine with no network: no update checks, no sync, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PER_CLASS = 24  # 5 shapes × 24 = 120 images of 16×16: seconds to ingest and to train on a CPU
SIZE = 16


@pytest.fixture
def browser_page(live, monkeypatch, request):
    """A Chromium page on the live stack; fails the test on any JavaScript error or broken asset."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are still
    # plain synchronous code, so let Django allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda error: problems.append(f"JavaScript error on {page.url}: {error}"))
        page.on("response", lambda response: response.status >= 400 and response.request.resource_type
                in ("stylesheet", "script", "image", "font")
                and problems.append(f"{response.status} for {response.url}"))
        page.problems = problems
        try:
            yield page
        finally:
            # ORM calls made while Playwright's loop is set up keep Django's connection in a context
            # that is gone once this block ends, where pytest-django's close_all() cannot see it;
            # left open, it stops the PostgreSQL test database from being dropped at session end.
            from django.db import connections

            connections.close_all()
            context.close()
            browser.close()


def shot(page, name: str) -> None:
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_a_user_uploads_trains_watches_live_and_predicts_in_the_browser(live, browser_page, alice, tmp_path):
    page = browser_page
    archive = write_shapes_archive(tmp_path / "shapes.zip", per_class=PER_CLASS, size=SIZE, seed=1)
    _, _, circle = next(render_shapes(classes=("circle",), per_class=1, size=SIZE, seed=99))
    (tmp_path / "circle.png").write_bytes(image_bytes(circle, "png"))

    # Log in: the home page is behind the login.
    page.goto("/")
    expect(page).to_have_url(f"{live.url}/login/?next=/")
    shot(page, "01-login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Welcome, alice")).to_be_visible()
    expect(page.locator("#next-step")).to_contain_text("Upload")
    shot(page, "02-home-empty")

    # Upload the archive with the upload form; the dataset page shows the ingest, then the counts.
    page.get_by_role("link", name="Upload a dataset").first.click()
    expect(page).to_have_url(f"{live.url}/datasets/upload/")
    page.get_by_label("Name").fill("Shapes e2e")
    page.locator("input[type=file][name=archive]").set_input_files(archive)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/datasets/*/", timeout=30_000)
    expect(page.locator("#dataset-stats")).to_be_visible(timeout=60_000)  # reloads once ingested
    expect(page.locator("#dataset-status")).to_have_text("Ready")
    stats = page.locator("#dataset-stats")
    expect(stats).to_contain_text(f"{len(SHAPES) * PER_CLASS}")
    expect(page.locator("#class-table tbody tr")).to_have_count(len(SHAPES))
    for shape in SHAPES:
        row = page.locator("#class-table tbody tr", has=page.locator("th", has_text=shape))
        expect(row.locator("td").nth(2)).to_have_text(str(PER_CLASS))  # total per class
    expect(page.locator("#samples img").first).to_be_visible()
    shot(page, "03-dataset")
    dataset = Dataset.objects.get(name="Shapes e2e")
    assert (dataset.owner, dataset.status, dataset.num_samples) == (alice, Dataset.Status.READY, len(SHAPES) * PER_CLASS)

    # Start a 2-epoch job from the new-job page. The worker is paused until the page is watching,
    # so every point on the chart has come over the websocket while the page was open.
    page.get_by_role("button", name="Train a model").click()
    expect(page).to_have_url(f"{live.url}/jobs/new/?dataset={dataset.pk}")
    expect(page.get_by_label("Dataset")).to_have_value(str(dataset.pk))
    page.get_by_label("Architecture").select_option("seed_cnn")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Batch size").fill("16")
    shot(page, "04-new-job")
    with live.paused_worker():
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**/jobs/*/")
        page.wait_for_function("() => window.perceptorJob && window.perceptorJob.historyLoaded")
        assert page.evaluate("window.perceptorJob.points.length") == 0
        expect(page.locator("#job-status")).to_have_text("Queued")
    job = Job.objects.get(dataset=dataset)
    assert job.config["epochs"] == 2 and job.config["arch"] == "seed_cnn"

    page.wait_for_function("() => window.perceptorJob.points.length > 0", timeout=60_000)
    assert page.evaluate("window.perceptorJob.messages") > 1  # more than the history: live pushes
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=120_000)
    points = page.evaluate("window.perceptorJob.points")
    epochs_seen = {p["epoch"] for p in points if p["kind"] == "epoch"}
    assert epochs_seen == {1, 2}, points
    assert page.evaluate("Chart.getChart('loss-chart').data.datasets[1].data.length") == 2  # validation loss per epoch
    expect(page.locator("#job-progress-text")).to_contain_text("100 %")
    shot(page, "05-job-succeeded")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED

    # The model: upload an image, see the predictions.
    page.get_by_role("button", name="Open the model").click()
    model = TrainedModel.objects.get(job=job)
    expect(page).to_have_url(f"{live.url}/models/{model.pk}/")
    assert model.owner == alice and sorted(model.classes) == sorted(SHAPES)
    page.locator("#predict-file").set_input_files(tmp_path / "circle.png")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.locator("#prediction-list li")).to_have_count(5)
    labels = page.locator("#prediction-list li").evaluate_all("items => items.map(li => li.dataset.label)")
    probabilities = page.locator("#prediction-list li").evaluate_all(
        "items => items.map(li => parseFloat(li.dataset.probability))")
    assert sorted(labels) == sorted(SHAPES)
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-3
    expect(page.locator("#top-label")).to_have_text(labels[0])
    expect(page.locator("#prediction-error")).to_be_hidden()
    shot(page, "06-model-predicted")

    # Home now shows the work and points at the model.
    page.get_by_role("link", name="Perceptor", exact=True).click()
    expect(page.locator("#recent-datasets")).to_contain_text("Shapes e2e")
    expect(page.locator("#recent-jobs")).to_contain_text("Succeeded")
    expect(page.locator("#next-step")).to_contain_text("Try the model")
    shot(page, "07-home")

    # At a phone's width every page still fits: nothing scrolls sideways but wide tables.
    page.set_viewport_size({"width": 390, "height": 844})
    for name, path in [("home", "/"), ("dataset", f"/datasets/{dataset.pk}/"), ("job", f"/jobs/{job.pk}/"),
                       ("model", f"/models/{model.pk}/"), ("new-job", "/jobs/new/")]:
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the {name} page is {overflow} px too wide for a phone"
        shot(page, f"phone-{name}")

    assert page.problems == []


def test_the_job_page_shows_the_work_before_the_first_step_then_training_progress(live, browser_page, alice):
    from django.utils.timezone import now

    from jobs import events
    from jobs.services import job_snapshot

    page = browser_page
    dataset = Dataset.objects.create(owner=alice, name="Digits", kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY)
    # A running job held by no worker: the pushes below come from this test, through Redis.
    job = Job.objects.create(owner=alice, dataset=dataset, config={"arch": "crnn", "epochs": 2},
                             status=Job.Status.RUNNING, lease="held-by-the-test", heartbeat_at=now())
    page.goto(f"/login/?next=/jobs/{job.pk}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_function("() => window.perceptorJob && window.perceptorJob.historyLoaded")

    phase = {"message": "Speaking synthetic voices: 2,500 of 10,000 clips", "progress": 0.25}
    events.push_job_event(job.id, events.PROGRESS, {"job": job_snapshot(job), "point": None, "phase": phase})
    expect(page.locator("#job-progress-text")).to_have_text("25 % · Speaking synthetic voices: 2,500 of 10,000 clips")
    assert page.evaluate("document.getElementById('job-progress').value") == 0.25
    shot(page, "job-preparing")

    # The first training report takes the bar and the words back.
    Job.objects.filter(pk=job.pk).update(progress=0.1, step=1, total_steps=10, epoch=1, eta_s=90.0)
    job.refresh_from_db()
    events.push_job_event(job.id, events.PROGRESS, {"job": job_snapshot(job), "point": None})
    expect(page.locator("#job-progress-text")).to_have_text("10 % · 1 min 30 s left")
    assert page.evaluate("window.perceptorJob.phase") is None
    assert page.problems == []
