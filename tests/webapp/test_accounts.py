"""Sign up, log in, log out, the home page and the admin account that `make run` creates."""

import io
import stat

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.urls import reverse

from jobs.models import Job
from webapp.datasets.models import Dataset

pytestmark = pytest.mark.django_db
User = get_user_model()


def _dataset(owner, name, status=Dataset.Status.READY):
    return Dataset.objects.create(owner=owner, name=name, status=status, num_samples=12,
                                  classes=[{"name": "a", "train": 5, "val": 1}, {"name": "b", "train": 5, "val": 1}])


# --- home ---------------------------------------------------------------------------------------

def test_home_redirects_anonymous_visitors_to_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/"


def test_login_page_explains_perceptor_to_anonymous_visitors(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"Train image classifiers from your browser" in response.content
    assert b'href="/datasets/"' not in response.content  # no app navigation before logging in


def test_home_shows_the_users_own_recent_work_and_not_other_peoples(alice_client, alice, bob):
    mine = _dataset(alice, "alice-shapes")
    _dataset(bob, "bob-secret-photos")
    Job.objects.create(owner=alice, dataset=mine, config={"arch": "smallcnn"})

    response = alice_client.get(reverse("home"))

    assert response.status_code == 200
    body = response.content.decode()
    assert "alice-shapes" in body
    assert "bob-secret-photos" not in body
    assert "smallcnn on alice-shapes" in body
    assert "Job" in response.context["next_step"].text  # an unfinished job: watch it


def test_home_suggests_uploading_when_the_user_has_no_datasets(alice_client):
    response = alice_client.get(reverse("home"))
    assert response.status_code == 200
    assert response.context["next_step"].url == reverse("datasets:upload")
    assert b"No datasets yet" in response.content
    assert b"No training jobs yet" in response.content
    assert b"No models yet" in response.content


def test_home_suggests_training_once_a_dataset_is_ready(alice_client, alice):
    _dataset(alice, "ready-one")
    response = alice_client.get(reverse("home"))
    assert response.context["next_step"].url == reverse("jobs:new")


def test_top_bar_links_every_section_and_marks_the_current_one(alice_client):
    body = alice_client.get(reverse("datasets:list")).content.decode()
    for name in ("datasets:list", "jobs:list", "models:list", "jobs:workers", "api-docs"):
        assert f'href="{reverse(name)}"' in body
    assert f'<a href="{reverse("datasets:list")}" aria-current="page">Datasets</a>' in body
    assert 'action="/logout/"' in body


# --- sign up ------------------------------------------------------------------------------------

def test_signup_creates_an_account_logs_it_in_and_says_welcome(client, settings):
    settings.ALLOW_SIGNUP = True
    response = client.post(reverse("signup"),
                           {"username": "dora", "password1": "a-long-pass-phrase", "password2": "a-long-pass-phrase"})

    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    dora = User.objects.get(username="dora")
    assert dora.check_password("a-long-pass-phrase")
    assert not dora.is_staff
    assert client.session["_auth_user_id"] == str(dora.pk)
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Welcome, dora! Your account is ready."]


def test_signup_with_mismatched_passwords_says_so_and_creates_nobody(client, settings):
    settings.ALLOW_SIGNUP = True
    response = client.post(reverse("signup"),
                           {"username": "dora", "password1": "a-long-pass-phrase", "password2": "another-phrase"})

    assert response.status_code == 400
    assert "The two password fields didn’t match." in response.content.decode()
    assert not User.objects.filter(username="dora").exists()
    assert "_auth_user_id" not in client.session


def test_signup_refuses_a_username_that_is_taken(client, settings, alice):
    settings.ALLOW_SIGNUP = True
    response = client.post(reverse("signup"),
                           {"username": "alice", "password1": "a-long-pass-phrase", "password2": "a-long-pass-phrase"})

    assert response.status_code == 400
    assert "A user with that username already exists." in response.content.decode()
    assert User.objects.filter(username="alice").count() == 1
    assert User.objects.get(username="alice").check_password("alice-pass-123")


def test_signup_refuses_a_common_password(client, settings):
    settings.ALLOW_SIGNUP = True
    response = client.post(reverse("signup"), {"username": "dora", "password1": "password", "password2": "password"})
    assert response.status_code == 400
    assert "This password is too common." in response.content.decode()
    assert not User.objects.filter(username="dora").exists()


def test_signup_is_a_404_with_no_link_when_turned_off(client, settings):
    settings.ALLOW_SIGNUP = False

    assert client.get(reverse("signup")).status_code == 404
    response = client.post(reverse("signup"),
                           {"username": "dora", "password1": "a-long-pass-phrase", "password2": "a-long-pass-phrase"})
    assert response.status_code == 404
    assert not User.objects.filter(username="dora").exists()
    login_page = client.get(reverse("login")).content.decode()
    assert f'href="{reverse("signup")}"' not in login_page
    assert "Accounts are created by the administrator" in login_page


def test_signup_page_is_linked_when_turned_on(client, settings):
    settings.ALLOW_SIGNUP = True
    assert client.get(reverse("signup")).status_code == 200
    assert f'href="{reverse("signup")}"' in client.get(reverse("login")).content.decode()


# --- log in / log out ---------------------------------------------------------------------------

def test_login_with_the_right_password_goes_home(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"})
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_login_follows_next_but_only_to_this_site(client, alice):
    ok = client.post(reverse("login") + "?next=/jobs/", {"username": "alice", "password": "alice-pass-123",
                                                       "next": "/jobs/"})
    assert ok["Location"] == "/jobs/"
    client.logout()
    evil = client.post(reverse("login"), {"username": "alice", "password": "alice-pass-123",
                                          "next": "https://evil.example/"})
    assert evil["Location"] == reverse("home")


def test_login_with_a_wrong_password_shows_an_error_and_logs_nobody_in(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_logout_needs_a_post_and_ends_the_session(alice_client):
    assert alice_client.get(reverse("logout")).status_code == 405
    assert "_auth_user_id" in alice_client.session

    response = alice_client.post(reverse("logout"), follow=True)
    assert response.redirect_chain == [(reverse("login"), 302)]
    assert "You are logged out." in response.content.decode()
    assert "_auth_user_id" not in alice_client.session
    assert alice_client.get(reverse("home")).status_code == 302


# --- ensure_admin -------------------------------------------------------------------------------

def test_ensure_admin_creates_a_superuser_once_with_a_private_password_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PERCEPTOR_ADMIN_PASSWORD", raising=False)
    password_file = tmp_path / "var" / "admin-password.txt"
    first = io.StringIO()
    call_command("ensure_admin", password_file=password_file, url="http://127.0.0.1:8000/", stdout=first)

    password = password_file.read_text().strip()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)
    assert len(password) >= 16
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert "Created the superuser 'admin'." in first.getvalue()
    assert f"Log in at http://127.0.0.1:8000/ as admin with password {password}" in first.getvalue()

    again = io.StringIO()
    call_command("ensure_admin", password_file=password_file, url="http://127.0.0.1:8000/", stdout=again)
    assert User.objects.filter(username="admin").count() == 1
    assert password_file.read_text().strip() == password
    assert "Created" not in again.getvalue()
    assert f"with password {password}" in again.getvalue()


def test_ensure_admin_does_not_show_a_password_file_that_went_stale(tmp_path, monkeypatch):
    monkeypatch.delenv("PERCEPTOR_ADMIN_PASSWORD", raising=False)
    password_file = tmp_path / "admin-password.txt"
    call_command("ensure_admin", password_file=password_file, stdout=io.StringIO())
    stale = password_file.read_text().strip()
    admin = User.objects.get(username="admin")
    admin.set_password("changed-by-the-admin")
    admin.save(update_fields=["password"])

    out = io.StringIO()
    call_command("ensure_admin", password_file=password_file, stdout=out)
    assert stale not in out.getvalue()
    assert "manage.py changepassword admin" in out.getvalue()


def test_ensure_admin_uses_a_given_password_and_never_writes_it_down(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTOR_ADMIN_PASSWORD", "given-by-the-operator")
    password_file = tmp_path / "admin-password.txt"
    out = io.StringIO()
    call_command("ensure_admin", password_file=password_file, stdout=out)

    assert User.objects.get(username="admin").check_password("given-by-the-operator")
    assert not password_file.exists()
    assert "given-by-the-operator" not in out.getvalue()
    assert "the password in PERCEPTOR_ADMIN_PASSWORD" in out.getvalue()


def test_admin_deleting_a_user_removes_their_datasets_and_models_files_too(
    client, charlie, alice, bob, settings, django_capture_on_commit_callbacks
):
    from webapp.registry.models import TrainedModel

    def owned_files(owner):
        dataset = Dataset.objects.create(owner=owner, name="d", status=Dataset.Status.READY)
        model = TrainedModel.objects.create(owner=owner, dataset=dataset, name="m", arch="seed_cnn")
        folders = [settings.MEDIA_ROOT / dataset.storage_dir, settings.MEDIA_ROOT / model.storage_dir]
        for folder in folders:
            folder.mkdir(parents=True)
            (folder / "weights.bin").write_bytes(b"x")
        return folders

    alices, bobs = owned_files(alice), owned_files(bob)
    client.force_login(charlie)
    with django_capture_on_commit_callbacks(execute=True):  # model files go once the delete commits
        response = client.post(reverse("admin:auth_user_delete", args=[alice.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=alice.pk).exists()
    assert not Dataset.objects.filter(owner_id=alice.pk).exists()
    assert not any(folder.exists() for folder in alices)
    assert all(folder.exists() for folder in bobs)
