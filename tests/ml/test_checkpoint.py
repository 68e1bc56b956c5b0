"""Checkpoint and resume inside ml.train: a stopped run carries on as if it had never stopped."""

import importlib
import itertools
import os
import types

import numpy as np
import pytest
import torch

import ml.checkpoint
from ml import Cancelled, CheckpointError, TrainConfig, read_checkpoint_info, train

train_module = importlib.import_module("ml.train")  # `ml.train` is the function, once ml is imported

# resnet with augmentation: the data order and the augmentation draws must both survive a resume.
CONFIG = TrainConfig(arch="resnet", epochs=3, batch_size=32)
PER_EPOCH = 4  # 100 images in batches of 32: 32, 32, 32, 4
METRICS = ("epoch", "step", "total_steps", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


@pytest.fixture(scope="module")
def data(make_brightness_data):
    return make_brightness_data(100, 20)


@pytest.fixture(scope="module")
def uninterrupted(data):
    # Module-scoped fixtures run before the autouse one thread setting; use the same, or the
    # float reductions (and so the bits) could differ from the resumed runs'.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        events = []
        result = train(CONFIG, data, device="cpu", progress_interval=0, callbacks=[events.append])
    finally:
        torch.set_num_threads(before)
    return result, events


def cancel_at(kind, step, seen):
    def callback(event):
        seen.append(event)
        if event.kind == kind and event.step == step:
            raise Cancelled

    return callback


def assert_same_run(a, b):
    assert [{k: h[k] for k in METRICS} for h in a.history] == [{k: h[k] for k in METRICS} for h in b.history]
    assert a.confusion == b.confusion
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name


def ids(events):
    return [(e.kind, e.epoch, e.step) for e in events]


@pytest.mark.parametrize(
    "stops",
    [
        [("epoch", PER_EPOCH)],  # after epoch 1's event
        [("step", 2)],  # mid-epoch
        [("step", PER_EPOCH)],  # after epoch 1's last step, before its evaluation
        [("step", 2), ("step", 7), ("epoch", 2 * PER_EPOCH)],  # stopped again and again
    ],
    ids=["after-epoch", "mid-epoch", "before-evaluation", "three-times"],
)
def test_a_cancelled_run_resumes_to_the_same_model_and_events(stops, data, uninterrupted, tmp_path):
    expected, expected_events = uninterrupted
    path = tmp_path / "run.ckpt"
    seen = []
    for kind, step in stops:
        with pytest.raises(Cancelled):
            train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
                  callbacks=[cancel_at(kind, step, seen)])
        assert read_checkpoint_info(path)["step"] == step
    result = train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[seen.append])

    # Every step and epoch exactly once, in order, across the stops, with the same figures.
    assert ids(seen) == ids(expected_events)
    assert [(e.train_loss, e.train_acc, e.lr) for e in seen] == [
        (e.train_loss, e.train_acc, e.lr) for e in expected_events
    ]
    assert_same_run(result, expected)
    assert len(result.history) == CONFIG.epochs
    assert (result.batch_size, result.accumulation) == (32, 1)
    # Elapsed time carries on over the resumes instead of starting again.
    assert [e.elapsed_s for e in seen] == sorted(e.elapsed_s for e in seen)


def test_the_checkpoint_is_plain_data_that_loads_with_weights_only(data, tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("step", 6, [])])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format"] == "perceptor-checkpoint/1"
    assert checkpoint["config"] == CONFIG.to_dict()
    assert (checkpoint["epoch"], checkpoint["position"], checkpoint["step"]) == (1, 2, 6)
    assert checkpoint["total_steps"] == 3 * PER_EPOCH
    assert [h["epoch"] for h in checkpoint["history"]] == [1]
    assert (checkpoint["batch_size"], checkpoint["accumulation"], checkpoint["effective_batch_size"]) == (32, 1, 32)
    assert checkpoint["classes"] == data.classes
    assert checkpoint["input_spec"] == {"height": 16, "width": 16, "channels": 3}
    assert len(checkpoint["mean"]) == len(checkpoint["std"]) == 3
    assert set(checkpoint["rng"]) >= {"torch", "cuda", "numpy", "python", "generator", "epoch_generator"}
    assert checkpoint["fingerprint"]["train_shape"] == [100, 16, 16, 3]
    assert {"model", "optimizer", "scheduler"} <= set(checkpoint)
    assert not (tmp_path / "run.ckpt.tmp").exists()


