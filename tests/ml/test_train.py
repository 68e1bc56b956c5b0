import json
import math

import numpy as np
import pytest

from ml import Cancelled, ImageData, ProgressEvent, TrainConfig, load_image_dataset, train
from ml.train import Diverged, augment_batch, one_cycle, steps_per_epoch

FAST = {"epochs": 1, "batch_size": 32}


@pytest.mark.parametrize(
    ("arch", "recipe"),
    [
        ("seed_cnn", {"optimizer": "adam", "lr": 3e-3, "epochs": 50}),
        ("resnet", {"optimizer": "adamw", "lr": 1e-2, "epochs": 15}),
    ],
)
def test_each_arch_overfits_a_tiny_batch(arch, recipe, make_noise_data):
    # Random pixels, random labels: only memorising can fit them. One batch, one step per epoch.
    data = make_noise_data(16, size=(16, 16), num_classes=4)
    config = TrainConfig(arch=arch, batch_size=16, augment=False, label_smoothing=0.0, weight_decay=0.0, **recipe)
    result = train(config, data, device="cpu")
    assert result.metrics["train_acc"] >= 0.95
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 4


@pytest.mark.parametrize("arch", ["seed_cnn", "resnet"])
def test_a_learnable_task_ends_well_above_chance_on_validation(arch, make_brightness_data):
    data = make_brightness_data(240, 60, num_classes=3)
    result = train(TrainConfig(arch=arch, epochs=4, batch_size=32), data, device="cpu")
    assert result.metrics["val_acc"] >= 0.9  # chance is 1/3
    assert result.metrics["val_loss"] < math.log(3)


def test_result_describes_the_run(make_brightness_data):
    data = make_brightness_data(64, 30, size=(12, 10), num_classes=3)
    result = train(TrainConfig(arch="seed_cnn", epochs=2, batch_size=32), data, device="cpu")
    assert result.classes == ["class0", "class1", "class2"]
    assert result.input_spec == {"height": 12, "width": 10, "channels": 3}
    assert result.device == "cpu"
    assert not result.model.training
    assert next(result.model.parameters()).device.type == "cpu"
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert set(result.metrics) == {"val_acc", "val_loss", "train_acc", "train_loss", "samples_per_s", "duration_s"}
    assert all(isinstance(v, float) for v in result.metrics.values())
    # Confusion: rows are the true classes of the 30 validation images.
    confusion = np.array(result.confusion)
    assert confusion.shape == (3, 3)
    assert confusion.sum(axis=1).tolist() == np.bincount(data.y_val, minlength=3).tolist()
    assert np.trace(confusion) / 30 == pytest.approx(result.metrics["val_acc"])


def test_step_and_epoch_events_arrive_with_sane_fields(make_brightness_data):
    data = make_brightness_data(100, 20)
    events: list[ProgressEvent] = []
    train(TrainConfig(arch="seed_cnn", epochs=2, batch_size=32), data, callbacks=[events.append],
          device="cpu", progress_interval=0)
    per_epoch = 4  # 100 images in batches of 32: 32, 32, 32, 4
    steps = [e for e in events if e.kind == "step"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.step for e in steps] == list(range(1, 2 * per_epoch + 1))
    assert [(e.epoch, e.step) for e in epochs] == [(1, per_epoch), (2, 2 * per_epoch)]
    assert events[per_epoch].kind == "epoch"  # the epoch event follows its last step
    for e in events:
        assert e.epochs == 2 and e.total_steps == 2 * per_epoch
        assert 0 <= e.train_acc <= 1 and e.train_loss > 0
        assert e.lr > 0 and e.samples_per_s > 0 and e.elapsed_s > 0
    assert all(e.val_loss is None and e.val_acc is None for e in steps)
    assert all(e.val_loss > 0 and 0 <= e.val_acc <= 1 for e in epochs)
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)
    # One-cycle: the rate rises, then falls to near zero at the end.
    lrs = [e.lr for e in steps]
    assert max(lrs) > lrs[0] and lrs[-1] < max(lrs) / 4


def test_step_events_are_throttled_but_epoch_events_always_come(make_brightness_data):
    events = []
    train(TrainConfig(arch="seed_cnn", epochs=3, batch_size=8), make_brightness_data(64, 8),
          callbacks=[events.append], device="cpu", progress_interval=3600)
    kinds = [e.kind for e in events]
    assert kinds.count("epoch") == 3
    assert kinds.count("step") == 1  # the first step reports at once, then the hour never passes


def test_a_callback_raising_cancelled_stops_training(make_brightness_data):
    seen = []

    def cancel_on_third_step(event):
        seen.append(event)
        if event.step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        train(TrainConfig(arch="seed_cnn", epochs=5, batch_size=8), make_brightness_data(64, 8),
              callbacks=[cancel_on_third_step], device="cpu", progress_interval=0)
    assert [e.step for e in seen] == [1, 2, 3]


