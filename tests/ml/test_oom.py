"""GPU out-of-memory inside ml.train, simulated on CPU: a global forward hook raises
torch.OutOfMemoryError (what CUDA raises) whenever a forward pass gets more images than a limit."""

import contextlib

import pytest
import torch
from torch import nn

from ml import Cancelled, TrainConfig, read_checkpoint_info, train
from ml.train import Precision, accumulate_gradients

CONFIG = TrainConfig(arch="seed_cnn", epochs=3, batch_size=32)
PER_EPOCH = 8  # 240 images in batches of 32: 7 × 32 and one of 16


@contextlib.contextmanager
def gpu_memory_for(images, *, training=True, sizes=None):
    """Forward passes over more than `images` images run out of "GPU memory". Only passes that
    record gradients (training) unless `training` is False (evaluation)."""

    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor) or module.__class__.__name__ != "Classifier":
            return
        if torch.is_grad_enabled() != training:
            return
        n = len(args[0])
        if n > images:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {n} images > {images})")
        if sizes is not None:
            sizes.append(n)

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def data(make_brightness_data):
    return make_brightness_data(240, 60)


def test_out_of_memory_halves_the_batch_keeps_the_effective_batch_and_still_learns(data):
    events, sizes = [], []
    with gpu_memory_for(10, sizes=sizes):
        result = train(CONFIG, data, device="cpu", progress_interval=0, callbacks=[events.append])

    notices = [e for e in events if e.kind == "notice"]
    assert [e.message for e in notices] == [
        "Out of GPU memory at batch 32: continuing with 2 × 16",
        "Out of GPU memory at batch 16: continuing with 4 × 8",
    ]
    assert all(e.step == 0 and e.epoch == 1 for e in notices)  # the first step, retried
    assert (result.batch_size, result.accumulation) == (8, 4)
    # The same steps as without the out-of-memory: 32 images per step, in micro-batches of 8.
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == list(range(1, 3 * PER_EPOCH + 1))
    assert max(sizes) == 8 and sum(sizes) == 3 * 240
    assert result.metrics["val_acc"] >= 0.9  # chance is 1/3
    assert all(e.message == "" for e in events if e.kind != "notice")


def test_repeated_out_of_memory_finally_raises(data):
    events = []
    with gpu_memory_for(0), pytest.raises(torch.OutOfMemoryError):
        train(CONFIG, data, device="cpu", callbacks=[events.append])
    # Four halvings (a 16th of the batch), then it is not the batch size's fault.
    assert [e.message.rsplit(" ", 1)[-1] for e in events] == ["16", "8", "4", "2"]


def test_out_of_memory_at_a_micro_batch_of_one_raises(data):
    events = []
    with gpu_memory_for(0), pytest.raises(torch.OutOfMemoryError):
        train({**CONFIG.to_dict(), "batch_size": 2}, data, device="cpu", callbacks=[events.append])
    assert [e.message for e in events] == ["Out of GPU memory at batch 2: continuing with 2 × 1"]


def test_out_of_memory_in_evaluation_halves_the_evaluation_batch_with_the_same_metrics(data):
    config = TrainConfig(arch="seed_cnn", epochs=1, batch_size=32)
    plain = train(config, data, device="cpu")
    events = []
    with gpu_memory_for(20, training=False):
        result = train(config, data, device="cpu", callbacks=[events.append])
    assert [e.message for e in events if e.kind == "notice"] == [
        "Out of GPU memory evaluating batches of 60: continuing with 30",
        "Out of GPU memory evaluating batches of 30: continuing with 15",
    ]
    assert result.confusion == plain.confusion
    assert result.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-5)
    assert (result.batch_size, result.accumulation) == (32, 1)  # training was never short


def test_a_resumed_run_keeps_the_smaller_micro_batch(data, tmp_path):
    path = tmp_path / "run.ckpt"

    def cancel_after_epoch_one(event):
        if event.kind == "epoch":
            raise Cancelled

    with gpu_memory_for(20), pytest.raises(Cancelled):
        train(CONFIG, data, device="cpu", checkpoint_path=path, callbacks=[cancel_after_epoch_one])
    info = read_checkpoint_info(path)
    assert (info["batch_size"], info["accumulation"], info["step"]) == (16, 2, PER_EPOCH)
    # A resume (on a GPU that still has as little memory) starts at 2 × 16 and never runs out.
    events = []
    with gpu_memory_for(20):
        result = train(CONFIG, data, device="cpu", checkpoint_path=path, callbacks=[events.append])
    assert not [e for e in events if e.kind == "notice"]
    assert (result.batch_size, result.accumulation) == (16, 2)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


