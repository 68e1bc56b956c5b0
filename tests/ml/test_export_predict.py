import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ml import Predictor, TrainConfig, load_predictor, save_model, train
from ml.images import ImageDecodeError


@pytest.fixture(scope="module")
def rgb_result(make_brightness_data):
    data = make_brightness_data(64, 16, size=(12, 10))
    return train(TrainConfig(arch="resnet", epochs=1, batch_size=32), data, device="cpu")


@pytest.fixture
def saved(rgb_result, tmp_path):
    save_model(rgb_result, tmp_path / "model")
    return tmp_path / "model"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def model_probabilities(model, array: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(array).permute(2, 0, 1)[None]
        return torch.softmax(model(x), dim=1)[0].numpy()


def test_save_writes_weights_and_a_self_describing_json(rgb_result, tmp_path):
    paths = save_model(rgb_result, tmp_path / "new" / "folder")
    assert sorted(p.name for p in paths) == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "new" / "folder" / "model.json").read_text())
    assert meta["format"] == "perceptor-model/1"
    assert meta["arch"] == "resnet" and meta["arch_args"] == rgb_result.model.arch_args
    assert meta["classes"] == ["class0", "class1", "class2"]
    assert meta["input"] == {"height": 12, "width": 10, "channels": 3, "dtype": "uint8", "layout": "NCHW"}
    assert meta["preprocessing"]["mean"] == pytest.approx(rgb_result.model.preprocess.mean.flatten().tolist())
    assert meta["preprocessing"]["resize"] == "bilinear squash"
    assert meta["metrics"] == rgb_result.metrics
    assert meta["config"] == rgb_result.config.to_dict()
    assert meta["torch"] == torch.__version__ and meta["created"].endswith("+00:00")
    tensors = load_file(tmp_path / "new" / "folder" / "model.safetensors")
    assert set(tensors) == set(rgb_result.model.state_dict())
    assert "preprocess.mean" in tensors and "preprocess.std" in tensors
    assert not list((tmp_path / "new" / "folder").glob(".*.tmp"))  # no leftovers from atomic writes


def test_loaded_model_predicts_exactly_what_the_trained_one_did_from_arrays_and_bytes(rgb_result, saved):
    predictor = load_predictor(saved)
    assert isinstance(predictor, Predictor)
    image = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    expected = model_probabilities(rgb_result.model, image)
    from_array = predictor.predict(image, top_k=None)
    from_bytes = predictor.predict(png_bytes(image), top_k=None)  # PNG is lossless: same pixels
    assert from_array == from_bytes
    assert dict(from_array) == pytest.approx({c: float(p) for c, p in zip(predictor.classes, expected)}, abs=1e-6)


def test_predictions_are_sorted_best_first_and_top_k_is_clamped(saved):
    predictor = load_predictor(saved)
    image = np.full((12, 10, 3), 200, dtype=np.uint8)
    everything = predictor.predict(image, top_k=None)
    probs = [p for _, p in everything]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert predictor.predict(image, top_k=1) == everything[:1]
    assert predictor.predict(image, top_k=99) == everything
    assert predictor.predict(image, top_k=0) == everything[:1]


def test_bytes_of_any_size_are_squashed_to_the_model_input(saved):
    predictor = load_predictor(saved)
    big = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    result = predictor.predict(png_bytes(big))
    assert len(result) == 3 and {label for label, _ in result} == set(predictor.classes)


def test_predict_batch_equals_one_by_one(saved):
    predictor = load_predictor(saved)
    images = np.random.default_rng(3).integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    batch = predictor.predict_batch(images, top_k=2)
    singles = [predictor.predict(image, top_k=2) for image in images]
    assert [[label for label, _ in r] for r in batch] == [[label for label, _ in r] for r in singles]
    for r_batch, r_single in zip(batch, singles, strict=True):
        assert [p for _, p in r_batch] == pytest.approx([p for _, p in r_single], abs=1e-6)
    assert predictor.predict_batch([]) == []


def test_bad_bytes_and_wrong_arrays_raise_image_decode_error(saved):
    predictor = load_predictor(saved)
    with pytest.raises(ImageDecodeError, match="not an image"):
        predictor.predict(b"certainly not a png")
    with pytest.raises(ImageDecodeError, match=r"expected an array of shape \(12, 10, 3\)"):
        predictor.predict(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="0..255"):
        predictor.predict(np.full((12, 10, 3), 300.0))
    with pytest.raises(TypeError, match="image bytes or a numpy array"):
        predictor.predict("cat.jpg")


def test_a_grayscale_model_accepts_colour_uploads_and_2d_arrays(tmp_path, make_brightness_data):
    result = train(TrainConfig(arch="seed_cnn", epochs=1, batch_size=16),
                   make_brightness_data(32, 8, size=(8, 8), channels=1), device="cpu")
    save_model(result, tmp_path)
    predictor = load_predictor(tmp_path)
    gray = np.random.default_rng(4).integers(0, 256, (8, 8), dtype=np.uint8)
    assert predictor.predict(gray, top_k=None) == predictor.predict(gray[:, :, None], top_k=None)
    colour = np.stack([gray] * 3, axis=-1)
    assert predictor.predict(png_bytes(colour), top_k=None) == predictor.predict(gray, top_k=None)


def test_predictor_is_safe_to_share_between_threads(saved):
    predictor = load_predictor(saved)
    images = list(np.random.default_rng(5).integers(0, 256, (16, 12, 10, 3), dtype=np.uint8))
    expected = [predictor.predict(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(predictor.predict, images)) == expected


def test_load_refuses_folders_that_are_not_models(saved, tmp_path):
    with pytest.raises(ValueError, match="no model.json"):
        load_predictor(tmp_path / "empty")

    meta = json.loads((saved / "model.json").read_text())
    (saved / "model.json").write_text(json.dumps({**meta, "format": "perceptor-model/9"}))
    with pytest.raises(ValueError, match="unsupported model format"):
        load_predictor(saved)

    (saved / "model.json").write_text(json.dumps({**meta, "arch": "vgg"}))
    with pytest.raises(ValueError, match="Unknown architecture 'vgg'"):
        load_predictor(saved)

    (saved / "model.json").write_text(json.dumps({**meta, "classes": ["just", "two"]}))
    with pytest.raises(ValueError, match="weights do not match"):
        load_predictor(saved)

    (saved / "model.json").write_text(json.dumps(meta))
    (saved / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_predictor(saved)


def test_an_ingested_archive_trains_saves_and_predicts_end_to_end(tmp_path):
    """The whole ml/ pipeline as jobs use it: ingest (ml.ingest) → load → train → save → predict."""
    from ml import load_image_dataset
    from ml.ingest import ingest_image_archive
    from ml.synthetic import image_bytes, render_shape, write_shapes_archive

    archive = write_shapes_archive(tmp_path / "shapes.zip", classes=["circle", "square"], per_class=12, size=16)
    ingest_image_archive(archive, tmp_path / "dataset", image_size=16, val_fraction=0.25)
    data = load_image_dataset(tmp_path / "dataset")
    assert data.classes == ["circle", "square"] and (data.height, data.width) == (16, 16)
    result = train(TrainConfig(arch="seed_cnn", epochs=1, batch_size=8), data, device="cpu")
    save_model(result, tmp_path / "model")
    predictor = load_predictor(tmp_path / "model")
    upload = image_bytes(render_shape("circle", size=40, rng=np.random.default_rng(7)))
    labels = [label for label, _ in predictor.predict(upload)]
    assert sorted(labels) == ["circle", "square"]