def test_read_checkpoint_info_reports_progress_without_a_model(data, tmp_path):
    path = tmp_path / "run.ckpt"
    assert read_checkpoint_info(path) is None
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("epoch", 2 * PER_EPOCH, [])])
    info = read_checkpoint_info(path)
    assert set(info) == {"epoch", "step", "total_steps", "history", "batch_size", "accumulation"}
    assert (info["epoch"], info["step"], info["total_steps"]) == (2, 2 * PER_EPOCH, 3 * PER_EPOCH)
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    assert (info["batch_size"], info["accumulation"]) == (32, 1)


def test_every_epoch_writes_a_checkpoint(data, tmp_path):
    path = tmp_path / "run.ckpt"
    steps = []

    def on_event(event):
        if event.kind == "epoch" and event.epoch > 1:
            steps.append(read_checkpoint_info(path)["step"])  # written after the previous epoch event

    result = train(CONFIG, data, device="cpu", checkpoint_path=path, callbacks=[on_event])
    assert steps == [PER_EPOCH, 2 * PER_EPOCH]
    assert read_checkpoint_info(path)["step"] == 3 * PER_EPOCH  # kept at the end: the caller removes it
    # A finished checkpoint gives the result back without training (a worker killed before it
    # stored the model): no events, same model.
    events = []
    again = train(CONFIG, data, device="cpu", checkpoint_path=path, callbacks=[events.append])
    assert events == []
    assert_same_run(again, result)


@pytest.mark.parametrize(
    ("config", "change", "words"),
    [
        ({"epochs": 4}, {}, r"other settings \(epochs 3 → 4\)"),
        ({}, {"y_train": lambda d: np.roll(d.y_train, 1)}, r"other data \(differs in: labels\)"),
        ({}, {"x_train": lambda d: d.x_train + np.uint8(1)}, r"other data \(differs in: images\)"),
        ({}, {"x_val": lambda d: d.x_val[:10], "y_val": lambda d: d.y_val[:10]},
         r"other data \(differs in: val_shape \[20, 16, 16, 3\] → \[10, 16, 16, 3\]\)"),
        ({}, {"classes": lambda d: ["a", "b", "c"]}, r"other data \(differs in: classes \['class0'"),
    ],
    ids=["settings", "labels", "images", "shapes", "classes"],
)
def test_a_checkpoint_of_other_data_or_settings_is_refused(config, change, words, data, tmp_path):
    from ml import ImageData

    path = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("step", 1, [])])
    before = path.read_bytes()
    fields = {"x_train": data.x_train, "y_train": data.y_train, "x_val": data.x_val, "y_val": data.y_val,
              "classes": data.classes}
    other = ImageData(**{**fields, **{name: make(data) for name, make in change.items()}})
    with pytest.raises(CheckpointError, match=words):
        train({**CONFIG.to_dict(), **config}, other, device="cpu", checkpoint_path=path)
    assert path.read_bytes() == before  # refused, not overwritten


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None], ids=["empty", "garbage", "other-torch-file"])
def test_an_unreadable_checkpoint_is_refused_with_a_reason(content, data, tmp_path):
    path = tmp_path / "run.ckpt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
        words = "is not a perceptor-checkpoint/1 checkpoint"
    else:
        path.write_bytes(content)
        words = "cannot be read"
    with pytest.raises(CheckpointError, match=words):
        train(CONFIG, data, device="cpu", checkpoint_path=path)
    with pytest.raises(CheckpointError, match=words):
        read_checkpoint_info(path)


def test_a_crash_between_write_and_rename_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "run.ckpt"
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("epoch", PER_EPOCH, [])])
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("killed between the write and the rename")

    monkeypatch.setattr(ml.checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="killed between"):
        train(CONFIG, data, device="cpu", checkpoint_path=path)
    assert path.read_bytes() == before
    assert (folder / "run.ckpt.tmp").exists()  # the half-done new one, never renamed
    monkeypatch.undo()
    assert read_checkpoint_info(path)["epoch"] == 1
    # The leftover temporary file does not stand in the way of the next write.
    result = train(CONFIG, data, device="cpu", checkpoint_path=path)
    assert len(result.history) == 3 and read_checkpoint_info(path)["epoch"] == 3
    assert os.listdir(folder) == ["run.ckpt"]


def test_a_cancel_still_stops_when_its_checkpoint_cannot_be_written(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("epoch", PER_EPOCH, [])])

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ml.checkpoint.os, "replace", disk_full)
    with pytest.raises(Cancelled) as stopped:
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("step", 6, [])])
    assert "No checkpoint was written on cancel" in stopped.value.__notes__[0]
    monkeypatch.undo()
    assert read_checkpoint_info(path)["step"] == PER_EPOCH  # the epoch-1 checkpoint, whole


def test_without_a_checkpoint_path_nothing_is_written(data, tmp_path, monkeypatch):
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, callbacks=[cancel_at("step", 5, [])])
    assert os.listdir(folder) == []


