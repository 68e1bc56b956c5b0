"""Speech models in the registry: registering, predicting from WAV/FLAC/OGG (any rate, stereo, long
recordings) on the page and through the API, what the model heard, refusals, and the model page."""

import base64
import io
import re

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image
from rest_framework.authtoken.models import Token

from jobs.models import Job
from tests.audio_fixtures import CLASSES, chirp, clip_arrays, tone, wav_bytes
from webapp.datasets.models import Dataset
from webapp.registry.models import TrainedModel
from webapp.registry.services import model_directory, model_register, prediction_create, prediction_with_heard

RATE = 16_000


@pytest.fixture(scope="session")
def speech_result():
    """cnn_mel trained on the three generated classes (low tone, high tone, rising chirp), on CPU."""
    from ml import TrainConfig, train
    from ml.data import AudioData

    x, y = clip_arrays(120, seed=0)
    data = AudioData(x_train=x[:96], y_train=y[:96], x_val=x[96:], y_val=y[96:], classes=list(CLASSES))
    config = TrainConfig.from_dict({"arch": "cnn_mel", "epochs": 8, "batch_size": 8, "augment": True, "seed": 0}, modality="audio")
    return train(config, data, device="cpu")


def clear_clip(label: str, seconds: float = 1.0, sample_rate: int = RATE) -> np.ndarray:
    """An unmistakable clip of a class: 0.6 s of tone or chirp in the middle of `seconds`, over the
    faint noise floor that every training clip (and every microphone) has."""
    sound = {"low": lambda: tone(320, 0.6, sample_rate), "high": lambda: tone(2200, 0.6, sample_rate),
             "sweep": lambda: chirp(300, 3000, 0.6, sample_rate)}[label]()
    out = np.random.default_rng(11).normal(0, 0.01, int(seconds * sample_rate)).astype(np.float32)
    start = (len(out) - len(sound)) // 2
    out[start:start + len(sound)] += sound
    return out


@pytest.fixture
def dataset(alice):
    return Dataset.objects.create(owner=alice, name="Tones", kind=Dataset.Kind.AUDIO, status=Dataset.Status.READY,
                                  classes=[{"name": c, "train": 32, "val": 8} for c in CLASSES])


@pytest.fixture
def model(dataset, speech_result):
    job = Job.objects.create(owner=dataset.owner, dataset=dataset, status=Job.Status.SUCCEEDED,
                             config={"arch": "cnn_mel", "epochs": 8})
    return model_register(job=job, result=speech_result)


