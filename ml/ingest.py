"""Turn an archive of class folders into the `perceptor-images/1` arrays (docs/architecture.md).

`ingest_archive` is the front door for both kinds: it looks at the files (images or audio clips,
`detect_kind`) and hands speech archives to `ml.ingest_audio`, which reuses the helpers below.

    cat/1.jpg, cat/2.png, dog/a/b/3.jpg   ->   images.npy (N,H,W,C) uint8, labels.npy, dataset.json

Two passes over the archive keep memory flat however big it is: pass 1 reads only image headers
(size, grayscale, readable at all) to fix H, W and C; pass 2 decodes into a memory-mapped file.
Everything is written in a hidden sibling folder that is renamed into place at the end, so a crash
or a refusal never leaves a half dataset at out_dir.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

import numpy as np

from ml.archive import ArchiveLimits, DatasetError, Member, open_archive
from ml.images import ImageDecodeError, decode_image, is_grayscale, open_image

if TYPE_CHECKING:
    from ml.ingest_audio import AudioIngestReport

__all__ = ["ingest_archive", "detect_kind", "ingest_image_archive", "IngestReport", "DatasetError",
           "ArchiveLimits", "FORMAT", "KINDS"]

FORMAT = "perceptor-images/1"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".gif"}
# Operating-system litter, ignored without a word (dotfiles and __MACOSX/ too).
JUNK_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
# Images that all share one size keep it, up to this side; bigger ones are squashed to
# image_size like mixed sizes are (a folder of uniform 4000×3000 photos must not become 36 MB rows).
MAX_NATIVE_SIDE = 512
SAMPLES_PER_CLASS = 8  # thumbnails listed in dataset.json
COPY_CHUNK_BYTES = 64 * 1024 * 1024  # rows gathered at once when ordering train-then-val

Progress = Callable[[int, int], None]
KINDS = ("auto", "image", "audio")
_T = TypeVar("_T")


@dataclass
class IngestReport:
    """What was stored; `to_json()` is exactly dataset.json."""

    classes: list[str]
    height: int
    width: int
    channels: int
    num_train: int
    num_val: int
    counts: dict[str, list[int]]  # {"train": [per class], "val": [per class]}
    samples: dict[str, list[int]]  # class -> up to 8 sample indices, for thumbnails
    skipped: list[dict[str, str]]  # [{"file": "cat/x.jpg", "reason": "..."}]
    options: dict
    resized: bool
    format: str = FORMAT
    kind: ClassVar[str] = "image"  # what ingest_archive produced; not part of dataset.json

    @property
    def num_samples(self) -> int:
        return self.num_train + self.num_val

    def to_json(self) -> dict:
        keys = ("format", "classes", "height", "width", "channels", "num_train", "num_val", "counts",
                "samples", "skipped", "options", "resized")
        data = asdict(self)
        return {k: data[k] for k in keys}


@dataclass
class _Candidate:
    member: Member
    path: str  # shown to the user: the member name as it is in the archive
    label: str
    size: tuple[int, int] = (0, 0)  # (height, width) from the header
    gray: bool = False


@dataclass
class _Counter:
    total: int
    callback: Progress | None
    done: int = field(default=0)

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def ingest_image_archive(
    archive_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    limits: ArchiveLimits = ArchiveLimits(),
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest an archive of class folders into out_dir (replaced if it exists).

    Raises DatasetError when the archive as a whole is refused; out_dir is then removed.
    Files that cannot be used (not in a class folder, not an image, undecodable) are skipped and
    listed with a reason in `IngestReport.skipped`.
    """
    if not 1 <= image_size <= 4096:
        raise ValueError(f"image_size must be between 1 and 4096, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    options = {"image_size": image_size, "val_fraction": val_fraction, "seed": seed}
    return _build_atomically(out_dir, lambda work: _ingest(Path(archive_path), work, options, limits, progress))


def _build_atomically(out_dir: str | os.PathLike, build: Callable[[Path], _T]) -> _T:
    """Run build(work) in a hidden sibling folder of out_dir, then rename it to out_dir (replacing
    what was there). On any failure, or an interrupt, both the work folder and out_dir are removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a killed worker
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(work, 0o755)  # mkdtemp makes it private; the web server must read what the worker wrote
    try:
        result = build(work)
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return result


def _ingest(archive_path: Path, work: Path, options: dict, limits: ArchiveLimits,
            progress: Progress | None) -> IngestReport:
    skipped: list[dict[str, str]] = []
    with open_archive(archive_path, limits) as archive:
        candidates = _select(archive.members, skipped)
        _check_classes(candidates, skipped, decoded=False)
        counter = _Counter(total=2 * len(candidates), callback=progress)  # refined after pass 1

        # Pass 1: headers only. Decoding waits until H, W and C are known.
        readable = []
        for cand in candidates:
            data = archive.read(cand.member)  # a DatasetError here means the archive itself is broken
            with _skip_on_error(cand, skipped):
                image = open_image(data)
                cand.size, cand.gray = (image.height, image.width), is_grayscale(image)
                readable.append(cand)
            counter.step()
        _check_classes(readable, skipped, decoded=True)
        counter.total = len(candidates) + len(readable)

        sizes = {c.size for c in readable}
        native = next(iter(sizes)) if len(sizes) == 1 else None
        resized = native is None or max(native) > MAX_NATIVE_SIDE
        height, width = (options["image_size"],) * 2 if resized else native
        channels = 1 if all(c.gray for c in readable) else 3

        # Pass 2: decode, in archive order (sequential reads of a .tar.gz), into a staging memmap;
        # the train-then-val order is only known once every decode has succeeded or not.
        staging_path = work / "staging.npy"
        staging = _open_memmap(staging_path, (len(readable), height, width, channels))
        decoded: list[_Candidate] = []
        for cand in readable:
            data = archive.read(cand.member)
            with _skip_on_error(cand, skipped):
                staging[len(decoded)] = decode_image(data, size=(height, width), channels=channels)
                decoded.append(cand)
            counter.step()
        _check_classes(decoded, skipped, decoded=True)

    classes = sorted({c.label for c in decoded})
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[c.label] for c in decoded], dtype=np.int64)
    train, val = _stratified_split(labels, len(classes), options["val_fraction"], options["seed"])
    order = np.concatenate([train, val])

    images = _open_memmap(work / "images.npy", (len(order), height, width, channels))
    rows = max(1, COPY_CHUNK_BYTES // max(1, height * width * channels))
    for start in range(0, len(order), rows):
        images[start:start + rows] = staging[order[start:start + rows]]
    images.flush()
    del images, staging
    staging_path.unlink()
    ordered = labels[order]
    np.save(work / "labels.npy", ordered)

    samples = {name: np.flatnonzero(ordered == i)[:SAMPLES_PER_CLASS].tolist() for i, name in enumerate(classes)}
    report = IngestReport(
        classes=classes, height=int(height), width=int(width), channels=channels,
        num_train=len(train), num_val=len(val),
        counts={"train": np.bincount(labels[train], minlength=len(classes)).tolist(),
                "val": np.bincount(labels[val], minlength=len(classes)).tolist()},
        samples=samples, skipped=skipped, options=options, resized=resized,
    )
    with open(work / "dataset.json", "w") as f:
        json.dump(report.to_json(), f, indent=1)
    for name in ("images.npy", "labels.npy", "dataset.json"):
        _fsync(work / name)
    if progress is not None:
        progress(counter.total, counter.total)
    return report


@contextmanager
def _skip_on_error(cand: _Candidate, skipped: list[dict[str, str]]) -> Iterator[None]:
    """One unreadable image is skipped with its reason; it never sinks the whole dataset."""
    try:
        yield
    except ImageDecodeError as exc:
        skipped.append({"file": cand.path, "reason": str(exc)})
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises odd errors (struct.error, IndexError...) on crafted files
        skipped.append({"file": cand.path, "reason": f"cannot decode image ({type(exc).__name__})"})


def _walk(members: list[Member]) -> list[tuple[Member, tuple[str, ...]]]:
    """(member, path parts below the dataset's root) for every file that is not system litter.

    The root is the archive's top, or its one single top folder when everything is inside it."""
    files = []
    for member in members:
        parts = PurePosixPath(member.name).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in JUNK_NAMES:
            continue
        files.append((member, parts))
    # "shapes/cat/1.png, shapes/dog/2.png" is the common way to zip a folder: strip "shapes".
    # Only when something lies deeper, so that "cat/1.png, cat/2.png" stays one class, "cat".
    tops = {parts[0] for _, parts in files if len(parts) > 1}
    strip = len(tops) == 1 and any(len(parts) > 2 for _, parts in files)
    return [(member, parts[1:] if strip and len(parts) > 1 else parts) for member, parts in files]


def _select(members: list[Member], skipped: list[dict[str, str]]) -> list[_Candidate]:
    """Image files in class folders. Class = first folder, after stripping one single top folder."""
    candidates = []
    for member, rel in _walk(members):
        extension = PurePosixPath(rel[-1]).suffix.lower()
        if len(rel) < 2:
            skipped.append({"file": member.name, "reason": "not inside a class folder"})
        elif extension not in IMAGE_EXTENSIONS:
            kind = f"{extension} files are" if extension else "files without an extension are"
            skipped.append({"file": member.name,
                            "reason": f"not an image: {kind} not used (JPEG, PNG, BMP, WebP, GIF are)"})
        else:
            candidates.append(_Candidate(member=member, path=member.name, label=rel[0]))
    return candidates


def _check_classes(candidates: list[_Candidate], skipped: list[dict[str, str]], *, decoded: bool) -> None:
    if not candidates and not decoded:
        raise DatasetError(
            "No class folders with images found. Put the images in one folder per class, "
            "e.g. cat/1.jpg and dog/2.jpg" + _first_skipped(skipped)
        )
    if not candidates:
        raise DatasetError("No image in the archive could be decoded" + _first_skipped(skipped))
    labels = sorted({c.label for c in candidates})
    if len(labels) == 1:
        raise DatasetError(
            f"Only one class was found ({labels[0]!r}); a classifier needs at least two class folders, "
            "e.g. cat/1.jpg and dog/2.jpg" + _first_skipped(skipped)
        )


def _first_skipped(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return "."
    first = skipped[0]
    more = f" and {len(skipped) - 1:,} more" if len(skipped) > 1 else ""
    return f". Skipped: {first['file']} ({first['reason']}){more}."


def _stratified_split(labels: np.ndarray, num_classes: int, val_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; every class with >= 2 samples gets >= 1 validation sample
    (when val_fraction > 0) and keeps >= 1 training sample. Each part is shuffled."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n = len(idx)
        n_val = int(np.floor(n * val_fraction + 0.5))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    empty = np.empty(0, dtype=np.int64)
    return (rng.permutation(np.concatenate(train or [empty])).astype(np.int64),
            rng.permutation(np.concatenate(val or [empty])).astype(np.int64))


def _open_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    # The file is sparse until written; on a full disk a write through the map would kill the
    # process with SIGBUS. Reserving the blocks now turns that into a plain OSError.
    if hasattr(os, "posix_fallocate") and array.size:
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            except OSError as exc:
                if exc.errno not in (95, 22):  # EOPNOTSUPP/EINVAL: the filesystem cannot reserve
                    raise
    return array


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_dir(work: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        os.replace(out_dir, old / "old")
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out_dir)


# --- Both kinds ---------------------------------------------------------------------------------


def detect_kind(archive_path: str | os.PathLike, limits: ArchiveLimits = ArchiveLimits()) -> str:
    """Say "audio" when the archive holds more audio clips than images, else "image" (also when it
    holds neither, so that the image ingester's refusal explains what a dataset looks like).

    Only names are looked at (no member is read). Raises DatasetError for a refused archive."""
    from ml.audio import AUDIO_EXTENSIONS

    images = clips = 0
    with open_archive(archive_path, limits) as archive:
        for _, rel in _walk(archive.members):
            extension = PurePosixPath(rel[-1]).suffix.lower()
            images += extension in IMAGE_EXTENSIONS
            clips += extension in AUDIO_EXTENSIONS
    return "audio" if clips > images else "image"


def ingest_archive(
    archive_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    kind: Literal["auto", "image", "audio"] = "auto",
    image_size: int = 64,
    clip_seconds: float = 1.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_clip_seconds: float = 30.0,
    limits: ArchiveLimits = ArchiveLimits(),
    progress: Progress | None = None,
) -> IngestReport | AudioIngestReport:
    """Ingest an archive of images or of audio clips (kind="auto" decides from the files).

    The report's .kind says which it was: "image" (perceptor-images/1, image_size applies) or
    "audio" (perceptor-audio/1, clip_seconds and max_clip_seconds apply)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown dataset kind {kind!r}. Choose one of: {', '.join(KINDS)}")
    if kind == "auto":
        try:
            kind = detect_kind(archive_path, limits)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)  # a refusal leaves no dataset, as in the ingesters
            raise
    if kind == "audio":
        from ml.ingest_audio import ingest_audio_archive

        return ingest_audio_archive(archive_path, out_dir, clip_seconds=clip_seconds, val_fraction=val_fraction,
                                    seed=seed, max_clip_seconds=max_clip_seconds, limits=limits,
                                    progress=progress)
    return ingest_image_archive(archive_path, out_dir, image_size=image_size, val_fraction=val_fraction,
                                seed=seed, limits=limits, progress=progress)
