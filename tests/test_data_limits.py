"""Limits on what a data source may make the loader read, skip or decode, and sources that cannot
be read: decompression bombs (pixels and decoded bytes, from the image headers), tar extended
headers and member types checked before the tar reader acts on them, unreadable files and
folders, ``~`` in the data root, and the cache lock after a full disk.

Every archive here is built by hand and is a few KB: the sizes it declares are never allocated
(reading or decoding them fails the test)."""

import errno
import gzip
import io
import os
import re
import struct
import tarfile
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from conftest import png_bytes, write_tar, write_tree
from mutualbench.cli import main
from mutualbench.data import DataError, load_dataset, sources
from test_faults import one_line_error


def cache_files(root):
    return sorted((root / "cache").glob("*")) if (root / "cache").exists() else []


# ----------------------------------------------------------------------------- decoded size


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, with the pixel data of a 1x1
    image: some 70 bytes that Pillow opens, and would allocate the declared size to decode."""
    data = bytearray(png_bytes(np.zeros((1, 1, 3), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def no_large_decode(monkeypatch):
    """Decoding an image of more than 100x100 pixels fails the test (the small ones decode)."""
    from PIL import ImageFile

    real = ImageFile.ImageFile.load

    def load(self):
        if self.size[0] * self.size[1] > 100 * 100:
            pytest.fail(f"an image of {self.size[0]}x{self.size[1]} was decoded")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("width,height", [(5000, 5000), (12000, 12000), (20000, 20000)])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, data_root, tiny_files, capsys,
                                                                  no_large_decode, width, height):
    """5000x5000: over our limit only; 12000x12000: Pillow warns and decodes; 20000x20000: Pillow
    raises DecompressionBombError (was a traceback). All: one DataError, no warning, no decode."""
    files = dict(tiny_files, **{"train/dog/0001.png": png_declaring(width, height)})
    src = write_tar(tmp_path / "bomb.tar.gz", files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=re.escape("train/dog/0001.png ") + ".*" + re.escape(
                "over the limit of 16,777,216 pixels (4096x4096) for one image; refusing to decode it")):
            load_dataset(src, root=data_root)
    assert not caught and "Warning" not in capsys.readouterr().err
    assert cache_files(data_root) == []


def test_a_data_set_that_decodes_to_more_than_the_limit_is_refused_before_decoding(tmp_path, data_root,
                                                                                  no_large_decode):
    """48 images of 4096x4096 (each within the pixel limit) would decode to 2.4 GB."""
    files = {f"{split}/{cls}/{i:04d}.png": png_declaring(4096, 4096)
             for split in ("train", "test") for cls in "abc" for i in range(8)}
    src = write_tar(tmp_path / "big.tar.gz", files)
    assert src.stat().st_size < 10_000
    with pytest.raises(DataError, match=re.escape(
            "its 48 images of 4096x4096 (the size of train/a/0000.png) decode to 2,415,919,104 bytes as RGB, over "
            "the limit of 2,147,483,648 for a data set")):
        load_dataset(src, root=data_root)
    assert cache_files(data_root) == []


def test_a_decompression_bomb_is_one_error_line_through_the_cli(tmp_path, data_root, capsys, no_large_decode):
    """The reported case: a .tar.gz of a few KB holding four 12000x12000 PNGs (once 3.4 GB of
    memory and a 1.7 GB cache)."""
    files = {f"{split}/{cls}/0.png": png_declaring(12000, 12000) for split in ("train", "test") for cls in "ab"}
    src = write_tar(tmp_path / "bomb.tar.gz", files)
    assert src.stat().st_size < 4096
    assert main(["data", str(src), "--data-root", str(data_root)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {src}: train/a/0.png is 12,000x12,000 (144,000,000 pixels), over the limit of "
                           "16,777,216 pixels (4096x4096) for one image")
    assert "Warning" not in line and cache_files(data_root) == []


def test_the_decoded_limits_fit_cifar_and_tiny_imagenet():
    from PIL import Image

    assert sources.MAX_DECODED_BYTES >= 110_000 * 64 * 64 * 3 > 60_000 * 32 * 32 * 3  # Tiny-ImageNet, CIFAR
    assert 64 * 64 <= sources.MAX_IMAGE_PIXELS <= Image.MAX_IMAGE_PIXELS  # Pillow never warns of one we decode


# ----------------------------------------------------------------------------- tar headers and member types


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, tarfile.REGTYPE, len(data)) + data + bytes(-len(data) % 512)


def _tar_gz(path, *chunks: bytes):
    """A .tar.gz of raw header and data blocks: one ordinary image first, then ``chunks``."""
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    path.write_bytes(gzip.compress(_member("train/cat/0000.png", image) + b"".join(chunks)))
    return path


@pytest.fixture
def stream_reads(monkeypatch):
    """The sizes the streaming tar reader asks of its (decompressed) input, skips included."""
    reads = []
    real = tarfile._Stream.read

    def read(self, size):
        reads.append(size)
        return real(self, size)

    monkeypatch.setattr(tarfile._Stream, "read", read)
    return reads


HEADER_TYPES = [(tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.GNUTYPE_LONGLINK, "GNU long link"),
                (tarfile.XHDTYPE, "pax extended"), (tarfile.XGLTYPE, "pax global"),
                (tarfile.SOLARIS_XHDTYPE, "Solaris extended")]


@pytest.mark.parametrize("kind,what", HEADER_TYPES)
def test_an_oversized_tar_extended_header_is_refused_before_it_is_read(tmp_path, data_root, stream_reads, kind, what):
    """A header declaring 1.5 GB (followed by 4 KB: the test never holds more) was read whole."""
    src = _tar_gz(tmp_path / "header.tar.gz", _header("././@LongLink", kind, 1_500_000_000), b"A" * 4096)
    with pytest.raises(DataError, match=re.escape(
            f"{src}: a tar {what} header ('././@LongLink') declares 1,500,000,000 bytes, over the limit of 65,536 "
            "for one")):
        load_dataset(src, root=data_root)
    assert max(stream_reads) <= sources.MAX_HEADER_BYTES
    assert cache_files(data_root) == []


def test_a_tar_header_bomb_is_one_error_line_through_the_cli(tmp_path, data_root, capsys):
    src = _tar_gz(tmp_path / "header.tar.gz", _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 1_500_000_000))
    assert main(["data", str(src), "--data-root", str(data_root)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {src}: a tar GNU long name header ('././@LongLink') declares 1,500,000,000 bytes")
    assert line.endswith("point --data at an archive written by tar or zip from a folder of images")


def test_a_long_chain_of_tar_extended_headers_is_refused(tmp_path, data_root):
    """3000 empty pax global headers in a row (1.5 MB, a few KB compressed): each made the tar
    reader recurse once, and ended in a RecursionError traceback."""
    src = _tar_gz(tmp_path / "chain.tar.gz", _header("pax", tarfile.XGLTYPE, 0) * 3000,
                  _member("train/cat/0001.png", b"x"))
    with pytest.raises(DataError, match=re.escape(f"{src}: more than 8 tar extended headers (long names, pax records) "
                                                  "in a row before one member")):
        load_dataset(src, root=data_root)


@pytest.mark.parametrize("kind,what", [(b"Z", "a type tar does not define"), (tarfile.GNUTYPE_SPARSE, "a GNU sparse file"),
                                       (b"V", "a GNU volume label")])
def test_a_tar_member_that_is_no_file_or_folder_is_refused_before_it_is_skipped(tmp_path, data_root, stream_reads,
                                                                                kind, what):
    """A member of an unknown type declaring 4 GB was skipped as data (90 s of CPU for a small
    .tar.gz of zeros); here it is followed by 4 KB only."""
    src = _tar_gz(tmp_path / "odd.tar.gz", _header("train/cat/9999.png", kind, 4_000_000_000), b"\0" * 4096)
    with pytest.raises(DataError, match=re.escape(
            f"{src}: member 'train/cat/9999.png' has tar type {kind.decode()!r} ({what}), not a regular file or a "
            "folder; refusing to read it")):
        load_dataset(src, root=data_root)
    assert sum(stream_reads) < 1 << 20


def test_a_sparse_member_described_by_pax_records_is_refused(tmp_path, data_root):
    """Its sparse map is parsed from the member's data: garbage there was a ValueError traceback."""
    records = b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n"
    src = _tar_gz(tmp_path / "sparse.tar.gz", _header("pax", tarfile.XHDTYPE, len(records)),
                  records + bytes(-len(records) % 512), _member("train/cat/0001.png", b"garbage"))
    with pytest.raises(DataError, match=re.escape(f"{src}: member 'train/cat/0001.png' is a GNU sparse file")):
        load_dataset(src, root=data_root)