def upload(name: str, data: bytes, content_type: str = "audio/wav"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


def predict(client, model, name: str, data: bytes, accept: str = "application/json"):
    return client.post(reverse("models:predict", args=[model.pk]), {"file": upload(name, data)},
                       headers={"Accept": accept})


# --- Registering --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_speech_model_is_registered_with_its_audio_input(model, speech_result):
    model.refresh_from_db()
    assert model.kind == "audio" and model.arch == "cnn_mel"
    assert model.classes == list(CLASSES)
    assert model.input_spec == {"kind": "audio", "sample_rate": RATE, "clip_samples": RATE}
    assert model.clip_seconds == 1.0
    assert model.metrics["val_acc"] >= 0.9, model.metrics  # the task is easy: it really learned
    assert sum(map(sum, model.confusion)) == 24
    assert sorted(p.name for p in model_directory(model).iterdir()) == ["model.json", "model.safetensors"]


# --- Predicting -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("label", CLASSES)
@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_the_service_predicts_the_right_class_of_clear_clips(model, label, fmt, subtype):
    data = wav_bytes(clear_clip(label), RATE, subtype, fmt)

    predictions = prediction_create(model=model, data=data, filename=f"{label}.{fmt.lower()}")

    assert predictions[0]["label"] == label, predictions
    assert sorted(p["label"] for p in predictions) == sorted(CLASSES)  # top 5 of 3 classes is 3
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.django_db
def test_any_rate_stereo_and_24_bit_are_resampled_and_mixed_inside_the_predictor(model):
    wave = clear_clip("high", sample_rate=44_100)
    stereo = np.stack([wave, wave * 0.5], axis=1)

    predictions = prediction_create(model=model, data=wav_bytes(stereo, 44_100, "PCM_24"), filename="hi.wav")

    assert predictions[0]["label"] == "high"


@pytest.mark.django_db
def test_a_long_recording_is_cut_to_its_loudest_part_and_the_page_is_told(model):
    # 3 s of a browser recording: quiet room noise, the word (a low tone) late in it.
    rng = np.random.default_rng(1)
    wave = rng.normal(0, 0.01, 3 * RATE).astype(np.float32)
    wave[int(1.9 * RATE):int(2.5 * RATE)] += tone(320, 0.6)
    data = wav_bytes(wave)

    predictions, heard = prediction_with_heard(model=model, data=data, filename="recording.wav")
    assert predictions[0]["label"] == "low"
    assert heard.fitted == "trimmed" and heard.seconds == pytest.approx(3.0) and heard.clip_seconds == 1.0
    assert not heard.silent
    assert "3.0 s long; the model listens to 1 s, so it heard the loudest part" in heard.note()
    image = Image.open(io.BytesIO(heard.spectrogram_png))
    assert image.format == "PNG" and image.width > image.height > 1


@pytest.mark.django_db
def test_a_silent_recording_is_noticed(model):
    _, heard = prediction_with_heard(model=model, data=wav_bytes(np.zeros(RATE // 2, dtype=np.float32)),
                                     filename="quiet.wav")

    assert heard.silent and heard.fitted == "padded"
    assert heard.note() == "The clip is silent (or almost): check the microphone or the file."


# --- The page's predict view ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("label, fmt", [("low", "WAV"), ("sweep", "FLAC")])
def test_the_page_answers_fetch_with_the_top_5_and_what_was_heard(alice_client, model, label, fmt):
    response = predict(alice_client, model, f"{label}.{fmt.lower()}", wav_bytes(clear_clip(label), fmt=fmt))

    assert response.status_code == 200
    body = response.json()
    assert body["file"] == f"{label}.{fmt.lower()}"
    assert body["predictions"][0]["label"] == label
    heard = body["heard"]
    assert heard["spectrogram"].startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(heard["spectrogram"].split(",", 1)[1]))).format == "PNG"
    assert (heard["seconds"], heard["clip_seconds"], heard["fitted"], heard["silent"]) == (1.0, 1.0, "", False)
    assert heard["note"] == ""


@pytest.mark.django_db
def test_without_javascript_the_page_plays_the_clip_back_and_shows_the_spectrogram(alice_client, model):
    data = wav_bytes(clear_clip("high"))

    response = predict(alice_client, model, "high.wav", data, accept="text/html")

    assert response.status_code == 200
    html = response.text
    assert '<strong id="top-label">high</strong>' in html
    assert f'<audio id="prediction-audio" controls preload="auto" src="data:audio/wav;base64,{base64.b64encode(data).decode()}"' in html
    assert re.search(r'<img id="prediction-spectrogram" alt="[^"]+" src="data:image/png;base64,', html)


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_a_non_audio_file_is_a_400_that_says_which_file_and_why(alice_client, model, accept):
    response = predict(alice_client, model, "notes.txt", b"just some text, not a sound", accept=accept)

    assert response.status_code == 400
    if accept == "application/json":
        body = response.json()
        assert set(body) == {"file", "error"} and body["file"] == "notes.txt"
        message = body["error"]
    else:
        message = re.search(r'<p id="prediction-error" class="message error" role="alert">([^<]*)</p>',
                            response.text).group(1)
        assert response.context["heard"] is None and "<li class=\"prediction\"" not in response.text
    assert message.startswith("notes.txt: not an audio file"), message


@pytest.mark.django_db
def test_an_image_sent_to_a_speech_model_is_refused_as_not_audio(alice_client, model):
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 200).save(buffer, "PNG")

    response = predict(alice_client, model, "photo.png", buffer.getvalue())

    assert response.status_code == 400
    assert response.json()["error"].startswith("photo.png: not an audio file")


