"""Batch prediction in a real browser: the model page's archive upload (XHR with a byte progress
bar), the batch page's bar moved by polling while the worker predicts, then the CSV link."""

import csv
import io
import urllib.request

import pytest
from django.conf import settings
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.e2e.test_golden_path import browser_page, shot  # noqa: F401 - the fixture
from tests.webapp.test_batch import BAD_IMAGES, image_members, store_model, zip_bytes
from tests.webapp.test_registry import train_result  # noqa: F401 - shared session fixture
from webapp.registry.models import BatchPrediction

pytestmark = pytest.mark.e2e

FILES = 12000  # 8×8 images: several seconds of the worker's time even on a quiet machine (3,000 once finished between two polls), so the page sees the bar move


def test_a_user_uploads_an_archive_on_the_model_page_and_downloads_the_csv(
        live, browser_page, alice, train_result, tmp_path):  # noqa: F811 - the fixtures
    page = browser_page
    model = store_model(train_result, alice)
    archive = tmp_path / "photos.zip"
    archive.write_bytes(zip_bytes(image_members(FILES)))
    cookie = live.session_cookie(alice)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live.url}])

    page.goto(f"/models/{model.pk}/")
    expect(page.locator("#batch-empty")).to_be_visible()
    with live.paused_worker():  # the batch waits, so the page is seen before the worker starts
        page.get_by_label("Archive").set_input_files(str(archive))
        page.get_by_role("button", name="Upload and predict").click()
        page.wait_for_url("**/models/batches/*/")
        expect(page.locator("#batch-status")).to_have_text("Queued")
        expect(page.locator("#batch-progress-text")).to_have_text(f"0 of {FILES + len(BAD_IMAGES)} files")
        shot(page, "batch-01-queued")

    batch = BatchPrediction.objects.get()
    values = []
    for _ in range(600):  # the bar as the page shows it, while the worker predicts (polled by batch.js)
        if page.locator("#batch-csv").count():
            break
        try:
            values.append(int(page.locator("#batch-progress").evaluate("bar => bar.value", timeout=1000)))
        except PlaywrightError:  # batch.js reloads the page at the end: the bar is gone, or going
            pass
        page.wait_for_timeout(100)
    expect(page.locator("#batch-status")).to_have_text("Succeeded")
    assert any(0 < v < FILES for v in values), values  # it moved without a reload
    shot(page, "batch-02-done")
    expect(page.locator("#batch-skipped-files")).to_contain_text("odd/notes.txt")

    href = page.locator("#batch-csv").get_attribute("href")
    request = urllib.request.Request(live.url + href, headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(rows) == FILES + len(BAD_IMAGES) == BatchPrediction.objects.get(pk=batch.pk).total

    page.goto(f"/models/{model.pk}/")
    expect(page.locator("#batch-list")).to_contain_text("photos.zip")
    page.locator("#batch").scroll_into_view_if_needed()
    shot(page, "batch-03-model-page")
    assert not page.problems, page.problems
