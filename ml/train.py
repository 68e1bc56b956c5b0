"""The training loop: whole-batch tensor augmentation, one-cycle schedule, progress callbacks.

The dataset stays one tensor on the training device (uint8 images, or int16 clips for speech);
batches are indexed from it and augmented as whole tensors, so there is no per-sample Python and
no DataLoader. Running loss and accuracy are accumulated on the device and read back (a GPU sync)
only when an event is due. `train` serves both modalities: only the data preparation, the
augmentation and the network differ; schedule, callbacks, checkpoints, resume, cancel and
out-of-memory handling are shared.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ml.checkpoint import (
    CheckpointError,
    capture_rng,
    check_matches,
    data_fingerprint,
    load_checkpoint,
    restore_global_rng,
    write_checkpoint,
)
from ml.config import TrainConfig
from ml.data import AudioData, ImageData
from ml.nets import AudioFeatures, build_audio_frontend, build_audio_model, build_model, check_modality

logger = logging.getLogger(__name__)

# Random shifts move images by up to this fraction of their shorter side (2 px at 32×32, as
# airbench does for CIFAR-10); borders are filled by reflection.
SHIFT_FRACTION = 1 / 16
# Mean/std are estimated from at most this many training images: plenty for 6 numbers.
STATS_SAMPLE = 10_000
# Evaluation needs no gradients, so it can use bigger batches than training.
EVAL_BATCH = 1024

# Speech augmentation, drawn per clip from the run's generator on whole batches (augment_audio).
# Speed perturbation (Ko et al. 2015, Kaldi's 0.9/1.0/1.1): playing a clip faster or slower moves
# pitch and formants together, the cheapest stand-in for another speaker's voice.
SPEED_RANGE = (0.85, 1.15)
# Time shifts up to ±100 ms, zero filled: words are not always centred in a recording.
AUDIO_SHIFT_SECONDS = 0.1
# Background noise (the dataset's own, e.g. Speech Commands' _background_noise_) is mixed into this
# share of clips at a signal-to-noise ratio drawn from NOISE_SNR_DB; without recorded noise, light
# white noise at WHITE_NOISE_SNR_DB instead, so the net does not rely on perfectly clean silence.
# Light on purpose: band-limited recordings (FSDD is 8 kHz: nothing above 4 kHz) and the digital
# silence fit_length pads with are empty rows of the log-mel image at evaluation; stronger white
# noise fills them in training only, and the nets then learn a difference they never see again.
NOISE_PROBABILITY = 0.8
NOISE_SNR_DB = (5.0, 20.0)
WHITE_NOISE_SNR_DB = (30.0, 50.0)
# Random gain (dB): recordings come at any level; log features turn gain into an offset.
GAIN_DB = (-6.0, 6.0)
# Feature mean/std are estimated from at most this many training clips.
AUDIO_STATS_SAMPLE = 2_000
# Gradient norm clip for every speech network. The recurrent ones need it (an exploding gradient
# through 100 time steps throws a run away in one step); the CNNs barely ever reach it with Adam's
# per-parameter step sizes, and one code path for all speech nets keeps runs comparable.
AUDIO_CLIP_GRAD_NORM = 1.0


class Cancelled(Exception):
    """Raised by a callback to stop training; `train` lets it propagate to the caller."""


class Diverged(ValueError):
    """The loss became NaN or infinite; the message says what to try. A ValueError, like the other
    refusals of data or settings, because a different setting is the fix."""


@dataclass(frozen=True)
class ProgressEvent:
    # "step" (at most every progress_interval seconds), "epoch" (every epoch end), "notice", or
    # "prepare" (before the first step, while training data is made: synthetic voices)
    kind: str
    epoch: int  # 1-based
    epochs: int
    step: int  # optimizer steps so far
    total_steps: int
    train_loss: float  # running mean over this epoch so far (augmented, with label smoothing)
    train_acc: float  # 0..1
    val_loss: float | None  # epoch events with a validation set only; of the averaged weights when config.ema > 0
    val_acc: float | None
    lr: float  # learning rate at this point of the one-cycle schedule
    samples_per_s: float  # training images per second of training time so far
    elapsed_s: float  # wall time of this run, across resumes from a checkpoint
    # kind="notice" only: something the user should know that changed the run, in their words
    # ("Out of GPU memory at batch 256: continuing with 2 × 128"). A notice's train_loss/acc are
    # the latest known (NaN before the first step); it is not a point of the curves.
    # kind="prepare": what is being made and how far ("Speaking synthetic voices: 2,500 of
    # 10,000 clips"), with the share done in `fraction` (0..1); not a point of the curves either.
    message: str = ""
    fraction: float | None = None


@dataclass
class TrainResult:
    model: nn.Module  # on CPU, in eval mode; the weight average (WeightAverage) when config.ema > 0
    config: TrainConfig
    classes: list[str]
    input_spec: dict[str, Any]  # images {"height", "width", "channels"}; audio {"kind", "sample_rate", "clip_samples"}
    history: list[dict[str, Any]]  # one dict per epoch: the epoch event's fields
    # val_acc, val_loss, train_acc, train_loss, samples_per_s, duration_s; + test_acc, test_loss
    # when the data has a test split (speech datasets can)
    metrics: dict[str, float | None]
    confusion: list[list[int]]  # validation counts, rows = true class, columns = predicted; [] if no val
    device: str
    batch_size: int  # micro-batch finally used: images per forward pass (smaller after GPU out-of-memory)
    accumulation: int  # micro-batches per optimizer step; batch_size × accumulation ≈ config.batch_size
    modality: str = "image"  # "image" or "audio": the data it was trained on


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
        labels = y.argmax(1) if y.ndim == 2 else y  # mixup targets: the larger share is the row's own label
        self.correct += (logits.argmax(1) == labels).sum()
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


def feature_stats(
    frontend: AudioFeatures, x: np.ndarray, *, seed: int, sample: int = AUDIO_STATS_SAMPLE, batch: int = 256,
    rows: np.ndarray | None = None,
) -> tuple[list[float], list[float]]:
    """Per-feature-row mean and std of the front end's features over a sample of int16 N×L clips
    (on the CPU, float64 sums): the speech counterpart of channel_stats. `rows`: the row indices an
    epoch draws, repeats included (epoch_rows), so the statistics weigh clips as training does."""
    rows = np.arange(len(x)) if rows is None else rows
    if len(rows) > sample:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))]
    x = x[rows]
    total = total_sq = None
    count = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            feats = frontend(torch.from_numpy(np.array(x[start : start + batch], dtype=np.int16))).double()
            s, sq = feats.sum(dim=(0, 2)), (feats * feats).sum(dim=(0, 2))
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
            count += feats.shape[0] * feats.shape[2]
    mean = total / count
    # Floor 1 (natural-log units, ~4 dB): a row that is (almost) constant in the data, like the
    # bands above 4 kHz of 8 kHz recordings, must not turn tiny differences (noise, another
    # microphone) into hundreds of standard deviations.
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1.0)
    return mean.tolist(), std.tolist()


def to_device_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """One copy of an N×H×W×C uint8 array on the device, viewed as NCHW (channels_last strides)."""
    t = torch.from_numpy(np.array(x, dtype=x.dtype, copy=True))  # copy: memory maps are read-only
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2)


def to_device_clips(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """One copy of an int16 N×L clip array (or 1-D noise) on the device."""
    t = torch.from_numpy(np.array(x, dtype=np.int16, copy=True))  # copy: memory maps are read-only
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t


def _uniform(n: int, low: float, high: float, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, 1, generator=generator, device=device)


def augment_audio(
    x: torch.Tensor, *, generator: torch.Generator, shift: int, noise: torch.Tensor | None
) -> torch.Tensor:
    """int16 N×L clips -> float32 in [-1, 1], per clip: a speed change in SPEED_RANGE about the
    clip's centre (linear interpolation), a time shift of up to ±`shift` samples (both zero
    filled), background noise from `noise` (int16 1-D, ≥ L samples: a random segment at a random
    SNR, with probability NOISE_PROBABILITY) or else light white noise, and a random gain.
    Whole-batch tensor operations; every draw comes from `generator`, in a fixed order."""
    n, length = x.shape
    dev = x.device
    wave = x.float() / 32768.0
    # Speed and shift in one resampling: out[t] = wave[centre + (t - centre) * speed - s].
    speed = _uniform(n, *SPEED_RANGE, generator=generator, device=dev)
    s = torch.randint(-shift, shift + 1, (n, 1), generator=generator, device=dev)
    centre = (length - 1) / 2
    source = centre + (torch.arange(length, device=dev) - centre) * speed - s
    left = source.floor()
    frac = source - left
    left = left.long()
    inside_left = (left >= 0) & (left < length)
    inside_right = (left + 1 >= 0) & (left + 1 < length)
    wave = (wave.gather(1, left.clamp(0, length - 1)) * inside_left * (1 - frac)
            + wave.gather(1, (left + 1).clamp(0, length - 1)) * inside_right * frac)
    power = wave.square().mean(1, keepdim=True)
    use = torch.rand(n, 1, generator=generator, device=dev) < NOISE_PROBABILITY
    if noise is not None:
        start = (torch.rand(n, 1, generator=generator, device=dev) * (len(noise) - length + 1)).long()
        mix = noise[start + torch.arange(length, device=dev)].float() / 32768.0
        snr_db = _uniform(n, *NOISE_SNR_DB, generator=generator, device=dev)
    else:
        mix = torch.randn(n, length, generator=generator, device=dev)
        snr_db = _uniform(n, *WHITE_NOISE_SNR_DB, generator=generator, device=dev)
    mix_power = mix.square().mean(1, keepdim=True).clamp_min(1e-10)
    scale = torch.sqrt(power / (mix_power * 10.0 ** (snr_db / 10.0))) * use
    wave = wave + mix * scale
    gain = 10.0 ** (_uniform(n, *GAIN_DB, generator=generator, device=dev) / 20.0)
    return (wave * gain).clamp_(-1.0, 1.0)


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, *, alpha: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018) on a float batch: every input becomes λ·x + (1 − λ)·x[perm] with
    a random pairing perm and one λ per batch from Beta(alpha, alpha), folded to λ ≥ 0.5 so that
    each row's own label keeps the larger share; targets are the same blend of one-hot labels
    (N×C). λ comes from a NumPy generator seeded by `generator`, so runs repeat and resume exactly
    (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(y), generator=generator, device=generator.device).to(x.device)
    onehot = nn.functional.one_hot(y, num_classes).float()
    return lam * x + (1.0 - lam) * x[perm], lam * onehot + (1.0 - lam) * onehot[perm]


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


def epoch_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    *,
    batch_size: int,
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's training batches in the order of `perm` (row indices; a row may come more than
    once: epoch_rows), from batch number `skip` on (a resumed epoch), each (inputs, labels) pair
    passed through `prepare` (augmentation, layout, mixup: it returns inputs and the targets to
    train on, class indices or N×C probabilities). A last batch of one sample is dropped (batch
    norm cannot normalise a single value); reshuffling means a different one sits out each epoch.

    Lazy on purpose: batch i+1's augmentation is drawn from the generator only once step i is
    done, so the generator's state after a step is exactly what a resumed epoch needs. The whole
    batch is augmented at once, before any split into micro-batches: the random draws, and so the
    data, do not depend on gradient accumulation."""
    n = len(perm)
    for start in range(skip * batch_size, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) == 1 and n > 1:
            break
        yield prepare(x[idx], y[idx])


