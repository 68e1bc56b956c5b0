"""Safe reading of uploaded dataset archives (.zip, .tar, .tar.gz), one member at a time, in memory.

Nothing is ever extracted to disk, so path tricks could not escape a folder anyway; they are
refused all the same, because no real dataset contains them and a clear error beats a silent skip.
Zip bombs are refused from the declared sizes before anything is decompressed, and every read is
bounded by the declared size, because declared sizes can lie.

    with open_archive(path, ArchiveLimits()) as archive:
        for member in archive.members:          # regular files only, checked against the limits
            data = archive.read(member)         # bytes, at most member.size of them
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ZIP, TAR, TAR_GZ = "zip", "tar", "tar.gz"
SUPPORTED = "a .zip, .tar or .tar.gz archive"

MiB = 1024 * 1024


class DatasetError(Exception):
    """The archive as a whole is refused; the message says why in a user's words."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_expanded_bytes: int = 8 * 1024 * MiB  # sum of the declared sizes of all members
    max_member_bytes: int = 256 * MiB  # one member; far above any real training image
    max_members: int = 2_000_000  # entries, folders included
    max_ratio: float = 200.0  # expanded / compressed bytes
    # Ratios are only judged above this many expanded bytes: a small solid-colour BMP deflates
    # 500:1 quite legitimately, and small members cannot blow anything up.
    ratio_min_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        for name in ("max_expanded_bytes", "max_member_bytes", "max_members", "max_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ArchiveLimits.{name} must be positive")


@dataclass(frozen=True)
class Member:
    """A regular file inside the archive."""

    name: str  # normalised path: '/'-separated, no leading './', no empty parts
    size: int  # declared expanded size in bytes
    _ref: object = field(repr=False, compare=False, default=None)  # ZipInfo or TarInfo


