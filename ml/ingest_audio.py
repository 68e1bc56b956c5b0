"""Turn an archive of class folders of clips into the `perceptor-audio/1` arrays (docs/architecture.md).

    yes/1.wav, no/2.flac, up/a/3.ogg   ->   audio.npy (N, clip_samples) int16 at 16 kHz, labels.npy,
                                             dataset.json (+ noise.npy from _background_noise_/)

Works like the image ingester (ml.ingest), whose helpers it reuses: one class per top folder after
stripping one single top folder, skipped files listed with a reason, a seeded stratified split, and
an output folder that appears whole or not at all. Two passes keep memory flat: pass 1 reads only
headers (refusing non-audio, empty and too-long files before decoding them, and counting the rest);
pass 2 decodes, resamples to 16 kHz mono and pads/trims every clip (ml.audio.fit_length) into a
staging file of int16 rows, which is then written out in train, val, test order.

The Google Speech Commands layout works as it is: `validation_list.txt` / `testing_list.txt` at the
top name the validation and test clips ("split": "lists"; every other clip trains), and the long
recordings in `_background_noise_/` become noise.npy for augmentation instead of a class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from ml.archive import ArchiveLimits, DatasetError, Member, open_archive
from ml.audio import (AUDIO_EXTENSIONS, SAMPLE_RATE, SILENCE_DBFS, AudioDecodeError, audio_info, check_length,
                      decode_audio, fit_length, to_int16)
from ml.ingest import (COPY_CHUNK_BYTES, SAMPLES_PER_CLASS, Progress, _build_atomically, _Counter,
                       _first_skipped, _fsync, _stratified_split, _walk)

__all__ = ["ingest_audio_archive", "AudioIngestReport", "FORMAT", "NOISE_FOLDER", "LIST_FILES"]

FORMAT = "perceptor-audio/1"
NOISE_FOLDER = "_background_noise_"
LIST_FILES = {"validation_list.txt": "val", "testing_list.txt": "test"}  # Speech Commands' split lists
# Background noise is only mixed into training clips, a few seconds at a time; ten minutes is plenty
# (Speech Commands ships about 6.5) and bounds memory and disk whatever is uploaded.
NOISE_MAX_SECONDS = 600.0
ACCEPTED = "WAV, FLAC, OGG, Opus, MP3, AIFF"
# Audio a user may well have, which soundfile is not asked to read here: the reason says what to do.
OTHER_AUDIO = {".m4a", ".aac", ".wma", ".aifc", ".amr", ".webm", ".mp4", ".3gp", ".caf", ".au", ".mka"}


@dataclass
class AudioIngestReport:
    """What was stored; `to_json()` is exactly dataset.json."""

    classes: list[str]
    clip_samples: int
    num_train: int
    num_val: int
    num_test: int
    counts: dict[str, list[int]]  # {"train"|"val"|"test": [per class]}
    samples: dict[str, list[int]]  # class -> up to 8 indices into audio.npy (audible clips first)
    skipped: list[dict[str, str]]  # [{"file": "yes/x.wav", "reason": "..."}]
    warnings: list[dict[str, str]]  # kept, but worth a look: silent clips, unused noise
    durations: dict[str, float]  # seconds before fitting: min, mean, median, max
    trimmed: int  # clips longer than clip_samples: the loudest window was kept
    padded: int  # clips shorter than clip_samples: centred in silence
    split: str  # "lists" (Speech Commands' list files) or "random" (seeded, stratified)
    noise_files: int
    noise_seconds: float
    options: dict
    sample_rate: int = SAMPLE_RATE
    format: str = FORMAT
    kind: ClassVar[str] = "audio"

    @property
    def num_samples(self) -> int:
        return self.num_train + self.num_val + self.num_test

    def to_json(self) -> dict:
        keys = ("format", "classes", "sample_rate", "clip_samples", "num_train", "num_val", "num_test", "counts",
                "samples", "skipped", "warnings", "durations", "trimmed", "padded", "split", "noise_files",
                "noise_seconds", "options")
        data = asdict(self)
        return {k: data[k] for k in keys}


@dataclass
class _Clip:
    member: Member
    path: str  # the member name as it is in the archive: shown to the user
    rel: str  # path below the dataset's root: what the split lists name
    label: str | None  # None for background noise
    first_seconds: float | None = None  # noise: decode only this much (the noise budget)


def ingest_audio_archive(
    archive_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    clip_seconds: float = 1.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_clip_seconds: float = 30.0,
    limits: ArchiveLimits = ArchiveLimits(),
    progress: Progress | None = None,
) -> AudioIngestReport:
    """Ingest an archive of class folders of clips into out_dir (replaced if it exists).

    Every clip becomes clip_seconds of 16 kHz mono int16; clips longer than max_clip_seconds are
    skipped. Raises DatasetError when the archive as a whole is refused; out_dir is then removed.
    """
    if not 0.01 <= clip_seconds <= 60:
        raise ValueError(f"clip_seconds must be between 0.01 and 60, got {clip_seconds}")
    if not max_clip_seconds > 0:
        raise ValueError(f"max_clip_seconds must be positive, got {max_clip_seconds}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    options = {"clip_seconds": clip_seconds, "val_fraction": val_fraction, "seed": seed,
               "max_clip_seconds": max_clip_seconds}
    return _build_atomically(out_dir, lambda work: _ingest(Path(archive_path), work, options, limits, progress))


def _ingest(archive_path: Path, work: Path, options: dict, limits: ArchiveLimits,
            progress: Progress | None) -> AudioIngestReport:
    skipped: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    clip_samples = max(1, round(options["clip_seconds"] * SAMPLE_RATE))
    max_seconds = options["max_clip_seconds"]
    with open_archive(archive_path, limits) as archive:
        entries, list_members = _select(archive.members, skipped)
        _check_classes([e for e in entries if e.label is not None], skipped, decoded=False)
        counter = _Counter(total=2 * len(entries), callback=progress)  # refined after pass 1

        # Pass 1: headers only. Nothing is decoded until the clip count is known. The split lists
        # are read on the way, in archive order, so a .tar.gz is never rewound for them.
        lists: dict[str, set[str]] = {}
        list_split = {id(member): split for split, member in list_members.items()}
        entry_of = {id(entry.member): entry for entry in entries}
        readable: list[_Clip] = []
        noise_budget = NOISE_MAX_SECONDS
        for member in archive.members:
            if id(member) in list_split:
                lists[list_split[id(member)]] = _read_list(archive.read(member))
                continue
            if (entry := entry_of.get(id(member))) is None:
                continue
            data = archive.read(member)  # a DatasetError here means the archive itself is broken
            with _skip_on_error(entry, skipped):
                info = audio_info(data)
                check_length(info.frames, info.sample_rate, max_seconds if entry.label is not None else None)
                if entry.label is not None:
                    readable.append(entry)
                elif noise_budget <= 0:
                    warnings.append({"file": entry.path, "reason": "not used: background noise beyond the first "
                                                                  f"{_noise_limit()} is ignored"})
                else:
                    entry.first_seconds = min(info.seconds, noise_budget)
                    noise_budget -= entry.first_seconds
                    if entry.first_seconds < info.seconds:
                        warnings.append({"file": entry.path, "reason": f"only the first {entry.first_seconds:.1f} s "
                                         f"are used: background noise is limited to {_noise_limit()}"})
                    readable.append(entry)
            counter.step()
        _check_classes([e for e in readable if e.label is not None], skipped, decoded=True)
        counter.total = len(entries) + len(readable)

        # Pass 2: decode in archive order (sequential reads of a .tar.gz), appending each fitted clip
        # to a staging file; the train/val/test order is only known once every decode is done.
        staging_path = work / "staging.raw"
        clips: list[_Clip] = []
        seconds: list[float] = []
        silent: list[bool] = []
        fitted = {"trimmed": 0, "padded": 0}
        noise: list[np.ndarray] = []
        noise_files = 0
        with open(staging_path, "wb") as staging:
            for entry in readable:
                data = archive.read(entry.member)
                wave = None
                with _skip_on_error(entry, skipped):
                    wave = decode_audio(data, first_seconds=entry.first_seconds) if entry.label is None \
                        else decode_audio(data, max_seconds=max_seconds)
                counter.step()
                if wave is None:
                    continue
                # Writes stay outside _skip_on_error: a full disk must fail the ingest, not skip clips.
                if entry.label is None:
                    noise.append(to_int16(wave))
                    noise_files += 1
                    continue
                fit, how = fit_length(wave, clip_samples)
                staging.write(to_int16(fit).astype("<i2", copy=False).tobytes())
                if how:
                    fitted[how] += 1
                peak = float(np.abs(wave).max())
                quiet = peak < 10 ** (SILENCE_DBFS / 20)
                if quiet:
                    level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
                    warnings.append({"file": entry.path, "reason": f"silent: the loudest sample is {level} "
                                     f"(below {SILENCE_DBFS:g} dBFS); kept"})
                clips.append(entry)
                seconds.append(len(wave) / SAMPLE_RATE)
                silent.append(quiet)
        _check_classes(clips, skipped, decoded=True)

    classes = sorted({c.label for c in clips})
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[c.label] for c in clips], dtype=np.int64)
    train, val, test, split = _split(clips, labels, len(classes), lists, options, warnings)
    order = np.concatenate([train, val, test]).astype(np.int64)

    _write_in_order(staging_path, work / "audio.npy", order, clip_samples)
    staging_path.unlink()
    ordered = labels[order]
    np.save(work / "labels.npy", ordered)
    written = ["audio.npy", "labels.npy", "dataset.json"]
    noise_samples = 0
    if noise:
        joined = np.concatenate(noise)
        noise_samples = len(joined)
        np.save(work / "noise.npy", joined)
        written.append("noise.npy")
        del joined, noise

    quiet_in_order = np.array(silent, dtype=bool)[order]
    samples = {}
    for k, name in enumerate(classes):
        rows_k = np.flatnonzero(ordered == k)
        audible_first = np.concatenate([rows_k[~quiet_in_order[rows_k]], rows_k[quiet_in_order[rows_k]]])
        samples[name] = audible_first[:SAMPLES_PER_CLASS].tolist()
    lengths = np.array(seconds, dtype=np.float64)
    report = AudioIngestReport(
        classes=classes, clip_samples=clip_samples,
        num_train=len(train), num_val=len(val), num_test=len(test),
        counts={part: np.bincount(labels[idx], minlength=len(classes)).tolist()
                for part, idx in (("train", train), ("val", val), ("test", test))},
        samples=samples, skipped=skipped, warnings=warnings,
        durations={"min": round(float(lengths.min()), 3), "mean": round(float(lengths.mean()), 3),
                   "median": round(float(np.median(lengths)), 3), "max": round(float(lengths.max()), 3)},
        trimmed=fitted["trimmed"], padded=fitted["padded"], split=split,
        noise_files=noise_files, noise_seconds=round(noise_samples / SAMPLE_RATE, 3), options=options,
    )
    with open(work / "dataset.json", "w") as f:
        json.dump(report.to_json(), f, indent=1)
    for name in written:
        _fsync(work / name)
    if progress is not None:
        progress(counter.total, counter.total)
    return report


def _write_in_order(staging_path: Path, out_path: Path, order: np.ndarray, clip_samples: int) -> None:
    """audio.npy = the staging file's rows in `order`, with plain reads and writes, a chunk at a time.

    Not memory maps, as for images: mapped pages count as the worker's resident memory (twice the
    dataset's size at the end of an ingest: Speech Commands is 3.4 GB), and a full disk is a plain
    OSError here instead of a SIGBUS."""
    row_bytes = 2 * clip_samples
    rows = max(1, COPY_CHUNK_BYTES // 16 // row_bytes)  # 4 MiB chunks: plenty for sequential writes
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<i2")), "fortran_order": False,
              "shape": (len(order), clip_samples)}
    with open(staging_path, "rb") as src, open(out_path, "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, header)
        for start in range(0, len(order), rows):
            chunk = b"".join(os.pread(src.fileno(), row_bytes, int(i) * row_bytes) for i in order[start:start + rows])
            if len(chunk) != row_bytes * len(order[start:start + rows]):
                raise OSError(f"the staging file {staging_path} is shorter than expected")
            dst.write(chunk)


def _select(members: list[Member], skipped: list[dict[str, str]]) -> tuple[list[_Clip], dict[str, Member]]:
    """Clips in class folders and background noise, in archive order, and the split list files.
    Class = first folder, after stripping one single top folder (ml.ingest._walk)."""
    entries: list[_Clip] = []
    lists: dict[str, Member] = {}
    for member, rel in _walk(members):
        extension = PurePosixPath(rel[-1]).suffix.lower()
        if len(rel) == 1 and rel[0].lower() in LIST_FILES:
            lists[LIST_FILES[rel[0].lower()]] = member
        elif len(rel) < 2:
            skipped.append({"file": member.name, "reason": "not inside a class folder"})
        elif extension not in AUDIO_EXTENSIONS:
            skipped.append({"file": member.name, "reason": _unused_extension(extension)})
        else:
            noise = rel[0].lower() == NOISE_FOLDER
            entries.append(_Clip(member=member, path=member.name, rel="/".join(rel), label=None if noise else rel[0]))
    return entries, lists


def _noise_limit() -> str:
    minutes = NOISE_MAX_SECONDS / 60
    return f"{minutes:g} minutes" if minutes >= 1 and minutes == int(minutes) else f"{NOISE_MAX_SECONDS:g} s"


def _unused_extension(extension: str) -> str:
    if extension in OTHER_AUDIO:
        return f"{extension} files are not used ({ACCEPTED} are); convert them to WAV or FLAC"
    kind = f"{extension} files are" if extension else "files without an extension are"
    return f"not an audio file: {kind} not used ({ACCEPTED} are)"


def _read_list(data: bytes) -> set[str]:
    """Paths below the root, one a line ("yes/0a7c2a8d_nohash_0.wav"), as _Clip.rel spells them."""
    paths = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = [p for p in line.strip().replace("\\", "/").split("/") if p not in ("", ".")]
        if parts and not line.lstrip().startswith("#"):
            paths.add("/".join(parts))
    return paths


def _split(clips: list[_Clip], labels: np.ndarray, num_classes: int, lists: dict[str, set[str]], options: dict,
           warnings: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(train, val, test) indices into clips, each shuffled with the seed, and how they were chosen."""
    empty = np.empty(0, dtype=np.int64)
    if lists:
        test_set, val_set = lists.get("test", set()), lists.get("val", set())
        part = np.array([2 if c.rel in test_set else 1 if c.rel in val_set else 0 for c in clips])
        if part.any():
            if not (part == 0).any():
                raise DatasetError(
                    "Every clip is named in validation_list.txt or testing_list.txt, so none is left to train "
                    "on. Remove the lists to split at random, or leave some clips out of them."
                )
            rng = np.random.default_rng(options["seed"])
            # Sorted by path first, so the stored order depends on the seed, not on how the archive was made.
            by_path = np.array(sorted(range(len(clips)), key=lambda i: clips[i].rel), dtype=np.int64)
            train, val, test = (rng.permutation(by_path[part[by_path] == p]) for p in (0, 1, 2))
            return train, val, test, "lists"
        names = " and ".join(name for name, split in LIST_FILES.items() if split in lists)
        warnings.append({"file": names, "reason": "names none of the archive's clips; a random split was used"})
    train, val = _stratified_split(labels, num_classes, options["val_fraction"], options["seed"])
    return train, val, empty, "random"


