"""Job pages: list, new-job form, detail, cancel, workers. bob gets 404 on everything of alice's."""

import pytest
from django.urls import reverse
from ml import HYPERPARAMETERS

from jobs.models import Job
from jobs.workers import Worker
from tests.jobs.conftest import TINY_CONFIG, make_ready_dataset
from webapp.datasets.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(alice, dataset):
    return Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)


# --- List --------------------------------------------------------------------------------------


def test_the_list_without_jobs_says_what_to_do_next(alice_client):
    response = alice_client.get(reverse("jobs:list"))

    assert response.status_code == 200
    assert "No jobs yet" in response.text
    assert "upload one or use the demo" in response.text  # no ready dataset either


def test_the_list_shows_only_your_own_jobs(alice, bob, alice_client, job):
    bobs = Job.objects.create(owner=bob, dataset=make_ready_dataset(bob, name="bobs"), config=TINY_CONFIG)

    response = alice_client.get(reverse("jobs:list"))

    assert response.status_code == 200
    assert list(response.context["jobs"]) == [job]
    assert reverse("jobs:detail", args=[job.pk]) in response.text
    assert reverse("jobs:detail", args=[bobs.pk]) not in response.text


def test_anonymous_visitors_are_sent_to_log_in(client, job):
    for url in (reverse("jobs:list"), reverse("jobs:new"), reverse("jobs:detail", args=[job.pk]), reverse("jobs:workers")):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login")), url


# --- New job -----------------------------------------------------------------------------------


def test_the_form_offers_every_hyperparameter_with_its_default_help_and_range(alice_client, dataset):
    response = alice_client.get(reverse("jobs:new"))

    assert response.status_code == 200
    html = response.text
    defaults = {name: param.default for name, param in HYPERPARAMETERS.items()}
    for choice in ("arch", "optimizer"):
        assert f'<select name="{choice}"' in html
        assert f'<option value="{defaults[choice]}" selected>{defaults[choice]}</option>' in html
    assert f'name="epochs" value="{defaults["epochs"]}" min="1" max="500" step="1"' in html
    assert f'name="lr" value="{defaults["lr"]}" min="1e-06" max="10" step="any"' in html
    assert 'type="checkbox" name="augment"' in html and "checked" in html
    assert "Full passes over the training images or clips." in html and "Range 1 to 500." in html
    assert "Range 0 to 2,147,483,647." in html  # not 2.14748e+09
    assert '<label for="id_weight_decay">Weight decay</label>' in html


def test_the_dataset_choice_lists_only_your_ready_datasets(alice, bob, alice_client, dataset):
    Dataset.objects.create(owner=alice, name="still ingesting", status=Dataset.Status.INGESTING)
    make_ready_dataset(bob, name="bobs ready")

    response = alice_client.get(reverse("jobs:new"))

    assert list(response.context["form"].fields["dataset"].queryset) == [dataset]
    assert "still ingesting" not in response.text and "bobs ready" not in response.text


def test_a_dataset_in_the_query_string_is_preselected(alice, alice_client, dataset):
    other = make_ready_dataset(alice, name="other")

    response = alice_client.get(reverse("jobs:new") + f"?dataset={other.pk}")

    assert f'<option value="{other.pk}" selected>other</option>' in response.text


def test_a_dataset_in_the_query_string_that_is_not_ready_is_explained(alice, alice_client, dataset):
    pending = Dataset.objects.create(owner=alice, name="fresh upload", status=Dataset.Status.PENDING)

    response = alice_client.get(reverse("jobs:new") + f"?dataset={pending.pk}")

    assert response.status_code == 200
    assert "Dataset “fresh upload” is not ready yet (waiting to ingest)." in response.text


def test_without_a_ready_dataset_the_form_points_to_the_datasets(alice_client):
    response = alice_client.get(reverse("jobs:new"))

    assert response.status_code == 200
    assert "You have no ready dataset" in response.text
    assert 'id="job-form"' not in response.text