def test_a_member_size_shrunk_by_a_global_pax_record_is_checked_from_its_header(tmp_path, data_root, stream_reads):
    """The tar reader skips a member by its header's size (4 GB) but reports the size a global pax
    record gives (3 bytes): the header's own size is checked too."""
    record = b"10 size=3\n"
    src = _tar_gz(tmp_path / "shrunk.tar.gz", _header("pax", tarfile.XGLTYPE, len(record)), record + bytes(502),
                  _header("train/cat/0001.png", tarfile.REGTYPE, 4_000_000_000), b"abc" + bytes(509))
    with pytest.raises(DataError, match=re.escape(
            f"{src}: member 'train/cat/0001.png' is 4,000,000,000 bytes, over the limit of 1,048,576 for one image")):
        load_dataset(src, root=data_root)
    assert sum(stream_reads) < 1 << 20


def test_ordinary_archives_with_long_names_still_load(tmp_path, data_root, tiny_files):
    """GNU long names and pax records (and a global pax header, as git archive writes) pass."""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"long-{fmt}.tar.gz"
        with tarfile.open(path, "w:gz", format=fmt,
                          pax_headers={"comment": "0" * 40} if fmt == tarfile.PAX_FORMAT else None) as tar:
            for rel, data in tiny_files.items():
                split, cls, name = rel.split("/")
                info = tarfile.TarInfo(f"{'w' * 110}/{split}/{cls}-{'c' * 100}/{'n' * 100}{name}")
                info.size, info.mtime = len(data), 1.5  # a fractional mtime: a pax record per member
                tar.addfile(info, io.BytesIO(data))
        ds = load_dataset(path, root=data_root)
        assert ds.counts() == {"train": [4, 4, 4], "test": [2, 2, 2]}
        assert ds.classes == [f"{c}-{'c' * 100}" for c in ("cat", "dog", "emu")]


