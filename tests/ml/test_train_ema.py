"""Weight averaging (`ema`): validation and the final model use an exponential moving average of
the weights; off, training is what it always was; a checkpoint carries the average."""

import importlib

import pytest
import torch
from torch import nn

from ml import Cancelled, CheckpointError, ConfigError, TrainConfig, config_defaults, read_checkpoint_info, train
from ml.train import WeightAverage, choose_precision, evaluate, to_device_tensor

train_module = importlib.import_module("ml.train")  # `ml.train` is the function, once ml is imported

# 100 images in batches of 32: 4 steps an epoch, 12 in all. Decay 0.5: the first updates are
# capped by the polynomial warm-up ((n - 1) / (n + 2) < 0.5 until n = 4), the later ones are not.
# resnet: batch norm, whose running statistics are averaged too.
CONFIG = TrainConfig(arch="resnet", epochs=3, batch_size=32, ema=0.5)
PER_EPOCH = 4
METRICS = ("epoch", "step", "total_steps", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


@pytest.fixture(scope="module")
def data(make_brightness_data):
    return make_brightness_data(100, 20)


def run(config, data, **kwargs):
    return train(config, data, device="cpu", progress_interval=0, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(data):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture runs after module fixtures
    try:
        return run(CONFIG, data), run(TrainConfig(**{**CONFIG.to_dict(), "ema": 0.0}), data)
    finally:
        torch.set_num_threads(before)


def hand_rolled(snapshots, decay):
    """The average the docs promise: copy at the first update, then decay min(decay, (n-1)/(n+2))."""
    average = {}
    for n, weights in enumerate(snapshots, start=1):
        d = min(decay, (n - 1) / (n + 2))
        for name, w in weights.items():
            if n == 1 or not w.is_floating_point():
                average[name] = w.clone()
            else:
                average[name] = d * average[name] + (1 - d) * w
    return average


def assert_same_run(a, b):
    assert [{k: h[k] for k in METRICS} for h in a.history] == [{k: h[k] for k in METRICS} for h in b.history]
    assert a.confusion == b.confusion
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name


def test_the_average_copies_first_then_warms_up_to_the_decay_and_averages_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, 0.6)
    snapshots = []
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves the BatchNorm statistics and num_batches_tracked
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update(model)
    assert [round(min(0.6, (n - 1) / (n + 2)), 4) for n in range(1, 7)] == [0.0, 0.25, 0.4, 0.5, 0.5714, 0.6]
    expected = hand_rolled(snapshots, 0.6)
    state = average.module.state_dict()
    assert state["1.num_batches_tracked"] == 6  # an integer buffer is copied, not averaged
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert not torch.allclose(state["0.weight"], model.state_dict()["0.weight"])


def test_the_decay_must_be_between_zero_and_one():
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay must be between 0 and 1"):
            WeightAverage(nn.Linear(2, 2), decay)


def test_training_validates_and_returns_the_average_of_the_weights_after_each_step(data, monkeypatch):
    snapshots = []
    update = WeightAverage.update

    def spy(self, model):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        update(self, model)

    monkeypatch.setattr(WeightAverage, "update", spy)
    result = run(CONFIG, data)
    assert len(snapshots) == CONFIG.epochs * PER_EPOCH  # one update per optimizer step
    expected = hand_rolled(snapshots, CONFIG.ema)
    final = result.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=name)
    first = next(name for name, _ in result.model.named_parameters())
    assert not torch.equal(final[first], snapshots[-1][first])  # not the live weights
    assert any(name.endswith("running_var") for name in expected)  # batch norm statistics are averaged
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"
    # Validation, metrics and confusion are the returned (averaged) model's.
    dev = torch.device("cpu")
    val_loss, val_acc, confusion = evaluate(
        result.model, to_device_tensor(data.x_val, dev), torch.as_tensor(data.y_val).long(), num_classes=3,
        criterion=nn.CrossEntropyLoss(label_smoothing=CONFIG.label_smoothing), precision=choose_precision(dev))
    assert result.metrics["val_acc"] == result.history[-1]["val_acc"] == val_acc
    assert result.metrics["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert result.confusion == confusion


def test_with_ema_off_no_average_is_made_or_saved(data, uninterrupted, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("no weight average with ema=0")

    monkeypatch.setattr(train_module, "WeightAverage", refuse)
    off = TrainConfig(**{**CONFIG.to_dict(), "ema": 0.0})
    path = tmp_path / "run.ckpt"
    result = run(off, data, checkpoint_path=path)
    checkpoint = torch.load(path, weights_only=True)
    assert "ema" not in checkpoint and checkpoint["config"]["ema"] == 0.0
    assert_same_run(result, uninterrupted[1])
    # The average is a different model from the live weights it follows.
    first = next(name for name, _ in result.model.named_parameters())
    assert not torch.equal(result.model.state_dict()[first], uninterrupted[0].model.state_dict()[first])


def cancel_at(step):
    def callback(event):
        if event.kind == "step" and event.step == step:
            raise Cancelled

    return callback


@pytest.mark.parametrize("stops", [[2], [PER_EPOCH], [3, 7]], ids=["mid-epoch", "epoch-end", "twice"])
def test_a_run_with_ema_resumes_to_the_same_average(stops, data, uninterrupted, tmp_path):
    path = tmp_path / "run.ckpt"
    for step in stops:
        with pytest.raises(Cancelled):
            run(CONFIG, data, checkpoint_path=path, callbacks=[cancel_at(step)])
        assert read_checkpoint_info(path)["step"] == step
        saved = torch.load(path, weights_only=True)["ema"]
        assert saved["updates"] == step and saved["decay"] == CONFIG.ema
    assert_same_run(run(CONFIG, data, checkpoint_path=path), uninterrupted[0])


def test_a_run_killed_mid_epoch_resumes_to_the_same_average(data, uninterrupted, tmp_path):
    def kill(event):  # not Cancelled: nothing is saved on the way out, as when a worker dies
        if event.kind == "step" and event.step == 6:
            raise RuntimeError("killed")

    path = tmp_path / "run.ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        # A timed checkpoint after every step's event: step 5's is the last on disk.
        run(CONFIG, data, checkpoint_path=path, checkpoint_interval_s=0, callbacks=[kill])
    assert read_checkpoint_info(path)["step"] == 5
    assert_same_run(run(CONFIG, data, checkpoint_path=path), uninterrupted[0])


def legacy_checkpoint(data, tmp_path, *, step=5):
    """A checkpoint as written before `ema` existed: no "ema" in its config, no average."""
    path = tmp_path / "old.ckpt"
    with pytest.raises(Cancelled):
        run(TrainConfig(**{**CONFIG.to_dict(), "ema": 0.0}), data, checkpoint_path=path, callbacks=[cancel_at(step)])
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["ema"]
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_from_before_ema_resumes_unchanged_with_ema_off(data, uninterrupted, tmp_path):
    path = legacy_checkpoint(data, tmp_path)
    assert_same_run(run(TrainConfig(**{**CONFIG.to_dict(), "ema": 0.0}), data, checkpoint_path=path),
                    uninterrupted[1])


def test_a_checkpoint_from_before_ema_starts_the_average_from_its_weights(data, tmp_path, monkeypatch):
    path = legacy_checkpoint(data, tmp_path, step=5)
    started = []
    restart = WeightAverage.restart_from

    def spy(self, model):
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        restart(self, model)

    monkeypatch.setattr(WeightAverage, "restart_from", spy)
    saved_weights = torch.load(path, weights_only=True)["model"]
    result = run(CONFIG, data, checkpoint_path=path)
    assert len(started) == 1
    assert all(torch.equal(started[0][k], v) for k, v in saved_weights.items())
    assert len(result.history) == CONFIG.epochs
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["ema"] == CONFIG.ema
    assert saved["ema"]["updates"] == CONFIG.epochs * PER_EPOCH - 5  # the steps after the resume


def test_changing_ema_on_a_checkpoint_is_refused(data, tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        run(TrainConfig(**{**CONFIG.to_dict(), "ema": 0.0}), data, checkpoint_path=path, callbacks=[cancel_at(2)])
    with pytest.raises(CheckpointError, match="other settings.*ema 0.0 → 0.5"):
        run(CONFIG, data, checkpoint_path=path)


def test_a_checkpoint_with_ema_but_without_its_average_is_refused(data, tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        run(CONFIG, data, checkpoint_path=path, callbacks=[cancel_at(2)])
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["ema"]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="does not fit this run.*ema"):
        run(CONFIG, data, checkpoint_path=path)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 0.999, 0.9999])
def test_ema_accepts_decays_from_zero_below_one(value):
    assert TrainConfig.from_dict({"ema": value}).ema == float(value)


@pytest.mark.parametrize("value", [1, 1.0, 0.99995, -0.01, 2])
def test_ema_refuses_one_and_beyond_naming_the_range(value):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"ema": value})
    assert error.value.field == "ema"
    assert error.value.message.startswith("ema must be between 0 and 0.9999")


