"""Versions and compare in a real browser: the compare page draws one line per job, and the owner
publishes, makes default and deletes a version from the model page.

Real Chromium against the live stack (tests/live.py); screenshots go to $E2E_SCREENSHOTS when set.
"""

import pytest
from playwright.sync_api import expect

from jobs.models import Job, MetricPoint
from tests.e2e.test_golden_path import browser_page, shot  # noqa: F401 - shared fixture
from tests.webapp.test_registry import TINY_ARCH, train_result  # noqa: F401 - shared fixture
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_register

pytestmark = pytest.mark.e2e


def log_in(page, live) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live.url}/")


def finished_job(dataset, lr: float, accuracies: list[float]) -> Job:
    job = Job.objects.create(owner=dataset.owner, dataset=dataset, status=Job.Status.SUCCEEDED,
                             config={"arch": TINY_ARCH, "epochs": len(accuracies), "lr": lr})
    for epoch, acc in enumerate(accuracies, start=1):
        MetricPoint.objects.create(job=job, kind="epoch", epoch=epoch, step=epoch * 4, train_loss=1 - acc,
                                   train_acc=acc, val_loss=1.1 - acc, val_acc=acc)
    return job


def test_compare_draws_one_line_per_job(live, browser_page, alice):
    page = browser_page
    dataset = Dataset.objects.create(owner=alice, name="Shades", status=Dataset.Status.READY)
    jobs = [finished_job(dataset, 3e-3, [0.5, 0.7, 0.8]), finished_job(dataset, 1e-2, [0.6, 0.9])]
    log_in(page, live)

    page.goto("/jobs/")
    for job in jobs:
        page.get_by_label(f"Compare job {job.pk}").check()
    page.get_by_role("button", name="Compare").click()

    expect(page.locator("#compare-metrics")).to_contain_text("90.0 %")
    # The table is in the HTML; the charts come when the scripts at the end of the page have run.
    page.wait_for_function("""() => window.Chart && ["compare-accuracy", "compare-loss"].every((id) =>
        Chart.getChart(document.getElementById(id)))""")
    lines = page.evaluate("""() => ["compare-accuracy", "compare-loss"].map((id) =>
        Chart.getChart(document.getElementById(id)).data.datasets.map((d) => [d.label, d.data.length]))""")
    expected = [[f"Job {jobs[0].pk} ({TINY_ARCH})", 3], [f"Job {jobs[1].pk} ({TINY_ARCH})", 2]]
    assert [sorted(chart) for chart in lines] == [expected, expected]  # in the list's order, newest first
    expect(page.locator('tr.differs[data-hyperparameter="lr"]')).to_be_visible()
    shot(page, "compare")
    assert page.problems == []


def test_the_owner_publishes_makes_default_and_deletes_a_version(live, browser_page, alice, train_result):
    page = browser_page
    dataset = Dataset.objects.create(owner=alice, name="Shades", status=Dataset.Status.READY)
    v1, v2 = (model_register(job=Job.objects.create(owner=alice, dataset=dataset, status=Job.Status.SUCCEEDED,
                                                    config={"arch": TINY_ARCH}), result=train_result)
              for _ in range(2))
    log_in(page, live)

    page.goto("/models/")
    expect(page.locator("#model-list")).to_contain_text("2 versions")
    shot(page, "model-list")
    page.goto(f"/models/{v1.pk}/")
    page.locator("#model-publish").click()
    expect(page.locator("#model-published")).to_be_visible()
    page.locator("#model-make-default").click()
    expect(page.locator("#model-default")).to_be_visible()
    shot(page, "model-versions")
    page.locator("#model-delete").click()
    page.locator("#model-delete-confirm").click()
    expect(page).to_have_url(f"{live.url}/models/{v2.pk}/")
    expect(page.locator(".messages")).to_contain_text("and its files are deleted")
    assert list(TrainedModel.objects.values_list("pk", flat=True)) == [v2.pk]
    assert page.problems == []