# ----------------------------------------------------------------------------- non-images count toward the total


@pytest.mark.parametrize("kind", ["tar", "zip", "tree"])
def test_files_that_are_not_images_count_toward_the_total_limit(tmp_path, data_root, tiny_files, monkeypatch, kind):
    """(A guard: they counted before, and must go on counting.)"""
    files = dict(tiny_files, **{"notes/readme.txt": bytes(5000)})
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", sum(len(v) for v in tiny_files.values()) + 1000)
    if kind == "tar":
        src = write_tar(tmp_path / "set.tar.gz", files)
    elif kind == "zip":
        src = tmp_path / "set.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for rel, data in files.items():
                zf.writestr(rel, data)
    else:
        src = write_tree(tmp_path / "set", files)
    with pytest.raises(DataError, match="its members hold more than"):
        load_dataset(src, root=data_root)


# ----------------------------------------------------------------------------- sources that cannot be read


def _denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))


def test_an_unreadable_class_folder_is_named_not_taken_for_empty(tmp_path, data_root, tiny_files, monkeypatch):
    """Root reads any folder, so the denial is simulated. ``Path.rglob`` skipped the folder without
    a word, and the class looked empty."""
    tree = write_tree(tmp_path / "set", tiny_files)
    locked = tree / "train" / "dog"
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise _denied(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=re.escape(
            f"{tree}: cannot read train/dog (Permission denied); make it readable by this user (e.g. chmod -R u+rX "
            f"{tree}) or remove it from the data folder")):
        load_dataset(tree, root=data_root)
    assert cache_files(data_root) == []