def _is_tar_block(block: bytes) -> bool:
    if len(block) < tarfile.BLOCKSIZE:
        return False
    if block[: tarfile.BLOCKSIZE] == bytes(tarfile.BLOCKSIZE):
        return True  # end-of-archive marker first: an empty tar
    try:
        tarfile.TarInfo.frombuf(block[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


# Formats people upload by mistake, so the refusal can say what the file actually is.
_OTHER_MAGIC = [
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"(\xb5/\xfd", "zstd-compressed"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
]


def sniff_format(head: bytes) -> str:
    """Tell the archive format from the first bytes of a file (64 KiB is plenty).

    Returns ZIP, TAR or TAR_GZ; raises DatasetError saying what the file is otherwise.
    """
    if not head:
        raise DatasetError(f"The file is empty; upload {SUPPORTED}.")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # local file header, or an empty zip
        return ZIP
    if head.startswith(b"\x1f\x8b"):
        try:
            block = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, tarfile.BLOCKSIZE)
        except zlib.error:
            raise DatasetError("The file looks gzip-compressed but is corrupt.") from None
        if _is_tar_block(block):
            return TAR_GZ
        raise DatasetError(f"The file is gzip-compressed but does not contain a tar archive; upload {SUPPORTED}.")
    if _is_tar_block(head):
        return TAR
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            raise DatasetError(f"The file is {what}, not {SUPPORTED}.")
    raise DatasetError(f"The file is not {SUPPORTED}.")


def detect_format(path: str | os.PathLike) -> str:
    """Archive format of a file, by content (the name is never trusted)."""
    with open(path, "rb") as f:
        return sniff_format(f.read(64 * 1024))


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_member_name(raw: str) -> str:
    """Normalise a member name, refusing anything that points outside the archive's folder.

    Backslashes count as separators (Windows zippers write them), so `..\\evil` is caught too.
    """
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise DatasetError(f"Refused: the archive member {raw!r} has a NUL character in its name.")
    if name.startswith("/"):
        raise DatasetError(f"Refused: the archive member {raw!r} has an absolute path.")
    if _DRIVE.match(name):
        raise DatasetError(f"Refused: the archive member {raw!r} has a drive letter.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(f"Refused: the archive member {raw!r} points outside the archive (..).")
    return "/".join(parts)


class Archive:
    """An open archive whose members have all been checked. Use open_archive()."""

    def __init__(self, path: str | os.PathLike, limits: ArchiveLimits) -> None:
        self.path = Path(path)
        self.limits = limits
        self.format = detect_format(self.path)
        self.compressed_bytes = self.path.stat().st_size
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._expanded = 0
        self._count = 0
        try:
            self.members: list[Member] = self._scan_zip() if self.format == ZIP else self._scan_tar()
        except BaseException:
            self.close()
            raise
        if not self.members:
            raise DatasetError("The archive is empty: it contains no files.")

    # --- checks shared by both formats, made on each header before any content is read ------
    def _count_entry(self, raw_name: str) -> None:
        self._count += 1
        if self._count > self.limits.max_members:
            raise DatasetError(f"Refused: the archive has more than {self.limits.max_members:,} entries.")

    def _check_size(self, raw_name: str, size: int, compressed: int | None) -> None:
        lim = self.limits
        if size > lim.max_member_bytes:
            raise DatasetError(
                f"Refused: {raw_name!r} would expand to {size / MiB:,.0f} MiB; "
                f"the limit per file is {lim.max_member_bytes / MiB:,.0f} MiB."
            )
        self._expanded += size
        if self._expanded > lim.max_expanded_bytes:
            raise DatasetError(
                f"Refused: the archive would expand to more than {lim.max_expanded_bytes / MiB:,.0f} MiB "
                f"(reached at {raw_name!r})."
            )
        if compressed is not None and size >= lim.ratio_min_bytes and size > lim.max_ratio * max(compressed, 1):
            raise DatasetError(
                f"Refused: {raw_name!r} is compressed {size / max(compressed, 1):,.0f}:1, "
                f"more than the {lim.max_ratio:g}:1 limit (a zip bomb?)."
            )
        if self._expanded >= lim.ratio_min_bytes and self._expanded > lim.max_ratio * max(self.compressed_bytes, 1):
            raise DatasetError(
                f"Refused: the archive is compressed more than {lim.max_ratio:g}:1 "
                f"(reached at {raw_name!r}; a zip bomb?)."
            )

    # --- zip ------------------------------------------------------------------------------------
    def _scan_zip(self) -> list[Member]:
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"The zip archive is corrupt: {exc}.") from None
        members = []
        for info in infos:
            raw = info.filename
            self._count_entry(raw)
            name = safe_member_name(raw)
            kind = stat.S_IFMT(info.external_attr >> 16)  # Unix mode bits, 0 when made on Windows
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise DatasetError(f"Refused: the archive member {raw!r} is {_kind_name(kind)}, not a regular file.")
            if info.is_dir() or kind == stat.S_IFDIR:
                continue
            if not name:
                raise DatasetError(f"Refused: the archive member {raw!r} has no name.")
            if info.flag_bits & 0x1:
                raise DatasetError(f"Refused: {raw!r} is encrypted; upload an archive without a password.")
            self._check_size(raw, info.file_size, info.compress_size)
            members.append(Member(name, info.file_size, info))
        return members

    # --- tar ------------------------------------------------------------------------------------
    def _scan_tar(self) -> list[Member]:
        # Headers are walked one by one (not getmembers()), so a bomb is refused at its header,
        # before the stream is decompressed past it.
        members = []
        try:
            self._tar = tarfile.open(self.path, mode="r:gz" if self.format == TAR_GZ else "r:")
            while (info := self._tar.next()) is not None:
                raw = info.name
                self._count_entry(raw)
                name = safe_member_name(raw)
                if info.isdir():
                    continue
                if info.issym():
                    raise DatasetError(f"Refused: the archive member {raw!r} is a symbolic link.")
                if info.islnk():
                    raise DatasetError(f"Refused: the archive member {raw!r} is a hard link.")
                if info.ischr() or info.isblk():
                    raise DatasetError(f"Refused: the archive member {raw!r} is a device file.")
                if info.isfifo():
                    raise DatasetError(f"Refused: the archive member {raw!r} is a named pipe.")
                if not info.isreg():
                    raise DatasetError(f"Refused: the archive member {raw!r} is not a regular file.")
                if not name:
                    raise DatasetError(f"Refused: the archive member {raw!r} has no name.")
                self._check_size(raw, info.size, None)
                members.append(Member(name, info.size, info))
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
            raise DatasetError(f"The tar archive is corrupt: {exc}.") from None
        return members

    # --- reading --------------------------------------------------------------------------------
    def read(self, member: Member) -> bytes:
        """The member's bytes, never more than its declared size (which the limits checked)."""
        try:
            if self._zip is not None:
                with self._zip.open(member._ref) as f:  # type: ignore[arg-type]
                    data = f.read(member.size + 1)
            else:
                f = self._tar.extractfile(member._ref)  # type: ignore[union-attr, arg-type]
                data = f.read(member.size + 1) if f is not None else b""
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error,
                NotImplementedError, RuntimeError, ValueError) as exc:
            raise DatasetError(f"The archive is corrupt: cannot read {member.name!r} ({exc}).") from None
        if len(data) != member.size:
            raise DatasetError(
                f"The archive is corrupt: {member.name!r} holds {len(data):,} bytes, "
                f"not the {member.size:,} it declares."
            )
        return data

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kind_name(kind: int) -> str:
    return {
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFCHR: "a device file",
        stat.S_IFBLK: "a device file",
        stat.S_IFIFO: "a named pipe",
        stat.S_IFSOCK: "a socket",
    }.get(kind, "a special file")


def open_archive(path: str | os.PathLike, limits: ArchiveLimits = ArchiveLimits()) -> Archive:
    """Open and check an archive; raises DatasetError for anything refused (naming the member)."""
    return Archive(path, limits)
