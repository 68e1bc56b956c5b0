"""The training loop: whole-batch tensor augmentation, one-cycle schedule, progress callbacks.

The dataset stays one uint8 tensor on the training device; batches are indexed from it and
augmented as whole tensors, so there is no per-sample Python and no DataLoader. Running loss and
accuracy are accumulated on the device and read back (a GPU sync) only when an event is due.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.config import TrainConfig
from ml.data import ImageData
from ml.nets import build_model

# Random shifts move images by up to this fraction of their shorter side (2 px at 32×32, as
# airbench does for CIFAR-10); borders are filled by reflection.
SHIFT_FRACTION = 1 / 16
# Mean/std are estimated from at most this many training images: plenty for 6 numbers.
STATS_SAMPLE = 10_000
# Evaluation needs no gradients, so it can use bigger batches than training.
EVAL_BATCH = 1024


class Cancelled(Exception):
    """Raised by a callback to stop training; `train` lets it propagate to the caller."""


class Diverged(ValueError):
    """The loss became NaN or infinite; the message says what to try. A ValueError, like the other
    refusals of data or settings, because a different setting is the fix."""


@dataclass(frozen=True)
class ProgressEvent:
    kind: str  # "step" (at most every progress_interval seconds) or "epoch" (every epoch end)
    epoch: int  # 1-based
    epochs: int
    step: int  # optimizer steps so far
    total_steps: int
    train_loss: float  # running mean over this epoch so far (augmented, with label smoothing)
    train_acc: float  # 0..1
    val_loss: float | None  # epoch events with a validation set only
    val_acc: float | None
    lr: float  # learning rate at this point of the one-cycle schedule
    samples_per_s: float  # training images per second of training time so far
    elapsed_s: float  # wall time since train() started


@dataclass
class TrainResult:
    model: nn.Module  # on CPU, in eval mode
    config: TrainConfig
    classes: list[str]
    input_spec: dict[str, int]  # {"height", "width", "channels"}
    history: list[dict[str, Any]]  # one dict per epoch: the epoch event's fields
    metrics: dict[str, float | None]  # val_acc, val_loss, train_acc, train_loss, samples_per_s, duration_s
    confusion: list[list[int]]  # validation counts, rows = true class, columns = predicted; [] if no val
    device: str


@dataclass(frozen=True)
class Precision:
    """How a device runs: memory format and autocast dtype (None = float32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


class RunningStats:
    """Loss and accuracy sums kept on the device; `means()` is the only place that syncs."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.count += len(y)

    def means(self) -> tuple[float, float]:
        if self.count == 0:
            return math.nan, math.nan
        return self.loss_sum.item() / self.count, self.correct.item() / self.count


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def describe_device(device: torch.device) -> str:
    """Short enough for Job.device (32 characters)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).removeprefix("NVIDIA ")
        return f"cuda ({name})"[:32]
    return device.type