@contextlib.contextmanager
def out_of_memory_at_step_3(seen):
    """Batches over 16 images run out of memory once two steps have been reported in `seen`."""

    def hook(module, args):
        if module.__class__.__name__ == "Classifier" and torch.is_grad_enabled() and len(args[0]) > 16 \
                and len([e for e in seen if e.kind == "step"]) >= 2:
            raise torch.OutOfMemoryError("simulated")

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_a_notice_can_cancel_and_the_resume_matches_a_run_never_cancelled(data, tmp_path):
    # The notice comes while step 3 is being retried, after its batch was drawn and augmented:
    # the checkpoint must hold the data generator as it was after step 2, not as it is now.
    config = TrainConfig(arch="seed_cnn", epochs=2, batch_size=32)
    steady = []
    with out_of_memory_at_step_3(steady):
        expected = train(config, data, device="cpu", progress_interval=0, callbacks=[steady.append])

    path = tmp_path / "run.ckpt"
    seen = []

    def cancel_on_notice(event):
        seen.append(event)
        if event.kind == "notice":
            raise Cancelled

    with out_of_memory_at_step_3(seen), pytest.raises(Cancelled):
        train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[cancel_on_notice])
    info = read_checkpoint_info(path)
    assert (info["step"], info["batch_size"], info["accumulation"]) == (2, 16, 2)
    with out_of_memory_at_step_3(seen):
        result = train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[seen.append])
    assert [(e.kind, e.step) for e in seen] == [(e.kind, e.step) for e in steady]
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in expected.history]
    for a, b in zip(result.model.state_dict().values(), expected.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 3, (10,))
    precision = Precision(torch.device("cpu"), None)
    grads = []
    for accumulation in (1, 4):  # 4 uneven micro-batches: 3, 3, 2, 2
        model.zero_grad()
        parts = accumulate_gradients(model, x, y, criterion=nn.CrossEntropyLoss(), precision=precision,
                                     accumulation=accumulation)
        assert [len(p[2]) for p in parts] == ([10] if accumulation == 1 else [3, 3, 2, 2])
        grads.append([p.grad.clone() for p in model.parameters()])
    for whole, accumulated in zip(*grads, strict=True):
        torch.testing.assert_close(accumulated, whole)


def test_a_cancel_during_evaluation_resumes_into_the_same_epoch_end(data, tmp_path):
    path = tmp_path / "run.ckpt"
    config = TrainConfig(arch="seed_cnn", epochs=2, batch_size=32)
    plain = train(config, data, device="cpu")
    seen = []

    def cancel_on_notice(event):
        seen.append(event)
        if event.kind == "notice":
            raise Cancelled

    with gpu_memory_for(20, training=False), pytest.raises(Cancelled):
        train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[cancel_on_notice])
    checkpoint = torch.load(path, weights_only=True)
    # Epoch 1's steps are all done, its evaluation is not: nothing of it is counted as finished.
    assert (checkpoint["epoch"], checkpoint["position"], checkpoint["samples_done"]) == (0, PER_EPOCH, 0)
    result = train(config, data, device="cpu", progress_interval=0, checkpoint_path=path, callbacks=[seen.append])
    assert [(e.kind, e.step) for e in seen if e.kind != "step"] == [
        ("notice", PER_EPOCH), ("epoch", PER_EPOCH), ("epoch", 2 * PER_EPOCH)
    ]
    assert [h["val_acc"] for h in result.history] == [h["val_acc"] for h in plain.history]
    assert result.history[-1]["train_loss"] == plain.history[-1]["train_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_out_of_memory_on_cuda_halves_and_checkpoints_the_smaller_batch(data, tmp_path):
    path = tmp_path / "run.ckpt"
    events = []
    with gpu_memory_for(10):
        result = train(CONFIG, data, device="cuda", checkpoint_path=path, callbacks=[events.append])
    notices = [e.message for e in events if e.kind == "notice"]
    assert notices[-1] == "Out of GPU memory at batch 16: continuing with 4 × 8"
    assert (result.batch_size, result.accumulation) == (8, 4)
    assert read_checkpoint_info(path)["accumulation"] == 4
    assert result.metrics["val_acc"] >= 0.9