def test_a_checkpoint_from_another_kind_of_device_resumes_with_another_data_order(data, tmp_path):
    # CPU and CUDA generators have different states; simulate a GPU run's checkpoint on CPU.
    path = tmp_path / "run.ckpt"
    seen = []
    with pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path,
              callbacks=[cancel_at("step", 6, seen)])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["rng"]["generator_device"] = "cuda"
    checkpoint["rng"]["generator"] = checkpoint["rng"]["epoch_generator"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(checkpoint, path)
    result = train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[seen.append])
    assert [e.step for e in seen if e.kind == "step"] == list(range(1, 3 * PER_EPOCH + 1))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_resumes_on_cuda_and_on_cpu(data, tmp_path):
    events = []
    expected = train(CONFIG, data, device="cuda", progress_interval=0, callbacks=[events.append])
    for resume_on in ("cuda", "cpu"):
        path = tmp_path / f"{resume_on}.ckpt"
        seen = []
        with pytest.raises(Cancelled):
            train(CONFIG, data, device="cuda", progress_interval=0, checkpoint_path=path,
                  callbacks=[cancel_at("step", 6, seen)])
        result = train(CONFIG, data, device=resume_on, progress_interval=0, checkpoint_path=path,
                       callbacks=[seen.append])
        assert ids(seen) == ids(events)
        assert result.metrics["val_acc"] >= 0.9
        if resume_on == "cuda":  # same device, same data order: the same curve, up to GPU nondeterminism
            for a, b in zip(result.history, expected.history, strict=True):
                assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.05)


class Killed(Exception):
    """A worker killed without warning: not Cancelled, so no checkpoint is written on the way out."""


def kill_at(step, seen):
    def callback(event):
        if event.kind == "step" and event.step == step:
            raise Killed
        seen.append(event)

    return callback


@pytest.mark.parametrize("killed_at", [3, 7], ids=["first-epoch", "second-epoch"])
def test_it_resumes_mid_epoch_after_the_worker_is_killed(killed_at, data, uninterrupted, tmp_path):
    expected, expected_events = uninterrupted
    path = tmp_path / "run.ckpt"
    seen = []
    # An interval of 0: every step boundary is past it, so the last write is the step before the kill.
    with pytest.raises(Killed):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path, checkpoint_interval_s=0,
              callbacks=[kill_at(killed_at, seen)])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == killed_at - 1
    assert 0 < checkpoint["position"] < PER_EPOCH  # mid-epoch, not an epoch end
    assert checkpoint["step"] == read_checkpoint_info(path)["step"]

    result = train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path, checkpoint_interval_s=0,
                   callbacks=[seen.append])
    assert ids(seen) == ids(expected_events)
    assert [(e.train_loss, e.train_acc, e.lr) for e in seen] == [
        (e.train_loss, e.train_acc, e.lr) for e in expected_events
    ]
    assert_same_run(result, expected)


def test_a_timed_checkpoint_is_written_only_once_the_interval_has_passed(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    written = []
    write = train_module.write_checkpoint

    def spy(p, checkpoint):
        written.append(checkpoint["step"])
        write(p, checkpoint)

    monkeypatch.setattr(train_module, "write_checkpoint", spy)
    clock = itertools.count(0, 10)  # every look at the clock is 10 s later
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    train(CONFIG, data, device="cpu", checkpoint_path=path, checkpoint_interval_s=3600)
    assert written == [PER_EPOCH, 2 * PER_EPOCH, 3 * PER_EPOCH]  # epoch ends only: an hour never passed
    written.clear()
    path.unlink()
    train(CONFIG, data, device="cpu", checkpoint_path=path, checkpoint_interval_s=1)
    assert sorted(set(written)) == list(range(1, 3 * PER_EPOCH + 1))  # every step: 10 s > 1 s


def test_without_an_interval_only_epochs_and_cancels_write_checkpoints(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    written = []
    write = train_module.write_checkpoint
    monkeypatch.setattr(train_module, "write_checkpoint", lambda p, c: (written.append(c["step"]), write(p, c)))
    with pytest.raises(Killed):
        train(CONFIG, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[kill_at(7, [])])
    assert written == [PER_EPOCH]
    assert read_checkpoint_info(path)["step"] == PER_EPOCH  # a kill loses the rest of the epoch


def test_a_checkpoint_interval_without_a_path_writes_nothing(data, tmp_path, monkeypatch):
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    train(CONFIG, data, device="cpu", checkpoint_interval_s=0)
    assert os.listdir(folder) == []


def test_a_negative_checkpoint_interval_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_interval_s must be"):
        train(CONFIG, data, device="cpu", checkpoint_path=tmp_path / "run.ckpt", checkpoint_interval_s=-1)