def choose_precision(device: torch.device) -> Precision:
    if device.type == "cuda":
        return Precision(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    if device.type == "cpu" and _cpu_has_amx():
        # AMX tiles run bf16 convolutions ~2x faster than float32 (measured on this project's Xeon);
        # without them bf16 is emulated and slower, so float32 stays.
        return Precision(device, torch.bfloat16)
    return Precision(device, None)


def _cpu_has_amx() -> bool:
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent in some builds
    try:
        return bool(check and check())
    except Exception:  # noqa: BLE001 - a capability probe must never stop training
        return False


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """Use at most the CPUs we are allowed (a lower setting by the caller wins); restore afterwards.

    More threads than CPUs makes OpenMP threads spin against each other and other processes.
    """
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(before, available_cpus())))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def channel_stats(x: np.ndarray, *, seed: int, sample: int = STATS_SAMPLE) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..255 units) of N×H×W×C uint8 images, from a sample."""
    n = len(x)
    if n > sample:
        idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))  # sorted: mmap-friendly
        x = x[idx]
    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), 1.0)  # constant images: avoid dividing by ~0
    return mean.tolist(), std.tolist()


def to_device_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """One copy of an N×H×W×C uint8 array on the device, viewed as NCHW (channels_last strides)."""
    t = torch.from_numpy(np.array(x, dtype=x.dtype, copy=True))  # copy: memory maps are read-only
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    index = torch.where(index < 0, -index, index)
    index = torch.where(index >= size, 2 * (size - 1) - index, index)
    return index.clamp_(0, size - 1)


def augment_batch(x: torch.Tensor, *, generator: torch.Generator, shift: int) -> torch.Tensor:
    """Random shift by up to `shift` px (reflected borders) and random horizontal flip, per image,
    as one gather over the whole uint8 NCHW batch."""
    n, c, h, w = x.shape
    dev = x.device
    dy = torch.randint(-shift, shift + 1, (n, 1), generator=generator, device=dev)
    dx = torch.randint(-shift, shift + 1, (n, 1), generator=generator, device=dev)
    rows = _reflect(torch.arange(h, device=dev) + dy, h)  # (n, h)
    cols = _reflect(torch.arange(w, device=dev) + dx, w)  # (n, w)
    flip = torch.rand(n, 1, generator=generator, device=dev) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    return x[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled training batches. A last batch of one image is dropped (batch norm cannot
    normalise a single value); reshuffling means a different image sits out each epoch."""
    n = len(x)
    perm = torch.randperm(n, generator=generator, device=x.device)
    shift = max(1, round(min(x.shape[2], x.shape[3]) * SHIFT_FRACTION))
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) == 1 and n > 1:
            break
        xb = x[idx]
        if augment:
            xb = augment_batch(xb, generator=generator, shift=shift)
        yield xb.contiguous(memory_format=torch.channels_last), y[idx]


def check_finite(loss: float, *, epoch: int, step: int) -> None:
    """A NaN/inf loss never recovers; stop with a reason the user can act on."""
    if not math.isfinite(loss):
        raise Diverged(
            f"Training diverged at epoch {epoch}, step {step} (loss is {loss}). Try a lower learning rate."
        )


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and n == 1) else 0)