def check_finite(loss: float, *, epoch: int, step: int) -> None:
    """A NaN/inf loss never recovers; stop with a reason the user can act on."""
    if not math.isfinite(loss):
        raise Diverged(
            f"Training diverged at epoch {epoch}, step {step} (loss is {loss}). Try a lower learning rate."
        )


def epoch_rows(real: int, synthetic: int) -> np.ndarray:
    """The training rows one epoch goes through, before its shuffle: `real` recordings followed by
    `synthetic` clips; with none, every row once. The recordings are repeated until they make
    about half of the epoch. The synthetic voices give variety, but the
    recordings are what a test sounds like. FSDD leave-one-speaker-out, crnn, 1,000 synthetic clips
    a digit beside 2,500 recordings (4 repeats), 14 instead of 25 epochs for about the same steps:
    93.7 % mean against 93.2 % with the recordings once (docs/benchmarks.md)."""
    repeats = max(1, round(synthetic / real)) if real else 1
    return np.concatenate([np.tile(np.arange(real), repeats), np.arange(real, real + synthetic)])


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


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (BatchNorm's running
    statistics too, as AveragedModel(use_buffers=True) does), updated after every optimizer step;
    `module` is the averaged copy, for evaluation only.

    The n-th update uses decay min(`decay`, (n - 1) / (n + 2)): polynomial-decay averaging
    (Shamir & Zhang 2013, η = 2) until it reaches `decay`, a plain EMA from then on. The first
    update copies the weights, so the random initialisation never enters the average, and the
    average never reaches back much further than the last third of the steps so far (an EMA spans
    about 1 / (1 - decay) steps): a short run (a small dataset, a few steps an epoch) averages its
    latter part, not its start. Integer buffers (num_batches_tracked) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be between 0 and 1 (exclusive), not {decay!r}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (n - 1) / (n + 2))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        averaged, live = [], []
        for a, m in zip(_tensors(self.module), _tensors(model), strict=True):
            if a.is_floating_point():
                averaged.append(a)
                live.append(m.detach())
            else:
                a.copy_(m)
        if averaged:
            torch._foreach_lerp_(averaged, live, weight)  # what swa_utils.get_ema_multi_avg_fn uses
        self.updates += 1

    @torch.no_grad()
    def restart_from(self, model: nn.Module) -> None:
        """Start over from `model`'s weights (a checkpoint written without an average)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


@dataclass
class MicroBatching:
    """How each optimizer step's batch is split: `accumulation` micro-batches whose gradients add
    up to the whole batch's. Starts at 1; GPU out-of-memory doubles it, so the effective batch
    (and with it the learning-rate recipe) stays the same while each forward pass gets smaller."""

    batch_size: int  # effective: images per optimizer step
    accumulation: int = 1

    @property
    def micro_batch_size(self) -> int:
        return -(-self.batch_size // self.accumulation)

    def can_halve(self) -> bool:
        return self.micro_batch_size > 1 and self.accumulation < 2**MAX_HALVINGS

    def halve(self) -> str:
        """Halve the micro-batch; returns the notice for the user."""
        before = self.micro_batch_size
        self.accumulation *= 2
        return (f"Out of GPU memory at batch {before}: continuing with "
                f"{self.accumulation} × {self.micro_batch_size}")


# Out of memory after this many halvings (a 16th of the batch) is not a batch-size problem.
MAX_HALVINGS = 4


def accumulate_gradients(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    criterion: nn.Module,
    precision: Precision,
    accumulation: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Forward and backward over the batch in `accumulation` micro-batches; gradients add up to the
    batch mean's. Returns (loss, logits, labels) per micro-batch for the running statistics."""
    chunks = min(accumulation, len(yb))
    parts = []
    for xm, ym in zip(xb.tensor_split(chunks), yb.tensor_split(chunks), strict=True):
        with precision.autocast():
            logits = model(xm)
            loss = criterion(logits, ym)
        # Weighted by size: the last batch of an epoch splits unevenly. Unscaled when whole, so an
        # unsplit step is bit-identical to plain training.
        (loss if chunks == 1 else loss * (len(ym) / len(yb))).backward()
        parts.append((loss.detach(), logits.detach(), ym))
    return parts


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    precision: Precision,
    stats: RunningStats,
    micro: MicroBatching,
    on_step: Callable[[RunningStats, float], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    clip_grad_norm: float | None = None,
    average: WeightAverage | None = None,
) -> RunningStats:
    """One pass over `batches`, adding to `stats` (on the device; a resumed epoch brings its own).

    `on_step(stats, lr)` is called after every complete optimizer step (scheduler moved on; `lr` is
    the rate that step used) and decides itself whether it is worth a sync. On GPU out-of-memory
    the step is retried with half the micro-batch (`micro` changes; `on_notice` hears of it) until
    MicroBatching.can_halve() says no, and then the error propagates. With `clip_grad_norm`, the
    whole batch's gradient is scaled down to at most that norm before each step. With `average`,
    it is updated after every optimizer step (before `on_step`, so a checkpoint there has it)."""
    model.train()
    for xb, yb in batches:
        while True:
            optimizer.zero_grad(set_to_none=True)
            try:
                parts = accumulate_gradients(model, xb, yb, criterion=criterion, precision=precision,
                                             accumulation=micro.accumulation)
                break
            except torch.OutOfMemoryError:
                if not micro.can_halve():
                    raise
            # Only forward and backward are retried: out of memory inside optimizer.step may have
            # updated some parameters already, so that propagates. Outside the except block here:
            # its traceback, and the activations it holds, are gone.
            optimizer.zero_grad(set_to_none=True)
            if precision.device.type == "cuda":
                torch.cuda.empty_cache()
            message = micro.halve()
            if on_notice is not None:
                on_notice(message)
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if average is not None:
            average.update(model)
        for part in parts:
            stats.add(*part)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if on_step is not None:
            on_step(stats, lr)
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
            xb = input_layout(x[start : start + batch_size])
            yb = y[start : start + batch_size]
            with precision.autocast():
                logits = model(xb)
                loss = criterion(logits.float(), yb)
            loss_sum += loss.float() * len(yb)
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2)
    matrix = confusion.view(num_classes, num_classes).cpu()
    accuracy = matrix.diagonal().sum().item() / len(x)
    return loss_sum.item() / len(x), accuracy, matrix.tolist()


