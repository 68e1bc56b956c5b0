"""ml.archive: every archive trick is refused with a message naming the member, before reading."""

import io
import stat
import struct
import tarfile
import zipfile

import pytest

from ml.archive import TAR, TAR_GZ, ZIP, ArchiveLimits, DatasetError, detect_format, open_archive
from ml.synthetic import write_archive

MiB = 1024 * 1024


def tar_with(path, *infos_and_data, gz=True):
    """A tar whose members are built by hand: (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for info, data in infos_and_data:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


# --- Formats, by content ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, expected", [("zip", ZIP), ("tar", TAR), ("tar.gz", TAR_GZ)])
def test_it_detects_the_format_by_content_whatever_the_name(tmp_path, fmt, expected):
    path = write_archive(tmp_path / "misleading.txt", {"cat/1.png": b"data"}, fmt=fmt)
    assert detect_format(path) == expected
    with open_archive(path) as archive:
        assert [(m.name, m.size) for m in archive.members] == [("cat/1.png", 4)]
        assert archive.read(archive.members[0]) == b"data"


def test_it_reads_members_in_archive_order_one_by_one(tmp_path):
    members = {f"c{i % 2}/{i}.png": bytes([i]) * (i + 1) for i in range(6)}
    path = write_archive(tmp_path / "a.tar.gz", members, fmt="tar.gz")
    with open_archive(path) as archive:
        assert {m.name: archive.read(m) for m in archive.members} == members
        assert [m.name for m in archive.members] == list(members)


def test_it_refuses_a_file_that_is_not_an_archive(tmp_path):
    path = tmp_path / "notes.zip"
    path.write_text("just some text, not an archive at all\n" * 20)
    with pytest.raises(DatasetError, match="not a .zip, .tar or .tar.gz archive"):
        open_archive(path)


def test_it_says_what_a_wrong_file_is_when_it_can(tmp_path):
    path = tmp_path / "data.7z"
    path.write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(100))
    with pytest.raises(DatasetError, match="7-Zip"):
        open_archive(path)


def test_it_refuses_a_gzip_file_that_holds_no_tar(tmp_path):
    import gzip

    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"hello " * 200))
    with pytest.raises(DatasetError, match="does not contain a tar"):
        open_archive(path)


def test_it_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.zip"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        open_archive(path)


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_it_refuses_an_archive_with_no_files(tmp_path, fmt):
    path = write_archive(tmp_path / "empty", {}, fmt=fmt)
    with pytest.raises(DatasetError, match="empty"):
        open_archive(path)


def test_it_refuses_an_archive_with_only_folders(tmp_path):
    path = tmp_path / "dirs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/", b"")
        zf.writestr("dog/", b"")
    with pytest.raises(DatasetError, match="empty"):
        open_archive(path)


def test_it_refuses_a_truncated_zip(tmp_path):
    path = write_archive(tmp_path / "a.zip", {"cat/1.png": b"x" * 5000}, fmt="zip")
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DatasetError, match="zip archive is corrupt"):
        open_archive(path)


def test_it_refuses_a_truncated_tar_gz(tmp_path):
    import os

    path = write_archive(tmp_path / "a.tar.gz", {f"cat/{i}.png": os.urandom(20_000) for i in range(5)}, fmt="tar.gz")
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(DatasetError, match="corrupt"):
        with open_archive(path) as archive:
            for member in archive.members:
                archive.read(member)


# --- Paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, reason", [
    ("/etc/cat/passwd.png", "absolute path"),
    ("cat/../../evil.png", r"outside the archive \(\.\.\)"),
    ("..\\..\\evil.png", r"outside the archive \(\.\.\)"),
    ("C:/Windows/cat.png", "drive letter"),
    ("c:evil.png", "drive letter"),
])
@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_it_refuses_members_whose_path_escapes_the_folder(tmp_path, fmt, name, reason):
    path = write_archive(tmp_path / "evil", [("cat/ok.png", b"fine"), (name, b"bad")], fmt=fmt)
    with pytest.raises(DatasetError, match=reason) as err:
        open_archive(path)
    assert repr(name) in str(err.value)


def test_it_normalises_dot_slash_prefixes_that_tar_adds(tmp_path):
    path = tar_with(tmp_path / "a.tgz", file_info("./cat/1.png"), file_info("./dog/2.png"))
    with open_archive(path) as archive:
        assert [m.name for m in archive.members] == ["cat/1.png", "dog/2.png"]


# --- Links and special files ------------------------------------------------------------------


def test_it_refuses_a_symlink_in_a_tar(tmp_path):
    link = tarfile.TarInfo("cat/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    path = tar_with(tmp_path / "a.tgz", file_info("cat/1.png"), (link, None))
    with pytest.raises(DatasetError, match=r"'cat/link.png' is a symbolic link"):
        open_archive(path)


def test_it_refuses_a_hard_link_in_a_tar(tmp_path):
    link = tarfile.TarInfo("cat/hard.png")
    link.type, link.linkname = tarfile.LNKTYPE, "cat/1.png"
    path = tar_with(tmp_path / "a.tar", file_info("cat/1.png"), (link, None), gz=False)
    with pytest.raises(DatasetError, match="'cat/hard.png' is a hard link"):
        open_archive(path)


@pytest.mark.parametrize("kind, what", [(tarfile.CHRTYPE, "device file"), (tarfile.BLKTYPE, "device file"),
                                        (tarfile.FIFOTYPE, "named pipe")])
def test_it_refuses_devices_and_fifos_in_a_tar(tmp_path, kind, what):
    special = tarfile.TarInfo("cat/special")
    special.type = kind
    path = tar_with(tmp_path / "a.tgz", file_info("cat/1.png"), (special, None))
    with pytest.raises(DatasetError, match=f"'cat/special' is a {what}"):
        open_archive(path)


def test_it_refuses_a_symlink_in_a_zip(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/1.png", b"x")
        link = zipfile.ZipInfo("cat/link.png")
        link.create_system = 3  # Unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="'cat/link.png' is a symbolic link"):
        open_archive(path)


def test_it_refuses_an_encrypted_zip_member(tmp_path):
    path = write_archive(tmp_path / "a.zip", {"cat/1.png": b"x"}, fmt="zip")
    data = bytearray(path.read_bytes())
    # Set the "encrypted" flag bit in the local header (offset 6) and the central directory (8).
    data[6] |= 1
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="encrypted"):
        open_archive(path)


# --- Bombs ------------------------------------------------------------------------------------


def zeros_zip(path, size, name="cat/zeros.bmp"):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, bytes(size))
    return path


def test_it_refuses_a_member_declared_bigger_than_the_per_file_limit_before_reading_it(tmp_path, monkeypatch):
    path = zeros_zip(tmp_path / "big.zip", 2 * MiB)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("read before refusing"))
    with pytest.raises(DatasetError, match="'cat/zeros.bmp' would expand to 2 MiB; the limit per file is 1 MiB"):
        open_archive(path, ArchiveLimits(max_member_bytes=1 * MiB, max_ratio=10_000))


def test_it_refuses_an_archive_whose_members_add_up_past_the_expanded_limit(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"cat/{i}.bmp", bytes(600_000))
    with pytest.raises(DatasetError, match="more than 2 MiB.*'cat/3.bmp'"):
        open_archive(path, ArchiveLimits(max_expanded_bytes=2 * MiB, max_ratio=10_000))


def test_it_refuses_a_zip_member_compressed_beyond_the_ratio_limit(tmp_path):
    path = zeros_zip(tmp_path / "bomb.zip", 8 * MiB)  # deflates about 1000:1
    with pytest.raises(DatasetError, match=r"'cat/zeros.bmp' is compressed [\d,]+:1, more than the 200:1 limit"):
        open_archive(path, ArchiveLimits(max_ratio=200))


def test_it_refuses_a_tar_gz_bomb_at_its_header_before_decompressing_it(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("cat/zeros.bmp")
        info.size = 8 * MiB
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(DatasetError, match="compressed more than 200:1"):
        open_archive(path, ArchiveLimits(max_ratio=200))


def test_small_members_that_compress_well_are_not_mistaken_for_bombs(tmp_path):
    path = tmp_path / "solid.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/white.bmp", bytes(64 * 64 * 3))  # a solid 64×64 BMP deflates ~500:1
        zf.writestr("dog/white.bmp", bytes(64 * 64 * 3))
    with open_archive(path, ArchiveLimits(max_ratio=200)) as archive:
        assert len(archive.members) == 2


def test_it_refuses_more_members_than_the_limit(tmp_path):
    path = write_archive(tmp_path / "many.zip", {f"cat/{i}.png": b"x" for i in range(11)}, fmt="zip")
    with pytest.raises(DatasetError, match="more than 10 entries"):
        open_archive(path, ArchiveLimits(max_members=10))


def test_a_zip_member_that_lies_about_its_size_is_never_read_past_the_declared_size(tmp_path):
    """The central directory says 10 bytes; the data is 50 000. Reading stops at 10 and fails."""
    path = write_archive(tmp_path / "liar.zip", {"cat/1.png": bytes(range(250)) * 200}, fmt="zip")
    data = bytearray(path.read_bytes())
    # Stored member: patch the uncompressed-size fields (local header at 22, central at 24).
    struct.pack_into("<I", data, 22, 10)
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    path.write_bytes(bytes(data))
    with open_archive(path) as archive:
        assert archive.members[0].size == 10
        with pytest.raises(DatasetError, match="corrupt: cannot read 'cat/1.png'"):
            archive.read(archive.members[0])