def one_cycle(total_steps: int, *, warmup: float = 0.25, start: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from `start` to 1 over `warmup` of the steps, then linear to 0."""
    peak = max(1.0, warmup * total_steps)
    return lambda step: float(np.interp(step, [0, peak, max(total_steps, peak + 1)], [start, 1.0, 0.0]))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on norm scales and biases only fights the normalisation; leave them out.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    precision: Precision,
    on_step: Callable[[RunningStats], None] | None = None,
) -> RunningStats:
    """One pass over `batches`; returns the running sums (on the device). `on_step` is called after
    every optimizer step and decides itself whether it is worth a sync."""
    model.train()
    stats = RunningStats(precision.device)
    for xb, yb in batches:
        with precision.autocast():
            logits = model(xb)
            loss = criterion(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats.add(loss, logits, yb)
        if on_step is not None:
            on_step(stats)  # before the scheduler moves on: events report the rate this step used
        scheduler.step()
    return stats


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    criterion: nn.Module,
    precision: Precision,
    batch_size: int = EVAL_BATCH,
) -> tuple[float, float, list[list[int]]] | None:
    """(loss, accuracy, confusion with rows = true class) over x, y; None when x is empty."""
    if len(x) == 0:
        return None
    model.eval()
    loss_sum = torch.zeros((), device=precision.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=precision.device)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].contiguous(memory_format=torch.channels_last)
            yb = y[start : start + batch_size]
            with precision.autocast():
                logits = model(xb)
                loss = criterion(logits.float(), yb)
            loss_sum += loss.float() * len(yb)
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2)
    matrix = confusion.view(num_classes, num_classes).cpu()
    accuracy = matrix.diagonal().sum().item() / len(x)
    return loss_sum.item() / len(x), accuracy, matrix.tolist()


def train(
    config: TrainConfig | dict[str, Any],
    data: ImageData,
    *,
    callbacks: Sequence[Callable[[ProgressEvent], None]] = (),
    device: str | torch.device = "auto",
    progress_interval: float = 0.25,
) -> TrainResult:
    """Train a classifier on `data`. Every callback gets every ProgressEvent; one raising
    Cancelled (or anything else) stops training and the exception propagates."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    data.validate()
    dev = resolve_device(device)
    precision = choose_precision(dev)
    started = time.monotonic()
    with cpu_threads(dev):
        seed_everything(config.seed)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        generator = torch.Generator(device=dev).manual_seed(config.seed)
        num_classes = data.num_classes

        mean, std = channel_stats(data.x_train, seed=config.seed)
        x_train, y_train = to_device_tensor(data.x_train, dev), torch.as_tensor(np.array(data.y_train), device=dev)
        x_val, y_val = to_device_tensor(data.x_val, dev), torch.as_tensor(np.array(data.y_val), device=dev)
        y_train, y_val = y_train.long(), y_val.long()

        model = build_model(
            config.arch, num_classes=num_classes, in_channels=data.channels,
            height=data.height, width=data.width, mean=mean, std=std,
        ).to(dev, memory_format=torch.channels_last)
        optimizer = make_optimizer(model, config)
        batch_size = min(config.batch_size, len(x_train))
        per_epoch = steps_per_epoch(len(x_train), batch_size)
        total_steps = per_epoch * config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(total_steps))
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        step = 0  # optimizer steps so far
        samples_done = 0  # training images seen in finished epochs
        train_time = 0.0  # seconds spent in finished epochs' training steps (evaluation excluded)
        last_event = -math.inf  # the first step event goes out at once: the page shows life early
        history: list[dict[str, Any]] = []
        epoch, epoch_start = 0, started
        lr = config.lr  # the rate the latest step used

        def emit(event: ProgressEvent) -> None:
            for callback in callbacks:
                callback(event)

        def on_step(stats: RunningStats) -> None:
            nonlocal step, last_event, lr
            step += 1
            lr = optimizer.param_groups[0]["lr"]
            now = time.monotonic()
            if now - last_event < progress_interval:
                return
            last_event = now
            loss, acc = stats.means()  # the only sync between epoch ends
            check_finite(loss, epoch=epoch, step=step)
            emit(ProgressEvent(
                kind="step", epoch=epoch, epochs=config.epochs, step=step, total_steps=total_steps,
                train_loss=loss, train_acc=acc, val_loss=None, val_acc=None,
                lr=lr,
                samples_per_s=(samples_done + stats.count) / max(train_time + now - epoch_start, 1e-9),
                elapsed_s=now - started,
            ))

        for epoch in range(1, config.epochs + 1):
            epoch_start = time.monotonic()
            batches = iterate_batches(x_train, y_train, batch_size=batch_size, generator=generator, augment=config.augment)
            stats = train_one_epoch(
                model, batches, optimizer=optimizer, scheduler=scheduler, criterion=criterion,
                precision=precision, on_step=on_step,
            )
            train_loss, train_acc = stats.means()  # syncs: the epoch's steps are done
            check_finite(train_loss, epoch=epoch, step=step)
            train_time += time.monotonic() - epoch_start
            samples_done += stats.count
            val = evaluate(model, x_val, y_val, num_classes=num_classes, criterion=criterion, precision=precision)
            now = time.monotonic()
            event = ProgressEvent(
                kind="epoch", epoch=epoch, epochs=config.epochs, step=step, total_steps=total_steps,
                train_loss=train_loss, train_acc=train_acc,
                val_loss=val[0] if val else None, val_acc=val[1] if val else None,
                lr=lr, samples_per_s=samples_done / max(train_time, 1e-9),
                elapsed_s=now - started,
            )
            history.append({k: v for k, v in asdict(event).items() if k != "kind"})
            emit(event)
            last_event = now

    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    final = history[-1]
    return TrainResult(
        model=model,
        config=config,
        classes=list(data.classes),
        input_spec={"height": data.height, "width": data.width, "channels": data.channels},
        history=history,
        metrics={
            "val_acc": final["val_acc"],
            "val_loss": final["val_loss"],
            "train_acc": final["train_acc"],
            "train_loss": final["train_loss"],
            "samples_per_s": final["samples_per_s"],
            "duration_s": time.monotonic() - started,
        },
        confusion=val[2] if val else [],
        device=describe_device(dev),
    )
