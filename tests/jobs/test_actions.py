"""Resume, retry and clone from the job page and the API; double submits of the form and of
POST /api/jobs/ (Idempotency-Key) make one job. bob gets 404 on all of alice's."""

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs.models import Job
from jobs.services import job_checkpoint_path
from tests.jobs.conftest import TINY_CONFIG
from tests.jobs.test_views import form_data

pytestmark = pytest.mark.django_db


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def stopped_job(owner, dataset, *, status=Job.Status.CANCELLED, checkpoint=True, **fields) -> Job:
    job = Job.objects.create(owner=owner, dataset=dataset, config=TINY_CONFIG, status=status, step=4, epoch=1,
                             progress=0.5, attempts=2, **fields)
    if checkpoint:
        path = job_checkpoint_path(job.pk)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"a checkpoint (its contents matter to ml.train only)")
    return job


# --- Double submit -----------------------------------------------------------------------------


def test_the_new_job_form_carries_a_fresh_one_time_token(alice_client, dataset):
    first = alice_client.get(reverse("jobs:new")).context["form"]["submit_token"].value()
    second = alice_client.get(reverse("jobs:new")).context["form"]["submit_token"].value()

    assert first and second and first != second


def test_submitting_the_same_form_twice_makes_one_job(alice_client, dataset, queued, django_capture_on_commit_callbacks):
    data = form_data(dataset, submit_token="d7f1c2e0a9b84c55")
    with django_capture_on_commit_callbacks(execute=True):
        first = alice_client.post(reverse("jobs:new"), data)
        again = alice_client.post(reverse("jobs:new"), data, follow=True)

    job = Job.objects.get()
    assert first.status_code == 302 and again.status_code == 200
    assert again.redirect_chain[-1][0] == reverse("jobs:detail", args=[job.pk])
    assert f"This form was already submitted: here is job {job.pk}." in again.text
    assert queued == [job.pk]