def input_layout(x: torch.Tensor) -> torch.Tensor:
    """Images go through the convolutions channels_last; clips are plain N×L."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x.contiguous()


def input_spec(data: ImageData | AudioData) -> dict[str, Any]:
    """What a model trained on `data` takes (TrainResult.input_spec, checkpoints, model.json)."""
    if data.modality == "audio":
        return {"kind": "audio", "sample_rate": int(data.sample_rate), "clip_samples": data.clip_samples}
    return {"height": data.height, "width": data.width, "channels": data.channels}


@dataclass
class _Position:
    """Where a run stands, besides model, optimizer and schedule: what a checkpoint adds to them."""

    stats: RunningStats  # the current epoch's running sums
    epoch: int = 0  # epochs completed
    position: int = 0  # optimizer steps done inside epoch `epoch + 1`
    step: int = 0  # optimizer steps so far
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_done: int = 0  # training images seen in completed epochs
    train_time_s: float = 0.0  # training seconds (evaluation excluded) before `segment_start`
    segment_start: float = 0.0  # monotonic clock when the current stretch of training began
    lr: float = 0.0  # the rate the latest step used
    epoch_generator_state: torch.Tensor | None = None  # data generator before this epoch's shuffle
    generator_state: torch.Tensor | None = None  # data generator after the latest complete step

    def train_time(self, now: float) -> float:
        return self.train_time_s + (now - self.segment_start if self.position else 0.0)


def with_synthetic_voices(data: AudioData, *, per_class: int, seed: int,
                          cache_dir: str | os.PathLike | None = None,
                          progress: Callable[[int, int], None] | None = None) -> tuple[AudioData, int]:
    """data with per_class synthetic clips of each speakable class (ml.synthetic_speech) appended
    to its training split, and how many were added. Validation and test stay real recordings.
    With cache_dir, the clips are read from there when they were made before (and kept there).
    progress(done, total): see synthetic_voices."""
    from ml.synthetic_speech import SAMPLE_RATE, synthetic_count, synthetic_voices  # loads espeak-ng: when asked

    if data.sample_rate != SAMPLE_RATE:
        raise ValueError(f"synthetic voices are made at {SAMPLE_RATE} Hz; the clips are at {data.sample_rate} Hz")
    real = len(data.x_train)
    added = synthetic_count(data.classes, per_class)
    x = np.empty((real + added, data.clip_samples), dtype=np.int16)  # one array: thousands of clips add up
    x[:real] = data.x_train
    _, y = synthetic_voices(data.classes, per_class=per_class, seed=seed, clip_samples=data.clip_samples,
                            out=x[real:], cache_dir=cache_dir, progress=progress)
    return replace(data, x_train=x, y_train=np.concatenate([data.y_train, y])), added


def train(
    config: TrainConfig | dict[str, Any],
    data: ImageData | AudioData,
    *,
    callbacks: Sequence[Callable[[ProgressEvent], None]] = (),
    device: str | torch.device = "auto",
    progress_interval: float = 0.25,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_interval_s: float | None = None,
    synthetic_cache: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a classifier on `data` (images or speech clips: `data.modality`; the architecture must
    be one for that modality, else ValueError). Every callback gets every ProgressEvent; one raising
    Cancelled (or anything else) stops training and the exception propagates. A dict config gets
    the modality's defaults for missing keys. Data with a test split (speech) is evaluated on it
    once at the end: metrics test_acc and test_loss.

    With `checkpoint_path`, a checkpoint (ml.checkpoint) is written atomically after every epoch
    event, and after the event whose callback raised Cancelled, so it covers every event emitted
    before it. With `checkpoint_interval_s` too, one is also written at the first optimizer step
    boundary after that many seconds since the last write, so a worker killed mid-epoch loses at
    most min(one epoch, the interval) of training; each step only checks the clock. If the file
    exists, training resumes from it: the same data order and, on the same device, the same result
    as a run never stopped; events go on from the next step. A run killed
    without warning emitted events after its last checkpoint, and a resume emits them again: a
    caller that stores events drops, before resuming, its step events with step > info["step"]
    and its epoch events with epoch > info["epoch"] (info = read_checkpoint_info(path)). A
    checkpoint that cannot be read or belongs to other data or settings raises CheckpointError.
    The file is left in place when training ends: the caller removes it.

    `synthetic_cache`: a folder where the clips of `config.synthetic_voices` are kept between runs
    (ml.synthetic_speech.ClipCache): a resume or a second run on the same classes reads them back.
    """
    modality = getattr(data, "modality", "image")
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config, modality=modality)
    check_modality(config.arch, modality)
    audio = modality == "audio"
    if checkpoint_interval_s is not None and not checkpoint_interval_s >= 0:
        raise ValueError(f"checkpoint_interval_s must be a number of seconds >= 0 or None, not {checkpoint_interval_s!r}")
    data.validate()
    dev = resolve_device(device)
    precision = choose_precision(dev)
    fingerprint = data_fingerprint(data) if checkpoint_path is not None else {}
    saved = None
    average_missing = False  # a checkpoint from before weight averaging: start the average at its weights
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        saved = load_checkpoint(checkpoint_path)
        if isinstance(saved.get("config"), dict) and "ema" not in saved["config"]:
            # Written before `ema` existed, so without an average: it resumes with any setting.
            saved["config"] = {**saved["config"], "ema": config.ema}
            average_missing = True
        if isinstance(saved.get("config"), dict):  # written before synthetic voices or mixup: trained without
            saved["config"] = {"synthetic_voices": 0, "mixup": 0.0, **saved["config"]}
        check_matches(saved, config=config.to_dict(), fingerprint=fingerprint, path=checkpoint_path)
    started = time.monotonic() - (float(saved["elapsed_s"]) if saved else 0.0)
    if config.synthetic_voices and not audio:
        raise ValueError("synthetic_voices is for speech data; set it to 0 for images")
    synthetic = 0
    if config.synthetic_voices:
        # After the fingerprint: it covers the dataset, and the config says what was added. The
        # clips depend only on the classes, the count and the seed, so a resume makes (or reads) them again.
        def speaking(done: int, total: int) -> None:
            # "prepare" events: the minute of speaking before the first step shows, and can be cancelled.
            event = ProgressEvent(
                kind="prepare", epoch=0, epochs=config.epochs, step=0, total_steps=0, train_loss=math.nan,
                train_acc=math.nan, val_loss=None, val_acc=None, lr=config.lr, samples_per_s=0.0,
                elapsed_s=time.monotonic() - started, message=f"Speaking synthetic voices: {done:,} of {total:,} clips",
                fraction=done / total,
            )
            for callback in callbacks:
                callback(event)

        data, synthetic = with_synthetic_voices(data, per_class=config.synthetic_voices, seed=config.seed,
                                                cache_dir=synthetic_cache, progress=speaking)
    rows = epoch_rows(len(data.x_train) - synthetic, synthetic)
    with cpu_threads(dev):
        seed_everything(config.seed)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        generator = torch.Generator(device=dev).manual_seed(config.seed)
        num_classes = data.num_classes

        if saved:
            mean, std = list(saved["mean"]), list(saved["std"])
        elif audio:
            frontend = build_audio_frontend(config.arch, sample_rate=data.sample_rate)
            mean, std = feature_stats(frontend, data.x_train, seed=config.seed, rows=rows)
        else:
            mean, std = channel_stats(data.x_train, seed=config.seed)
        to_device = to_device_clips if audio else to_device_tensor
        x_train, y_train = to_device(data.x_train, dev), torch.as_tensor(np.array(data.y_train), device=dev)
        x_val, y_val = to_device(data.x_val, dev), torch.as_tensor(np.array(data.y_val), device=dev)
        y_train, y_val = y_train.long(), y_val.long()

        if audio:
            model = build_audio_model(
                config.arch, num_classes=num_classes, sample_rate=data.sample_rate,
                clip_samples=data.clip_samples, mean=mean, std=std,
            ).to(dev, memory_format=torch.channels_last)  # the CNN stages run channels_last (AsImage)
            model.specaugment.enabled = config.augment
            noise = None
            if data.noise is not None and len(data.noise):
                noise = np.asarray(data.noise)
                if len(noise) < data.clip_samples:  # short noise: repeat it to one clip's length
                    noise = np.resize(noise, data.clip_samples)
                noise = to_device_clips(noise, dev)
            shift = round(AUDIO_SHIFT_SECONDS * data.sample_rate)
        else:
            model = build_model(
                config.arch, num_classes=num_classes, in_channels=data.channels,
                height=data.height, width=data.width, mean=mean, std=std,
            ).to(dev, memory_format=torch.channels_last)
        if audio:  # augmented clips come out as float32 waveforms, plain ones as int16: the model scales both
            def prepare(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                if config.augment:
                    xb = augment_audio(xb, generator=generator, shift=shift, noise=noise)
                if config.mixup:
                    xb = xb.float() / 32768.0 if xb.dtype == torch.int16 else xb
                    return mix_batch(xb, yb, alpha=config.mixup, num_classes=num_classes, generator=generator)
                return xb, yb
        else:
            image_shift = max(1, round(min(x_train.shape[2], x_train.shape[3]) * SHIFT_FRACTION))

            def prepare(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                if config.augment:
                    xb = augment_batch(xb, generator=generator, shift=image_shift)
                return xb.contiguous(memory_format=torch.channels_last), yb
        # Copied before SpecAugment gets the run's generator: the average only ever evaluates.
        average = WeightAverage(model, config.ema) if config.ema > 0 else None
        if audio:
            # SpecAugment draws from the run's generator: part of the data order a checkpoint keeps.
            model.specaugment.generator = generator
        optimizer = make_optimizer(model, config)
        micro = MicroBatching(batch_size=min(config.batch_size, len(x_train)))
        rows_t = torch.as_tensor(rows, device=dev)
        per_epoch = steps_per_epoch(len(rows_t), micro.batch_size)

        def shuffle() -> torch.Tensor:  # rows once each: the very permutation randperm(len(x_train)) draws
            return rows_t[torch.randperm(len(rows_t), generator=generator, device=dev)]
        total_steps = per_epoch * config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(total_steps))
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        at = _Position(stats=RunningStats(dev), lr=config.lr)
        if saved:
            _restore(saved, model=model, optimizer=optimizer, scheduler=scheduler, generator=generator,
                     micro=micro, at=at, seed=config.seed, average=average, average_missing=average_missing)
            del saved  # the weights now live in the model and optimizer
        eval_batch = max(1, min(EVAL_BATCH, len(x_val)))  # the real size: an out-of-memory notice names it
        last_event = -math.inf  # the first step event goes out at once: the page shows life early
        # Timed checkpoints only with a path; the clock starts now (a resume has just read one).
        timed_checkpoints = checkpoint_path is not None and checkpoint_interval_s is not None
        last_save = time.monotonic()

        def emit(event: ProgressEvent) -> None:
            for callback in callbacks:
                callback(event)

        def save() -> None:
            nonlocal last_save
            write_checkpoint(checkpoint_path, _checkpoint(
                config=config, data=data, fingerprint=fingerprint, mean=mean, std=std, model=model,
                optimizer=optimizer, scheduler=scheduler, generator=generator, micro=micro, at=at,
                total_steps=total_steps, elapsed_s=time.monotonic() - started, average=average,
            ))
            last_save = time.monotonic()

        def on_step(stats: RunningStats, lr: float) -> None:
            nonlocal last_event
            at.step += 1
            at.position += 1
            at.lr = lr
            at.generator_state = generator.get_state()  # a resume draws the next batch from here
            now = time.monotonic()
            if now - last_event >= progress_interval:
                last_event = now
                loss, acc = stats.means()  # the only sync between epoch ends
                check_finite(loss, epoch=at.epoch + 1, step=at.step)
                emit(ProgressEvent(
                    kind="step", epoch=at.epoch + 1, epochs=config.epochs, step=at.step, total_steps=total_steps,
                    train_loss=loss, train_acc=acc, val_loss=None, val_acc=None, lr=lr,
                    samples_per_s=(at.samples_done + stats.count) / max(at.train_time(now), 1e-9),
                    elapsed_s=now - started,
                ))
            if timed_checkpoints and now - last_save >= checkpoint_interval_s:
                # A step boundary: `at` is complete, the same state the cancel path saves. After
                # the step's event, like the epoch checkpoint: it covers every event emitted.
                save()

        def notice(message: str) -> None:
            now = time.monotonic()
            loss, acc = at.stats.means()
            if at.stats.count == 0 and at.history:
                loss, acc = at.history[-1]["train_loss"], at.history[-1]["train_acc"]
            emit(ProgressEvent(
                kind="notice", epoch=min(at.epoch + 1, config.epochs), epochs=config.epochs, step=at.step,
                total_steps=total_steps, train_loss=loss, train_acc=acc, val_loss=None, val_acc=None,
                lr=optimizer.param_groups[0]["lr"],  # the rate of the step about to be retried
                samples_per_s=(at.samples_done + at.stats.count) / max(at.train_time(now), 1e-9),
                elapsed_s=now - started, message=message,
            ))

        def validate(x_eval: torch.Tensor | None = None, y_eval: torch.Tensor | None = None,
                     ) -> tuple[float, float, list[list[int]]] | None:
            """The validation split (or x_eval, y_eval), halving the batch on out-of-memory; with
            weight averaging, of the averaged weights."""
            nonlocal eval_batch
            if x_eval is None:
                x_eval, y_eval = x_val, y_val
            while True:
                try:
                    return evaluate(average.module if average else model, x_eval, y_eval,
                                    num_classes=num_classes, criterion=criterion, precision=precision,
                                    batch_size=eval_batch)
                except torch.OutOfMemoryError:
                    if eval_batch <= 1:
                        raise
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                eval_batch //= 2
                notice(f"Out of GPU memory evaluating batches of {eval_batch * 2}: continuing with {eval_batch}")

        finished_before = at.epoch == config.epochs
        val = None
        try:
            for epoch in range(at.epoch + 1, config.epochs + 1):
                if at.position == 0:
                    at.epoch_generator_state = generator.get_state()
                    perm = shuffle()
                    at.generator_state = generator.get_state()
                    at.stats = RunningStats(dev)
                else:  # resumed inside this epoch: redraw its shuffle, then carry on from the saved step
                    generator.set_state(at.epoch_generator_state)
                    perm = shuffle()
                    generator.set_state(at.generator_state)
                at.segment_start = time.monotonic()
                batches = epoch_batches(x_train, y_train, perm, batch_size=micro.batch_size, prepare=prepare,
                                        skip=at.position)
                stats = train_one_epoch(
                    model, batches, optimizer=optimizer, scheduler=scheduler, criterion=criterion,
                    precision=precision, stats=at.stats, micro=micro, on_step=on_step, on_notice=notice,
                    clip_grad_norm=AUDIO_CLIP_GRAD_NORM if audio else None, average=average,
                )
                train_loss, train_acc = stats.means()  # syncs: the epoch's steps are done
                check_finite(train_loss, epoch=epoch, step=at.step)
                train_time, samples = at.train_time(time.monotonic()), at.samples_done + stats.count
                val = validate()  # may emit a notice, whose callback may cancel: `at` is still mid-epoch
                now = time.monotonic()
                event = ProgressEvent(
                    kind="epoch", epoch=epoch, epochs=config.epochs, step=at.step, total_steps=total_steps,
                    train_loss=train_loss, train_acc=train_acc,
                    val_loss=val[0] if val else None, val_acc=val[1] if val else None,
                    lr=at.lr, samples_per_s=samples / max(train_time, 1e-9), elapsed_s=now - started,
                )
                # The epoch is done: move `at` to the boundary in one go, before anyone hears of it.
                at.history.append({k: v for k, v in asdict(event).items() if k not in ("kind", "message")})
                at.epoch, at.position, at.stats = epoch, 0, RunningStats(dev)
                at.train_time_s, at.samples_done = train_time, samples
                emit(event)
                if checkpoint_path is not None:
                    save()
                last_event = now
        except Cancelled as cancelled:
            if checkpoint_path is not None:
                try:
                    save()  # the last complete step (or epoch): a resume loses nothing
                except OSError as exc:
                    # A stop must still stop; a resume then starts from the previous checkpoint.
                    logger.warning("No checkpoint written on cancel (%s); the previous one stays", exc)
                    cancelled.add_note(f"No checkpoint was written on cancel: {exc}")
            raise
        if finished_before:  # a checkpoint of a finished run (killed before its caller stored it)
            val = validate()
        test = None
        x_test = getattr(data, "x_test", None)
        if x_test is not None and len(x_test):
            test = validate(to_device_clips(x_test, dev) if audio else to_device_tensor(x_test, dev),
                            torch.as_tensor(np.array(data.y_test), device=dev).long())

    if audio:
        model.specaugment.generator = None  # the run's generator is not the model's to keep
    if average is not None:
        model = average.module  # what validation measured
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    final = at.history[-1]
    metrics = {
        "val_acc": final["val_acc"],
        "val_loss": final["val_loss"],
        "train_acc": final["train_acc"],
        "train_loss": final["train_loss"],
        "samples_per_s": final["samples_per_s"],
        "duration_s": time.monotonic() - started,
    }
    if test is not None:
        metrics["test_loss"], metrics["test_acc"] = test[0], test[1]
    if config.synthetic_voices:
        metrics["synthetic_clips"] = synthetic
    return TrainResult(
        model=model,
        config=config,
        classes=list(data.classes),
        input_spec=input_spec(data),
        history=at.history,
        metrics=metrics,
        confusion=val[2] if val else [],
        device=describe_device(dev),
        batch_size=micro.micro_batch_size,
        accumulation=micro.accumulation,
        modality=modality,
    )


def _checkpoint(
    *, config: TrainConfig, data: ImageData | AudioData, fingerprint: dict[str, Any], mean: list[float],
    std: list[float],
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator, micro: MicroBatching, at: _Position, total_steps: int, elapsed_s: float,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """The `perceptor-checkpoint/1` dict (keys documented in ml.checkpoint)."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "fingerprint": fingerprint,
        "input_spec": input_spec(data),
        "mean": list(mean),
        "std": list(std),
        "classes": list(data.classes),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(generator_state=at.generator_state, generator_device=generator.device.type,
                           epoch_generator_state=at.epoch_generator_state),
        "epoch": at.epoch,
        "position": at.position,
        "step": at.step,
        "total_steps": total_steps,
        "running": {"loss_sum": at.stats.loss_sum, "correct": at.stats.correct, "count": at.stats.count},
        "history": at.history,
        "lr": at.lr,
        "batch_size": micro.micro_batch_size,
        "accumulation": micro.accumulation,
        "effective_batch_size": micro.batch_size,
        "samples_done": at.samples_done,
        "train_time_s": at.train_time(time.monotonic()),
        "elapsed_s": elapsed_s,
        "torch_version": str(torch.__version__),  # a TorchVersion object would need pickle
    }
    if average is not None:
        checkpoint["ema"] = average.state_dict()
    return checkpoint


def _restore(
    saved: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, micro: MicroBatching,
    at: _Position, seed: int, average: WeightAverage | None = None, average_missing: bool = False,
) -> None:
    """Put a freshly built run where the checkpoint left it. Call after building the model: its
    initialisation consumed the global RNG that is restored here. `average_missing`: the
    checkpoint predates weight averaging, so the average starts over from its weights."""
    try:
        model.load_state_dict(saved["model"])
        if average is not None and average_missing:
            average.restart_from(model)
        elif average is not None:
            average.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        micro.accumulation = int(saved["accumulation"])  # never meet the same out-of-memory again
        device = at.stats.loss_sum.device
        running = saved["running"]
        at.stats.loss_sum = running["loss_sum"].to(device)
        at.stats.correct = running["correct"].to(device)
        at.stats.count = int(running["count"])
        at.epoch, at.position, at.step = int(saved["epoch"]), int(saved["position"]), int(saved["step"])
        at.history = list(saved["history"])
        at.samples_done, at.train_time_s = int(saved["samples_done"]), float(saved["train_time_s"])
        at.lr = float(saved["lr"])
        rng = saved["rng"]
        restore_global_rng(rng)
        if rng["generator_device"] == generator.device.type:
            at.epoch_generator_state, at.generator_state = rng["epoch_generator"], rng["generator"]
            generator.set_state(rng["generator"])
        else:
            # CPU and CUDA generators have different states: same epochs and steps, another data order.
            generator.manual_seed(seed + 1_000_003 * (at.epoch + 1))
            at.epoch_generator_state = at.generator_state = generator.get_state()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"The checkpoint does not fit this run ({type(exc).__name__}: {exc})") from exc
