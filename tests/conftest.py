"""Shared fixtures: the three users every view test needs, an isolated media folder, one torch thread."""

pytest_plugins = ["tests.live"]

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests train tiny models: they gain nothing from threads, and the CPU is shared with other
    test runs. (The live stack's worker is another process, with its own threads.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_synthetic_voices_unless_asked(request, monkeypatch):
    """Speech training adds 1,000 espeak-ng clips per class by default; tests train on generated
    tones named like words ("high", "low") in seconds, and must stay that fast and not depend on
    speech synthesis. Tests of synthetic voices ask for them in their config; those of the defaults
    themselves are marked speech_defaults. (The live stack's processes keep the real defaults:
    integration tests give speech jobs their settings.)"""
    if request.node.get_closest_marker("speech_defaults") is None:
        from ml import config

        monkeypatch.setitem(config.AUDIO_DEFAULTS, "synthetic_voices", 0)


@pytest.fixture(autouse=True)
def _fast_password_hashing(request, settings):
    """PBKDF2 at full strength costs about a second per user on a shared CPU. Not with the live
    stack: its server checks passwords typed into the login form with the real settings."""
    if "live" not in request.fixturenames:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-pass-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-pass-123")


@pytest.fixture
def charlie(django_user_model):
    """Staff and superuser: sees everything."""
    return django_user_model.objects.create_superuser("charlie", "charlie@example.com", "charlie-pass-123")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(client, bob):
    client.force_login(bob)
    return client