def form_data(dataset, **overrides):
    data = {"dataset": dataset.pk, "arch": "seed_cnn", "epochs": "2", "batch_size": "8", "lr": "0.003",
            "optimizer": "adamw", "weight_decay": "0.05", "augment": "on", "label_smoothing": "0.1", "seed": "0",
            "ema": "0"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_submitting_the_form_queues_the_job_and_opens_its_page(alice, alice_client, dataset, queued,
                                                               django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("jobs:new"), form_data(dataset, augment=None))

    job = Job.objects.get()
    assert response.status_code == 302 and response.url == reverse("jobs:detail", args=[job.pk])
    assert job.owner == alice and job.status == Job.Status.QUEUED
    assert job.config == {"arch": "seed_cnn", "epochs": 2, "batch_size": 8, "lr": 0.003, "optimizer": "adamw",
                          "weight_decay": 0.05, "augment": False, "label_smoothing": 0.1, "seed": 0,
                          "ema": 0.0, "synthetic_voices": 0, "mixup": 0.0}
    assert queued == [job.pk]
    assert f"Job {job.pk} is queued" in alice_client.get(response.url).text


def test_an_out_of_range_value_is_refused_next_to_its_field(alice_client, dataset, queued):
    response = alice_client.post(reverse("jobs:new"), form_data(dataset, epochs="0"))

    assert response.status_code == 400
    assert response.context["form"].errors == {"epochs": ["epochs must be between 1 and 500, got 0"]}
    assert "epochs must be between 1 and 500, got 0" in response.text
    assert not Job.objects.exists() and queued == []


def test_someone_elses_dataset_cannot_be_submitted(bob_client, dataset, queued):
    response = bob_client.post(reverse("jobs:new"), form_data(dataset))

    assert response.status_code == 400
    assert "dataset" in response.context["form"].errors
    assert not Job.objects.exists() and queued == []


# --- Detail ------------------------------------------------------------------------------------


def test_the_job_page_has_the_live_parts_and_loads_chart_js_from_our_static_files(alice_client, job):
    response = alice_client.get(reverse("jobs:detail", args=[job.pk]))

    assert response.status_code == 200
    html = response.text
    assert 'class="badge status-queued"' in html
    assert f'data-ws-path="/ws/jobs/{job.pk}/"' in html
    assert 'id="loss-chart"' in html and 'id="accuracy-chart"' in html
    assert "/static/vendor/chart.js/chart.umd.min.js" in html and "/static/js/job.js" in html
    assert "cdn" not in html.lower()
    assert reverse("jobs:cancel", args=[job.pk]) in html
    assert response.context["snapshot"]["id"] == job.pk


def test_a_failed_job_shows_its_error_and_no_cancel_button(alice_client, job):
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error="Training failed: out of patience")

    response = alice_client.get(reverse("jobs:detail", args=[job.pk]))

    assert "Training failed: out of patience" in response.text
    assert reverse("jobs:cancel", args=[job.pk]) not in response.text


def test_bob_gets_404_on_alices_job_page(bob_client, job):
    assert bob_client.get(reverse("jobs:detail", args=[job.pk])).status_code == 404


def test_staff_can_open_anyones_job_page(client, charlie, job):
    client.force_login(charlie)
    assert client.get(reverse("jobs:detail", args=[job.pk])).status_code == 200


# --- Cancel ------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_from_its_page(alice_client, job, pushes):
    response = alice_client.post(reverse("jobs:cancel", args=[job.pk]), follow=True)

    assert response.redirect_chain == [(reverse("jobs:detail", args=[job.pk]), 302)]
    assert f"Job {job.pk} is cancelled." in response.text
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_cancelling_a_running_job_asks_it_to_stop(alice_client, job, pushes):
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    response = alice_client.post(reverse("jobs:cancel", args=[job.pk]), follow=True)

    assert f"Cancelling job {job.pk}" in response.text
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (Job.Status.RUNNING, True)