def test_the_api_honours_an_idempotency_key(alice, dataset, queued, django_capture_on_commit_callbacks):
    api = api_for(alice)
    body = {"dataset": dataset.pk, "epochs": 2}
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post("/api/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
        again = api.post("/api/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
        other = api.post("/api/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="key-2")

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert Job.objects.count() == 2 and queued == [first.json()["id"], other.json()["id"]]


def test_one_idempotency_key_used_by_two_users_makes_two_jobs(alice, bob, dataset, queued):
    from tests.jobs.conftest import make_ready_dataset

    bobs = make_ready_dataset(bob, name="bob's")
    a = api_for(alice).post("/api/jobs/", {"dataset": dataset.pk}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    b = api_for(bob).post("/api/jobs/", {"dataset": bobs.pk}, format="json", HTTP_IDEMPOTENCY_KEY="same")

    assert (a.status_code, b.status_code) == (201, 201) and a.json()["id"] != b.json()["id"]


def test_an_overlong_idempotency_key_is_a_400_that_says_so(alice, dataset):
    response = api_for(alice).post("/api/jobs/", {"dataset": dataset.pk}, format="json",
                                   HTTP_IDEMPOTENCY_KEY="k" * 65)

    assert response.status_code == 400
    assert response.json() == {"Idempotency-Key": ["An idempotency key has at most 64 characters."]}
    assert not Job.objects.exists()


# --- Resume and retry from the page ------------------------------------------------------------


def test_a_cancelled_job_with_a_checkpoint_shows_resume_retry_and_clone(alice_client, alice, dataset):
    job = stopped_job(alice, dataset)

    html = alice_client.get(reverse("jobs:detail", args=[job.pk])).text

    assert f'action="/jobs/{job.pk}/resume/" class="inline">' in html  # shown, not hidden
    assert 'id="job-retry"' in html and f'href="/jobs/new/?clone={job.pk}"' in html


def test_resuming_from_the_page_queues_the_job_with_its_progress_kept(alice_client, alice, dataset, queued, pushes,
                                                                      django_capture_on_commit_callbacks):
    job = stopped_job(alice, dataset, cancel_requested=True)

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("jobs:resume", args=[job.pk]), follow=True)

    job.refresh_from_db()
    assert response.status_code == 200
    assert f"Job {job.pk} is queued again: it continues from its last checkpoint." in response.text
    assert job.status == Job.Status.QUEUED and not job.cancel_requested and job.attempts == 0
    assert (job.step, job.epoch) == (4, 1) and job_checkpoint_path(job.pk).is_file()
    assert queued == [job.pk]


def test_resuming_without_a_checkpoint_answers_409_and_says_to_retry(alice_client, alice, dataset, queued):
    job = stopped_job(alice, dataset, status=Job.Status.FAILED, checkpoint=False, error="boom")

    response = alice_client.post(reverse("jobs:resume", args=[job.pk]))

    assert response.status_code == 409 and "use Retry to train it from the start" in response.text
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and queued == []


def test_retrying_from_the_page_starts_over(alice_client, alice, dataset, queued, django_capture_on_commit_callbacks):
    job = stopped_job(alice, dataset, status=Job.Status.FAILED, error="boom")

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(reverse("jobs:retry", args=[job.pk]))

    job.refresh_from_db()
    assert response.status_code == 302
    assert job.status == Job.Status.QUEUED and (job.step, job.epoch, job.error) == (0, 0, "")
    assert not job_checkpoint_path(job.pk).exists() and queued == [job.pk]


@pytest.mark.parametrize("action", ["resume", "retry"])
def test_bob_gets_404_on_resuming_or_retrying_alices_job(bob_client, alice, dataset, action):
    job = stopped_job(alice, dataset)

    assert bob_client.post(reverse(f"jobs:{action}", args=[job.pk])).status_code == 404
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED


def test_resume_and_retry_are_post_only(alice_client, alice, dataset):
    job = stopped_job(alice, dataset)

    assert alice_client.get(reverse("jobs:resume", args=[job.pk])).status_code == 405
    assert alice_client.get(reverse("jobs:retry", args=[job.pk])).status_code == 405


# --- Clone -------------------------------------------------------------------------------------


def test_clone_opens_the_form_prefilled_with_the_jobs_dataset_and_hyperparameters(alice_client, alice, dataset):
    job = stopped_job(alice, dataset)
    Job.objects.filter(pk=job.pk).update(config={**TINY_CONFIG, "lr": 0.0125, "epochs": 7})

    response = alice_client.get(reverse("jobs:new") + f"?clone={job.pk}")

    form = response.context["form"]
    assert response.status_code == 200 and "Starting from" in response.text
    assert form["lr"].value() == 0.0125 and form["epochs"].value() == 7 and form["dataset"].value() == dataset.pk


def test_cloning_bobs_job_is_not_possible_and_says_so(bob_client, alice, dataset):
    job = stopped_job(alice, dataset)

    response = bob_client.get(reverse("jobs:new") + f"?clone={job.pk}")

    assert response.status_code == 200 and response.context["source"] is None
    assert "That job was not found among yours" in response.text


# --- The API -----------------------------------------------------------------------------------


def test_api_resume_retry_and_clone(alice, dataset, queued, django_capture_on_commit_callbacks):
    api = api_for(alice)
    resumable = stopped_job(alice, dataset)
    retried = stopped_job(alice, dataset, status=Job.Status.FAILED)

    with django_capture_on_commit_callbacks(execute=True):
        resumed = api.post(f"/api/jobs/{resumable.pk}/resume/")
        retry = api.post(f"/api/jobs/{retried.pk}/retry/")
        clone = api.post(f"/api/jobs/{resumable.pk}/clone/", {"lr": 0.01, "epochs": 3}, format="json")

    assert (resumed.status_code, retry.status_code, clone.status_code) == (200, 200, 201)
    assert resumed.json()["status"] == "queued" and resumed.json()["step"] == 4
    assert retry.json()["status"] == "queued" and retry.json()["step"] == 0
    copy = Job.objects.get(pk=clone.json()["id"])
    assert copy.dataset == dataset and copy.config["lr"] == 0.01 and copy.config["epochs"] == 3
    assert copy.config["batch_size"] == TINY_CONFIG["batch_size"]
    assert queued == [resumable.pk, retried.pk, copy.pk]


def test_api_resume_of_a_queued_job_is_a_409(alice, dataset):
    job = Job.objects.create(owner=alice, dataset=dataset, config=TINY_CONFIG)

    response = api_for(alice).post(f"/api/jobs/{job.pk}/resume/")

    assert response.status_code == 409 and "cannot be resumed: it is queued" in response.json()["detail"]


def test_api_clone_refuses_bad_and_unknown_fields_by_name(alice, dataset):
    job = stopped_job(alice, dataset)

    api = api_for(alice)

    bad = api.post(f"/api/jobs/{job.pk}/clone/", {"epochs": 0}, format="json")
    unknown = api.post(f"/api/jobs/{job.pk}/clone/", {"dataset": 5}, format="json")

    assert bad.status_code == 400 and bad.json() == {"epochs": ["Must be between 1 and 500."]}
    assert unknown.status_code == 400
    assert unknown.json() == {"dataset": ["Not a hyperparameter (the dataset cannot change in a clone)."]}
    assert Job.objects.count() == 1


@pytest.mark.parametrize("action", ["resume", "retry", "clone"])
def test_api_bob_gets_404_on_alices_job_actions(bob, alice, dataset, action):
    job = stopped_job(alice, dataset)

    assert api_for(bob).post(f"/api/jobs/{job.pk}/{action}/", {}, format="json").status_code == 404
    assert Job.objects.count() == 1 and Job.objects.get().status == Job.Status.CANCELLED