def test_an_unreadable_image_is_one_error_line_through_the_cli(tmp_path, data_root, tiny_files, monkeypatch, capsys):
    tree = write_tree(tmp_path / "set", tiny_files)
    locked = tree / "test" / "emu" / "0001.png"
    real = type(locked).read_bytes

    def read_bytes(self):
        if self == locked:
            raise _denied(self)
        return real(self)

    monkeypatch.setattr(type(locked), "read_bytes", read_bytes)
    assert main(["data", str(tree), "--data-root", str(data_root)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (f"error: {tree}: cannot read test/emu/0001.png (Permission denied); make it readable by this user "
                    f"(e.g. chmod -R u+rX {tree}) or remove it from the data folder")


def test_an_unreadable_archive_is_named(tmp_path, data_root, tiny_files, monkeypatch):
    src = write_tar(tmp_path / "set.tar.gz", tiny_files)

    def denied_open(path, *args, **kwargs):
        raise _denied(path)

    monkeypatch.setattr(sources, "open", denied_open, raising=False)  # sha256_file's open
    with pytest.raises(DataError, match=re.escape(
            f"{src}: cannot read it (Permission denied); make it readable by this user (e.g. chmod u+r {src})")):
        load_dataset(src, root=data_root)


# ----------------------------------------------------------------------------- the data root


@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_data_root_starting_with_a_tilde_is_in_the_home_folder(tmp_path, tiny_files, monkeypatch, capsys, how):
    """``MUTUALBENCH_DATA_ROOT='~/x'`` (or ``--data-root=~/x``, which no shell expands) made a
    folder named ``~`` in the working folder."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    tree = write_tree(tmp_path / "tiny", tiny_files)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    if how == "env":
        monkeypatch.setenv("MUTUALBENCH_DATA_ROOT", "~/x")
        assert sources.default_data_root() == home / "x"
        args = ["data", str(tree)]
    else:
        monkeypatch.delenv("MUTUALBENCH_DATA_ROOT", raising=False)
        args = ["data", str(tree), "--data-root=~/x"]
    assert main(args) == 0
    assert len(list((home / "x" / "cache").glob("tiny-*.npz"))) == 1
    assert not list(cwd.iterdir()) and f"{home}/x/cache/tiny-" in capsys.readouterr().out


def test_a_data_root_of_an_unknown_user_is_an_error(tmp_path, tiny_files, monkeypatch):
    monkeypatch.setenv("MUTUALBENCH_DATA_ROOT", "~no-such-user-here/x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=re.escape("MUTUALBENCH_DATA_ROOT '~no-such-user-here/x': cannot expand '~'")):
        load_dataset(write_tree(tmp_path / "tiny", tiny_files))
    assert not (tmp_path / "~no-such-user-here").exists()


# ----------------------------------------------------------------------------- the cache lock on a full disk


def test_a_cache_lock_that_cannot_be_written_is_not_left_behind(tmp_path, data_root, tiny_files, monkeypatch, capsys):
    """A full disk while the cache folder's lock is written left an empty ``cache/.lock``: the next
    load waited on it and reported it as a stale lock."""
    from mutualbench.storage.locks import FolderLock

    tree = write_tree(tmp_path / "set", tiny_files)
    real = FolderLock._content

    def full_disk(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FolderLock, "_content", full_disk)
    ds = load_dataset(tree, root=data_root)
    assert ds.cache_path is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot write the data cache {data_root}/cache/set-") and err.count("\n") == 1
    assert "(no space left on device)" in err
    assert not (data_root / "cache" / ".lock").exists()
    monkeypatch.setattr(FolderLock, "_content", real)  # space again: cached at once, without a word
    assert load_dataset(tree, root=data_root).cache_path is not None
    assert capsys.readouterr().err == ""
    assert load_dataset(tree, root=data_root).from_cache