def _check_classes(clips: list[_Clip], skipped: list[dict[str, str]], *, decoded: bool) -> None:
    if not clips and not decoded:
        raise DatasetError(
            "No class folders with audio clips found. Put the clips in one folder per class, "
            f"e.g. yes/1.wav and no/2.wav ({ACCEPTED} files)" + _first_skipped(skipped)
        )
    if not clips:
        raise DatasetError("No audio clip in the archive could be used" + _first_skipped(skipped))
    labels = sorted({c.label for c in clips})
    if len(labels) == 1:
        raise DatasetError(
            f"Only one class was found ({labels[0]!r}); a classifier needs at least two class folders, "
            "e.g. yes/1.wav and no/2.wav" + _first_skipped(skipped)
        )


@contextmanager
def _skip_on_error(clip: _Clip, skipped: list[dict[str, str]]) -> Iterator[None]:
    """One unusable file is skipped with its reason; it never sinks the whole dataset."""
    try:
        yield
    except AudioDecodeError as exc:
        skipped.append({"file": clip.path, "reason": str(exc)})
    except MemoryError:
        raise
    except Exception as exc:  # libsndfile/torchaudio oddities on crafted files
        skipped.append({"file": clip.path, "reason": f"cannot decode audio ({type(exc).__name__})"})