def test_ema_is_on_for_speech_and_off_for_images_by_default():
    assert config_defaults("image")["ema"] == TrainConfig().ema == 0.0
    assert 0.9 < config_defaults("audio")["ema"] < 1.0


def test_out_of_memory_retries_update_the_average_once_per_step_and_evaluate_it(data, uninterrupted, tmp_path):
    from tests.ml.test_oom import gpu_memory_for

    path = tmp_path / "run.ckpt"
    with gpu_memory_for(10):  # training: 32 → 2 × 16 → 4 × 8, retrying the first step twice
        result = run(CONFIG, data, checkpoint_path=path)
    assert (result.batch_size, result.accumulation) == (8, 4)
    assert torch.load(path, weights_only=True)["ema"]["updates"] == CONFIG.epochs * PER_EPOCH

    events = []
    with gpu_memory_for(5, training=False):  # evaluation of the average halves its batch
        result = run(CONFIG, data, callbacks=[events.append])
    assert any(e.kind == "notice" and "evaluating" in e.message for e in events)
    expected = uninterrupted[0]
    assert [h["val_acc"] for h in result.history] == [h["val_acc"] for h in expected.history]
    assert result.confusion == expected.confusion
    assert result.metrics["val_loss"] == pytest.approx(expected.metrics["val_loss"], rel=1e-5)
