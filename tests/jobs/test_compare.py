"""Compare runs: /jobs/compare/?ids=… overlays the jobs' curves and tabulates metrics and hyperparameters."""

import json
import re

import pytest
from django.urls import reverse

from jobs.models import Job, MetricPoint
from jobs.services import job_create, job_run
from tests.jobs.conftest import TINY_CONFIG
from webapp.registry import services as registry_services

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_slow_extras(monkeypatch):
    """The evaluation report and the exports are tested elsewhere; here they would only cost time."""
    monkeypatch.setattr(registry_services, "model_evaluation", lambda **kwargs: {})
    monkeypatch.setattr(registry_services, "model_exports", lambda **kwargs: {})


def trained(user, dataset, **changes) -> Job:
    """A job really trained on the tiny dataset (a second or two on CPU)."""
    job = job_create(user=user, dataset=dataset, config={**TINY_CONFIG, **changes})
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def compare_url(*jobs) -> str:
    return reverse("jobs:compare") + "?ids=" + ",".join(str(j.pk) for j in jobs)


def series(page: str) -> list[dict]:
    found = re.search(r'<script id="compare-series" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_compare_page_shows_every_selected_run_and_what_differs(alice, alice_client, dataset):
    runs = [trained(alice, dataset, lr=3e-3), trained(alice, dataset, lr=1e-2),
            trained(alice, dataset, lr=1e-2, epochs=3)]

    response = alice_client.get(compare_url(*runs))

    assert response.status_code == 200
    page = response.text
    curves = series(page)
    assert [c["id"] for c in curves] == [j.pk for j in runs]
    assert [len(c["points"]) for c in curves] == [2, 2, 3]  # one point per epoch end
    assert len({c["color"] for c in curves}) == 3
    for job, curve in zip(runs, curves):
        assert curve["points"][-1]["val_acc"] == job.points.filter(kind="epoch").last().val_acc
        assert f'data-job="{job.pk}"' in page
        assert f"{job.trained_model.metrics['val_acc'] * 100:.1f} %" in page  # final validation accuracy
    differing = set(re.findall(r'<tr class="differs" data-hyperparameter="([^"]+)"', page))
    assert differing == {"lr", "epochs"}
    assert 'data-hyperparameter="arch"' in page and "Validation loss" in page and "Training time (s)" in page


def test_the_job_list_has_checkboxes_that_open_the_compare_page(alice, alice_client, dataset):
    jobs = [Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG) for _ in range(2)]
    page = alice_client.get(reverse("jobs:list")).text

    assert f'action="{reverse("jobs:compare")}"' in page
    for job in jobs:
        assert f'name="ids" value="{job.pk}" form="compare-form"' in page
    # What the checkboxes send: ?ids=1&ids=2
    response = alice_client.get(reverse("jobs:compare"), {"ids": [j.pk for j in jobs]})
    assert response.status_code == 200 and [c["id"] for c in series(response.text)] == [j.pk for j in jobs]


def test_a_run_without_a_model_shows_its_last_epoch(alice, alice_client, dataset):
    jobs = [Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG, status=Job.Status.FAILED)
            for _ in range(2)]
    for job, acc in zip(jobs, (0.25, 0.75)):
        MetricPoint.objects.create(job=job, kind="epoch", epoch=1, step=4, train_loss=0.5, train_acc=0.5,
                                   val_loss=0.6, val_acc=acc)

    page = alice_client.get(compare_url(*jobs)).text

    assert "25.0 %" in page and "75.0 %" in page
    assert "differs" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S)  # same hyperparameters


def test_someone_elses_job_is_a_404(alice, bob, alice_client, client, dataset):
    from tests.jobs.conftest import make_ready_dataset

    mine = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)
    bobs = Job.objects.create(owner=bob, dataset=make_ready_dataset(bob), config=TINY_CONFIG)

    assert alice_client.get(compare_url(mine, bobs)).status_code == 404
    assert alice_client.get(compare_url(mine)).status_code == 400  # (and never a hint that bob's exists)
    client.force_login(bob)
    assert client.get(compare_url(mine, bobs)).status_code == 404


def test_staff_compare_anyones_jobs(alice, bob, client, charlie, dataset):
    from tests.jobs.conftest import make_ready_dataset

    jobs = [Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG),
            Job.objects.create(owner=bob, dataset=make_ready_dataset(bob), config=TINY_CONFIG)]
    client.force_login(charlie)

    assert client.get(compare_url(*jobs)).status_code == 200


@pytest.mark.parametrize("ids,message", [
    ("", "Choose at least two jobs to compare"),
    ("7", "Choose at least two jobs to compare"),
    ("7,7", "Choose at least two jobs to compare"),  # the same job twice is one job
    ("3,five", "“five” is not a job number"),
    (",".join(str(n) for n in range(1, 10)), "At most 8 jobs can be compared at once; 9 were chosen."),
])
def test_a_bad_selection_gets_a_clear_message(alice_client, ids, message):
    response = alice_client.get(reverse("jobs:compare"), {"ids": ids})

    assert response.status_code == 400
    assert message in response.text