def test_without_validation_images_val_metrics_are_none(make_noise_data):
    result = train(TrainConfig(arch="seed_cnn", **FAST), make_noise_data(20), device="cpu")
    assert result.metrics["val_acc"] is None and result.metrics["val_loss"] is None
    assert result.history[0]["val_acc"] is None
    assert result.confusion == []


def test_a_batch_larger_than_the_dataset_still_trains(make_brightness_data):
    events = []
    result = train(TrainConfig(arch="resnet", epochs=2, batch_size=4096), make_brightness_data(10, 4),
                   callbacks=[events.append], device="cpu")
    assert events[-1].total_steps == 2
    assert result.metrics["train_acc"] is not None


def test_the_same_seed_trains_the_same_model(make_brightness_data):
    data = make_brightness_data(48, 12)
    config = TrainConfig(arch="resnet", epochs=1, batch_size=16)
    a, b = train(config, data, device="cpu"), train(config, data, device="cpu")
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert np.array_equal(pa.numpy(), pb.numpy()), name


def test_a_dict_config_is_validated_like_from_dict(make_noise_data):
    from ml import ConfigError

    with pytest.raises(ConfigError) as error:
        train({"epochs": 0}, make_noise_data(), device="cpu")
    assert error.value.field == "epochs"


def test_labels_outside_the_classes_are_refused_before_training(make_noise_data):
    data = make_noise_data(8, num_classes=2)
    data.y_train[0] = 5
    with pytest.raises(ValueError, match="class indices 0..1"):
        train(TrainConfig(**FAST), data, device="cpu")


def test_a_diverging_run_stops_with_a_reason(make_brightness_data):
    data = make_brightness_data(64, 8)
    with pytest.raises(Diverged, match="Try a lower learning rate"):
        train(TrainConfig(arch="seed_cnn", optimizer="sgd", lr=10.0, epochs=3, batch_size=16), data,
              device="cpu", progress_interval=0)


def test_augmentation_shifts_and_flips_whole_batches_without_inventing_pixels():
    import torch

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    outs = [augment_batch(x, generator=g, shift=1) for _ in range(20)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    # Every output pixel comes from the same image and channel (reflection, no zero fill).
    for o in outs:
        for i in range(2):
            for c in range(3):
                assert set(o[i, c].flatten().tolist()) <= set(x[i, c].flatten().tolist())
    assert any(not torch.equal(o, x) for o in outs)


def test_one_cycle_warms_up_then_anneals_to_zero():
    f = one_cycle(100)
    assert f(0) == pytest.approx(0.1) and f(25) == pytest.approx(1.0) and f(100) == pytest.approx(0.0)
    assert one_cycle(1)(0) == pytest.approx(0.1)  # a one-step run still has a learning rate


def test_steps_per_epoch_drops_only_a_last_single_image():
    assert steps_per_epoch(100, 32) == 4
    assert steps_per_epoch(97, 32) == 3  # 32, 32, 32 and one image that sits this epoch out
    assert steps_per_epoch(10, 4096) == 1
    assert steps_per_epoch(1, 2) == 1


def write_dataset(directory, x, y, num_train, classes, overrides=None):
    np.save(directory / "images.npy", x)
    np.save(directory / "labels.npy", y)
    meta = {"format": "perceptor-images/1", "classes": classes, "height": x.shape[1], "width": x.shape[2],
            "channels": x.shape[3], "num_train": num_train, "num_val": len(x) - num_train, **(overrides or {})}
    (directory / "dataset.json").write_text(json.dumps(meta))


def test_load_image_dataset_memory_maps_train_then_val(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 6, 1), dtype=np.uint8)
    y = np.arange(10, dtype=np.int64) % 2
    write_dataset(tmp_path, x, y, 7, ["a", "b"])
    data = load_image_dataset(tmp_path)
    assert isinstance(data, ImageData)
    assert np.array_equal(data.x_train, x[:7]) and np.array_equal(data.x_val, x[7:])
    assert np.array_equal(data.y_train, y[:7]) and np.array_equal(data.y_val, y[7:])
    assert isinstance(data.x_train.base, np.memmap) or isinstance(data.x_train, np.memmap)
    assert (data.height, data.width, data.channels, data.classes) == (8, 6, 1, ["a", "b"])


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        ({"format": "something/2"}, "unsupported dataset format"),
        ({"num_train": 9, "num_val": 9}, r"says 9 \+ 9 samples"),
        ({"classes": ["only"]}, "at least 2 classes"),
    ],
)
def test_load_image_dataset_refuses_inconsistent_folders(tmp_path, meta, words):
    x = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    write_dataset(tmp_path, x, np.array([0, 1, 0, 0]), 3, ["a", "b"], meta)
    with pytest.raises(ValueError, match=words):
        load_image_dataset(tmp_path)


def test_load_image_dataset_says_when_a_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="no dataset.json"):
        load_image_dataset(tmp_path)