def test_cancelling_a_finished_job_answers_409_with_the_reason(alice_client, job):
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)

    response = alice_client.post(reverse("jobs:cancel", args=[job.pk]))

    assert response.status_code == 409
    assert f"Job {job.pk} cannot be cancelled: it has already succeeded." in response.text
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (Job.Status.SUCCEEDED, False)


def test_bob_gets_404_when_cancelling_alices_job_and_it_keeps_running(bob_client, job):
    response = bob_client.post(reverse("jobs:cancel", args=[job.pk]))

    assert response.status_code == 404
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == (Job.Status.QUEUED, False)


def test_cancel_is_post_only(alice_client, job):
    assert alice_client.get(reverse("jobs:cancel", args=[job.pk])).status_code == 405
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


# --- Workers -----------------------------------------------------------------------------------


def test_the_workers_page_lists_each_worker_its_device_and_jobs(alice_client, bob, job, monkeypatch):
    bobs = Job.objects.create(owner=bob, dataset=make_ready_dataset(bob, name="b"), config=TINY_CONFIG)
    monkeypatch.setattr("jobs.views.worker_list", lambda: [
        Worker(name="gpu0@box", device="cuda (H200)", job_ids=[job.pk]),
        Worker(name="cpu@laptop", device="cpu", job_ids=[bobs.pk]),
        Worker(name="idle@box", device="cpu"),
    ])

    response = alice_client.get(reverse("jobs:workers"))

    assert response.status_code == 200
    html = response.text
    assert "gpu0@box" in html and "cuda (H200)" in html and "cpu@laptop" in html
    assert reverse("jobs:detail", args=[job.pk]) in html
    assert f'href="{reverse("jobs:detail", args=[bobs.pk])}"' not in html and "another user's job" in html
    assert "idle" in html


def test_the_workers_page_says_so_when_no_worker_answers(alice_client, monkeypatch):
    monkeypatch.setattr("jobs.views.worker_list", lambda: [])

    response = alice_client.get(reverse("jobs:workers"))

    assert response.status_code == 200
    assert "No worker answered within 1.0 s" in response.text


def test_the_workers_page_explains_a_broker_outage_instead_of_failing(alice_client, monkeypatch):
    def broker_down():
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("jobs.views.worker_list", broker_down)

    response = alice_client.get(reverse("jobs:workers"))

    assert response.status_code == 200
    assert "The job queue (Redis) could not be reached" in response.text


def test_the_workers_page_shows_host_gpu_memory_heartbeat_and_the_dead_job_limit(alice_client, job, monkeypatch):
    from django.utils.timezone import now

    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, worker="gpu0@box", heartbeat_at=now())
    monkeypatch.setattr("jobs.views.worker_list", lambda: [
        Worker(name="gpu0@box", device="cuda (H200)", job_ids=[job.pk], memory_bytes=140 * 2**30),
    ])

    html = alice_client.get(reverse("jobs:workers")).text

    assert "cuda (H200)</span> · 140 GiB" in html and '<td class="mono">box</td>' in html
    assert "0\xa0minutes ago" in html
    assert "shows \"running\" for at most 40 s" in html


def test_a_busy_worker_that_does_not_answer_is_listed_by_its_jobs_heartbeat(alice_client, job, monkeypatch):
    from datetime import timedelta

    from django.utils.timezone import now

    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, worker="solo@box", device="cpu", heartbeat_at=now())
    dead = Job.objects.create(owner=job.owner, dataset=job.dataset, config=TINY_CONFIG, status=Job.Status.RUNNING,
                              worker="gone@box", heartbeat_at=now() - timedelta(hours=1))
    monkeypatch.setattr("jobs.views.worker_list", lambda: [])

    html = alice_client.get(reverse("jobs:workers")).text

    assert "solo@box" in html and "busy: answers between jobs" in html
    assert reverse("jobs:detail", args=[job.pk]) in html
    assert "gone@box" not in html and dead.pk