@pytest.mark.django_db
def test_predict_without_a_file_asks_for_a_clip_or_a_recording(alice_client, model):
    response = alice_client.post(reverse("models:predict", args=[model.pk]), headers={"Accept": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"] == "Choose an audio file to upload, or record one."


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["models:detail", "models:predict"])
def test_bob_gets_404_on_alices_speech_model(bob_client, model, name):
    url = reverse(name, args=[model.pk])
    response = (bob_client.post(url, {"file": upload("low.wav", wav_bytes(clear_clip("low")))})
                if name == "models:predict" else bob_client.get(url))

    assert response.status_code == 404


# --- The API ----------------------------------------------------------------------------------


def api_client(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("label, fmt", [("high", "WAV"), ("low", "FLAC")])
def test_the_api_predicts_the_right_class(alice, model, label, fmt):
    data = wav_bytes(clear_clip(label), fmt=fmt)

    response = api_client(alice).post(f"/api/models/{model.pk}/predict/",
                                      {"file": upload(f"{label}.{fmt.lower()}", data)}, format="multipart")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == model.pk and body["predictions"][0]["label"] == label
    # what the model heard, as the page shows it: the clip fitted to its window, as a spectrogram
    heard = body["heard"]
    assert heard["spectrogram"].startswith("data:image/png;base64,") and heard["clip_seconds"] == 1.0
    assert heard["silent"] is False and heard["fitted"] in ("", "padded", "trimmed")


@pytest.mark.django_db
def test_the_api_refuses_a_non_audio_file_with_the_reason(alice, model):
    response = api_client(alice).post(f"/api/models/{model.pk}/predict/",
                                      {"file": upload("notes.txt", b"plain text")}, format="multipart")

    assert response.status_code == 400
    assert response.json()["file"][0].startswith("notes.txt: not an audio file")


@pytest.mark.django_db
def test_bob_gets_404_from_the_api(bob, model):
    response = api_client(bob).post(f"/api/models/{model.pk}/predict/",
                                    {"file": upload("low.wav", wav_bytes(clear_clip("low")))}, format="multipart")

    assert response.status_code == 404


# --- The model page ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_of_a_speech_model_offers_recording_and_audio_upload(alice_client, model):
    response = alice_client.get(reverse("models:detail", args=[model.pk]))

    assert response.status_code == 200
    html = response.text
    assert 'data-kind="audio"' in html
    assert 'accept="audio/*,.wav,.flac,.ogg,.oga,.opus,.mp3,.aif,.aiff"' in html
    assert re.search(r'<div id="recorder" class="recorder" data-max-seconds="3" hidden>', html)
    assert 'id="record-button"' in html and 'id="record-level"' in html and 'id="record-time"' in html
    assert "/static/js/recorder.js" in html and "/static/js/predict.js" in html
    assert "1 s clips at 16000 Hz, mono" in html
    assert "Validation clips." in html


@pytest.mark.django_db
def test_the_page_of_an_image_model_has_no_recorder(alice_client, alice):
    images = Dataset.objects.create(owner=alice, name="Shades", status=Dataset.Status.READY)
    model = TrainedModel.objects.create(owner=alice, dataset=images, name="Shades · seed_cnn", arch="seed_cnn",
                                        classes=["dark", "bright"], input_spec={"height": 8, "width": 8, "channels": 1})

    html = alice_client.get(reverse("models:detail", args=[model.pk])).text

    assert 'accept="image/*"' in html and 'data-kind="image"' in html
    assert 'id="recorder"' not in html and "recorder.js" not in html and 'id="prediction-audio"' not in html
    assert "8 × 8 pixels, grayscale" in html


@pytest.mark.django_db
def test_metrics_and_a_ten_word_confusion_matrix_render_with_the_words(alice_client, dataset):
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    confusion = [[9 if i == j else (1 if j == (i + 1) % 10 else 0) for j in range(10)] for i in range(10)]
    model = TrainedModel.objects.create(
        owner=dataset.owner, dataset=dataset, name="Digits · crnn", arch="crnn", classes=words,
        input_spec={"kind": "audio", "sample_rate": RATE, "clip_samples": RATE},
        metrics={"val_acc": 0.9, "val_loss": 0.31, "test_acc": 0.875, "test_loss": 0.4}, confusion=confusion)

    response = alice_client.get(reverse("models:detail", args=[model.pk]))

    html = response.text
    assert '<dd data-metric="val_acc">90.0 %</dd>' in html
    assert '<dd data-metric="test_acc">87.5 %</dd>' in html
    header = re.search(r'<table class="heatmap">\s*<thead><tr>(.*?)</tr></thead>', html, re.S).group(1)
    assert re.findall(r'<th scope="col">(\w+)</th>', header) == words
    assert 'class="hot diag strong" style="--v: 0.900" title="true seven, predicted seven: 9 of 10">9<' in html
    assert 'class="hot" style="--v: 0.100" title="true nine, predicted zero: 1 of 10">1<' in html
