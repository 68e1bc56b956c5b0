"""Training checkpoints, format `perceptor-checkpoint/1`: what `ml.train` needs to carry on exactly
where it stopped.

A checkpoint is one `torch.save` of a dict of tensors and plain Python values (str, int, float,
bool, None, list, tuple, dict), so `torch.load(path, weights_only=True)` reads it and no pickled
object is ever executed. It is written atomically: `<path>.tmp`, fsync, `os.replace`, fsync of
the folder, so a crash at any moment leaves either the previous checkpoint or the new one.

Keys (all written by ml.train):
    format            "perceptor-checkpoint/1"
    config            TrainConfig.to_dict()
    fingerprint       data_fingerprint(data): shapes, classes, hashes of labels and a few images
                      (speech: clips, plus sample rate, test split and noise)
    input_spec, mean, std, classes
    model, optimizer, scheduler      state dicts
    rng               {"torch", "cuda", "numpy", "python", "generator", "generator_device",
                       "epoch_generator"}: global RNGs, and the data-order generator now and at
                       the start of the current epoch (to redraw the epoch's permutation)
    epoch             epochs completed
    position          optimizer steps done inside epoch `epoch + 1` (0 at an epoch boundary)
    step, total_steps optimizer steps so far and in the whole run
    running           {"loss_sum", "correct", "count"}: the current epoch's running sums
    history           one dict per completed epoch (the epoch events' fields)
    batch_size, accumulation, effective_batch_size    micro-batch × accumulation ≈ effective
    samples_done, train_time_s, elapsed_s              for throughput and elapsed time
    torch_version
    ema               only when config["ema"] > 0: {"decay", "updates", "model"}, the weight average
                      (ml.train.WeightAverage). A checkpoint whose config has no "ema" predates it:
                      it resumes with any `ema`, the average starting from its weights.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.data import AudioData, ImageData

FORMAT = "perceptor-checkpoint/1"
# Images hashed for the fingerprint, evenly spaced: enough to tell re-ingested data apart, cheap
# on a memory map.
FINGERPRINT_IMAGES = 32


class CheckpointError(Exception):
    """A checkpoint cannot be read, or was written for other data or settings. The message says
    which; the caller decides whether to start over."""


def data_fingerprint(data: ImageData | AudioData) -> dict[str, Any]:
    """Shapes, classes and hashes of all labels and a sample of images (or clips): a checkpoint
    must never resume onto other data. Speech adds the sample rate, the test split and a hash of
    the background noise (training mixes it in)."""
    audio = getattr(data, "modality", "image") == "audio"
    labels = hashlib.sha256()
    samples = hashlib.sha256()
    splits = [(data.x_train, data.y_train), (data.x_val, data.y_val)]
    if audio and data.x_test is not None:
        splits.append((data.x_test, data.y_test))
    for x, y in splits:
        labels.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
        if len(x):
            idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), FINGERPRINT_IMAGES)).astype(np.int64))
            samples.update(np.ascontiguousarray(x[idx]).tobytes())
    fingerprint = {
        "train_shape": list(data.x_train.shape),
        "val_shape": list(data.x_val.shape),
        "classes": list(data.classes),
        "labels_sha256": labels.hexdigest(),
    }
    if not audio:
        fingerprint["images_sha256"] = samples.hexdigest()
        return fingerprint
    noise = np.ascontiguousarray(data.noise if data.noise is not None else np.zeros(0, np.int16))
    fingerprint.update(
        sample_rate=int(data.sample_rate),
        test_shape=list(data.x_test.shape) if data.x_test is not None else None,
        noise_samples=len(noise),
        clips_sha256=samples.hexdigest(),
        noise_sha256=hashlib.sha256(noise.tobytes()).hexdigest(),  # ~MBs at most: hashing it all is cheap
    )
    return fingerprint


def capture_rng(
    *, generator_state: torch.Tensor, generator_device: str, epoch_generator_state: torch.Tensor
) -> dict[str, Any]:
    """Global RNGs now, and the data generator's states after the latest complete step and before
    the current epoch's shuffle (not its live state: a step in progress has drawn from it)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state holds an ndarray; a tensor keeps the file loadable with weights_only=True.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "generator": generator_state,
        "generator_device": generator_device,
        "epoch_generator": epoch_generator_state,
    }


def restore_global_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))


def write_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Atomic: the old file stays whole until the new one is complete and on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself lives in the folder; without this a power cut can still undo it.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, tensors on the CPU. Raises CheckpointError if it cannot be read or is
    not a `perceptor-checkpoint/1` file. `mmap` maps instead of reading: for a quick look that
    never touches the weights, not for training, whose state must own its memory."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip, refused by weights_only: all unreadable
        raise CheckpointError(f"The checkpoint {os.fspath(path)} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"The file {os.fspath(path)} is not a {FORMAT} checkpoint (found {found!r})")
    return checkpoint


def check_matches(checkpoint: dict[str, Any], *, config: dict[str, Any], fingerprint: dict[str, Any], path) -> None:
    """Raise CheckpointError naming what differs when the checkpoint belongs to another run."""
    saved = checkpoint.get("config", {})
    changed = [f"{k} {saved.get(k)!r} → {config.get(k)!r}" for k in sorted(set(saved) | set(config))
               if saved.get(k) != config.get(k)]
    if changed:
        raise CheckpointError(
            f"The checkpoint {os.fspath(path)} was written with other settings ({', '.join(changed)}); "
            "it cannot be resumed with these."
        )
    saved_fp = checkpoint.get("fingerprint", {})
    differ = [k for k in sorted(set(saved_fp) | set(fingerprint)) if saved_fp.get(k) != fingerprint.get(k)]
    # Shapes and classes say most; when they differ, the hashes differ too and add nothing.
    plain = [f"{k} {saved_fp.get(k)} → {fingerprint.get(k)}" for k in differ if not k.endswith("_sha256")]
    if differ:
        details = ", ".join(plain or [k.removesuffix("_sha256") for k in differ])
        raise CheckpointError(
            f"The checkpoint {os.fspath(path)} was written for other data (differs in: {details}); "
            "it cannot be resumed on this dataset."
        )


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """Progress stored in a checkpoint, without building a model: {"epoch" (completed), "step",
    "total_steps", "history", "batch_size" (micro-batch), "accumulation"}. None when there is no
    file; CheckpointError when there is one that cannot be read."""
    if not os.path.exists(path):
        return None
    checkpoint = load_checkpoint(path, mmap=True)  # memory-mapped: the weights are not read
    try:
        return {
            "epoch": int(checkpoint["epoch"]),
            "step": int(checkpoint["step"]),
            "total_steps": int(checkpoint["total_steps"]),
            "history": list(checkpoint["history"]),
            "batch_size": int(checkpoint["batch_size"]),
            "accumulation": int(checkpoint["accumulation"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint {os.fspath(path)} is incomplete ({type(exc).__name__}: {exc})") from exc
