"""Data sets as uint8 arrays with provenance.

``load_dataset(source)`` accepts ``cifar10`` / ``cifar100`` (torchvision, downloaded into the
data root), a class-per-folder image tree, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip``
archive of one. Trees and archives are laid out as::

    [optional top folder/]train/<class>/<image>   and   test/<class>/<image>

Classes are the folder names in sorted order; a class folder without images (in either
split) is refused rather than silently dropped, since it would shift the labels. Decoding
happens once: the arrays are then cached in ``<data root>/cache/<name>-<sha256 prefix>.npz``,
keyed by the source's checksum, and written atomically so that a failure never leaves a
partial cache behind.
Archives are never extracted to disk; members that are links, absolute paths or contain
``..`` are rejected, and so are tar members that are neither files nor folders. Every size is
bounded before it is read or decoded: each member and all of them together (from the archive's
headers), each tar extended header (a long name, pax records), and each image's pixels and all
images' decoded bytes (from the image headers).

The CIFAR download waits at most ``$MUTUALBENCH_NET_TIMEOUT`` seconds (default 60) for each
answer from the server; a download that fails removes the files it created in the data root.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..core.errors import DataError
from ..core.net import NET_TIMEOUT_ENV, is_timeout, net_timeout
from ..core.progress import progress

CACHE_FORMAT = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".ppm", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
TORCHVISION_SETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
SPLITS = ("train", "test")
# Limits on what an archive or folder may hold, checked from each member's header (its stated
# size) before it is read: a CIFAR image is about 0.3 KB as JPEG, 2.5 KB as PNG and 3.1 KB as
# BMP, and all of CIFAR-10 or CIFAR-100 (60,000 images) about 188 MB even as BMP. So a member
# over 1 MiB (some 300 times the largest CIFAR image) or more than 1 GiB in all (over 5 times
# CIFAR as BMP) is refused: the marks of an archive bomb, not of a data set for this suite.
MAX_MEMBER_BYTES = 1 << 20
MAX_TOTAL_BYTES = 1 << 30
# Limits on what the images decode to, checked from each image's header before it is decoded:
# the limits above count encoded bytes, and a PNG of one colour compresses some 1000:1 (a 2 KB
# .tar.gz of four 12000x12000 PNGs once took 3.4 GB of memory and wrote a 1.7 GB cache). One
# image may have at most 4096x4096 pixels (16,000 times a 32x32 CIFAR image, and under Pillow's
# own decompression-bomb threshold of about 89 million, so its warning never fires for an image
# we decode), and all images together may decode to at most 2 GiB as RGB uint8: CIFAR-10 or -100
# is 184 MB (60,000 x 32 x 32 x 3), Tiny-ImageNet (110,000 x 64 x 64 x 3) 1.35 GB.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_DECODED_BYTES = 2 << 30
# Limits on a tar archive's extended headers (a GNU long name or link, pax records), which the
# tar reader reads whole into memory before the member they describe: a path is at most a few KB
# and pax records a few hundred bytes, so a header over 64 KiB, or more than 8 of them in a row
# before one member (real archives have at most 3 or 4: a global and a member's pax record, a
# long name and a long link), is refused before it is read.
MAX_HEADER_BYTES = 64 << 10
MAX_HEADER_CHAIN = 8
LAYOUT_HELP = (
    "expected layout: train/<class>/<image> and test/<class>/<image> (optionally inside one "
    "top-level folder), the same classes in both splits"
)


def default_data_root() -> Path:
    """``$MUTUALBENCH_DATA_ROOT`` (``~`` expanded) or ``~/.cache/mutualbench``."""
    value = os.environ.get("MUTUALBENCH_DATA_ROOT")
    return _expand_root(value, "MUTUALBENCH_DATA_ROOT") if value else Path.home() / ".cache" / "mutualbench"


def _expand_root(value: str | os.PathLike, what: str) -> Path:
    """A data root with a leading ``~`` or ``~user`` expanded (a shell leaves it alone in an
    environment variable or in ``--data-root=~/x``: it would make a folder named ``~``)."""
    expanded = os.path.expanduser(os.fspath(value))
    if expanded.startswith("~"):
        raise DataError(f"{what} {os.fspath(value)!r}: cannot expand '~' (no home folder, or no such user); give the "
                        "data root as an absolute path")
    return Path(expanded)


@dataclass
class ImageDataset:
    """A train/test split of images as uint8 arrays ``[N, H, W, 3]`` with int64 labels."""

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    sha256: str
    source: str
    cache_path: Path | None = None
    from_cache: bool = False
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = channel_stats(self.train_images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r}")

    def counts(self) -> dict[str, list[int]]:
        k = self.num_classes
        return {s: np.bincount(self.split(s)[1], minlength=k).tolist() for s in SPLITS}

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "classes": list(self.classes),
            "train_size": int(len(self.train_labels)),
            "test_size": int(len(self.test_labels)),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (float64 accumulation)."""
    flat = images.reshape(-1, images.shape[-1])
    mean = np.zeros(flat.shape[1])
    sq = np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 22):
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255.0
        mean += chunk.sum(0)
        sq += (chunk**2).sum(0)
    mean /= len(flat)
    std = np.sqrt(np.maximum(sq / len(flat) - mean**2, 0.0))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """Checksum of a folder: every file's relative path and contents, in sorted order. Empty
    folders count too (a tree without any has the same checksum as before they counted)."""
    h = hashlib.sha256()
    for path in [p for p in _walk(root) if p.is_file() or _is_empty_dir(p)]:
        if path.is_dir():
            h.update(path.relative_to(root).as_posix().encode() + b"/\0")
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None


def _walk(root: Path) -> list[Path]:
    """Every entry below ``root``, sorted: what ``sorted(root.rglob("*"))`` gives (links are
    listed, not followed), except that a folder that cannot be read raises its ``OSError``
    where ``rglob`` skips it without a word (an unreadable class folder looked empty)."""
    found: list[Path] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                path = folder / entry.name
                found.append(path)
                if entry.is_dir(follow_symlinks=False):
                    folders.append(path)
    return sorted(found)


def _unreadable(source: Path, e: OSError) -> DataError:
    """The error for a data source, or a file or folder in one, that cannot be read (``e``
    names it, a PermissionError most often)."""
    why = e.strerror or str(e) or type(e).__name__
    name = Path(os.fsdecode(e.filename)) if isinstance(e.filename, (str, bytes, os.PathLike)) else source
    if name != source:
        try:
            rel = name.relative_to(source).as_posix()
        except ValueError:
            rel = str(name)
        return DataError(f"{source}: cannot read {rel} ({why}); make it readable by this user (e.g. chmod -R u+rX "
                         f"{source}) or remove it from the data folder")
    chmod = f"chmod -R u+rX {source}" if os.path.isdir(source) else f"chmod u+r {source}"
    return DataError(f"{source}: cannot read it ({why}); make it readable by this user (e.g. {chmod}) or point --data "
                     "at a copy you can read")


# ----------------------------------------------------------------------------- cache


def _cache_path(root: Path, name: str, sha: str) -> Path:
    return root / "cache" / f"{name}-{sha[:16]}.npz"


def _read_cache(path: Path, source: str, sha: str) -> ImageDataset | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != CACHE_FORMAT or meta.get("sha256") != sha:
                return None
            arrays = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    return ImageDataset(
        name=meta["name"], classes=meta["classes"], sha256=sha, source=source, cache_path=path,
        from_cache=True, mean=tuple(meta["mean"]), std=tuple(meta["std"]), **arrays,
    )


def _write_cache(path: Path, ds: ImageDataset) -> None:
    """Write the cache; a data root that cannot hold it (a file, read-only, a full disk) is a
    one-line warning and the data set is used without a cache (decoded again next time); so is a
    symbolic link at ``cache/`` or at the cache file (nothing is written through a link below the
    data root: ``io_utils.safe_target``). The temporary file is named as every atomic write's
    (``.<name>.mutualbench-<pid>-<8 characters>.tmp``) and the
    cache folder's lock (``cache/.lock``) is held while it is written, so that a write cut short
    (kill -9) leaves a temporary file the next load removes, and a live writer's is left alone.
    Another process writing a cache there meanwhile: this one is not cached, it is decoded next time."""
    import tempfile

    from ..core.errors import UserError, warn
    from ..storage.io_utils import safe_target, temp_prefix
    from ..storage.locks import LOCK, FolderLock, held_by_other

    root = path.parent.parent
    try:
        safe_target(root, path)
    except UserError as e:
        warn(f"{e}; until then {ds.name} is used without a cache (decoded again next time)")
        return
    meta = {"format": CACHE_FORMAT, "name": ds.name, "classes": ds.classes, "sha256": ds.sha256,
            "mean": list(ds.mean), "std": list(ds.std)}
    lock = FolderLock(path.parent / LOCK, f"the data cache folder {path.parent} is being written by another process",
                      root=root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if held_by_other(path.parent / LOCK):  # another live writer holds the cache folder
            return
        try:
            lock.acquire()
        except UserError as e:
            raise OSError(errno.EACCES, str(e)) from None
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, meta=np.array(json.dumps(meta)), train_images=ds.train_images,
                             train_labels=ds.train_labels, test_images=ds.test_images,
                             test_labels=ds.test_labels)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        finally:
            lock.release()
    except OSError as e:
        why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
        warn(f"cannot write the data cache {path} ({why}); using {ds.name} without a cache (decoded again next "
             f"time): point --data-root or MUTUALBENCH_DATA_ROOT at a writable folder instead of {root}")
        return
    ds.cache_path = path


def _clean_cache(root: Path) -> None:
    """Remove what a cache write cut short left in ``<root>/cache`` (the rule of every writer:
    ``locks.clean_temporaries``), saying so on stderr."""
    import sys

    from ..storage.locks import clean_temporaries

    cache = root / "cache"
    if cache.is_dir():
        clean_temporaries(cache, lambda msg: print(msg, file=sys.stderr, flush=True))


# ----------------------------------------------------------------------------- layout


def _safe_parts(name: str, source: Path) -> tuple[str, ...]:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise DataError(f"{source}: unsafe member path {name!r} (absolute or with '..'); refusing to read it")
    return tuple(part for part in p.parts if part not in ("", "."))


def _is_image(parts: tuple[str, ...]) -> bool:
    return (bool(parts) and not any(part.startswith(".") for part in parts)
            and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES)


def _assemble(entries: list[tuple[tuple[str, ...], bytes | None]], source: Path, name: str, sha: str) -> ImageDataset:
    """Turn (path parts, encoded image) pairs into a dataset; checks the layout. Folders come as
    (path parts, None): they only serve to find class folders without images."""
    files = [(parts, data) for parts, data in entries if data is not None]
    folders = [parts for parts, data in entries if data is None]
    if not files:
        raise DataError(f"{source}: no images found; {LAYOUT_HELP}")
    tops = {parts[0] for parts, _ in files}
    if not tops & set(SPLITS) and len(tops) == 1:  # one wrapping folder
        files = [(parts[1:], data) for parts, data in files]
        folders = [parts[1:] for parts in folders if parts[0] in tops]
    grouped: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in SPLITS}
    for parts, data in files:
        if len(parts) != 3 or parts[0] not in SPLITS:
            raise DataError(f"{source}: image {'/'.join(parts)!r} is not at <split>/<class>/<image>; {LAYOUT_HELP}")
        grouped[parts[0]].setdefault(parts[1], []).append((parts[2], data))
    for split in SPLITS:
        if not grouped[split]:
            raise DataError(f"{source}: no {split}/ images; {LAYOUT_HELP}")
    _check_empty_classes(folders, grouped, source)
    if set(grouped["train"]) != set(grouped["test"]):
        raise DataError(
            f"{source}: train/ and test/ have different classes "
            f"({sorted(set(grouped['train']) ^ set(grouped['test']))}); {LAYOUT_HELP}"
        )
    classes = sorted(grouped["train"])
    total = sum(len(v) for split in SPLITS for v in grouped[split].values())
    arrays: dict[str, np.ndarray] = {}
    size: tuple[int, int] | None = None  # (width, height) of every image: the first one's
    with progress(total=total, desc=f"decoding {name}", unit="img") as bar:
        for split in SPLITS:
            members = [(label, f"{split}/{cls}/{fname}", data) for label, cls in enumerate(classes)
                       for fname, data in sorted(grouped[split][cls])]
            images: np.ndarray | None = None  # filled in place: no second copy as np.stack would make
            for i, (_, where, data) in enumerate(members):
                arr = _decode(source, where, data, size, total)
                if images is None:
                    size = (arr.shape[1], arr.shape[0])
                    images = np.empty((len(members), *arr.shape), dtype=np.uint8)
                images[i] = arr
                bar.update(1)
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = np.asarray([m[0] for m in members], dtype=np.int64)
    return ImageDataset(name=name, classes=classes, sha256=sha, source=str(source), **arrays)


def _decode(source: Path, where: str, data: bytes, size: tuple[int, int] | None, count: int) -> np.ndarray:
    """Image ``where`` (encoded ``data``) as RGB uint8 ``[H, W, 3]``. Its header is checked first
    (``Image.open`` reads no pixels): at most ``MAX_IMAGE_PIXELS``, the ``size`` (width, height)
    of the images before it, and, for the first of the ``count`` images, all of them at its size
    within ``MAX_DECODED_BYTES``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns of images over its own threshold when it opens them; they are refused
            # here, so its warning would only be noise on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(source, where, f"is {width:,}x{height:,} ({width * height:,} pixels)")
                if size is None and count * width * height * 3 > MAX_DECODED_BYTES:
                    raise DataError(
                        f"{source}: its {count:,} images of {width}x{height} (the size of {where}) decode to "
                        f"{count * width * height * 3:,} bytes as RGB, over the limit of {MAX_DECODED_BYTES:,} for a "
                        "data set (CIFAR decodes to 184 MB); refusing to decode them; give --data a data set of "
                        "fewer or smaller images")
                if size is not None and (width, height) != size:
                    raise _other_size(source, where, (width, height), size)
                arr = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:  # over Pillow's threshold, refused by Image.open itself
        raise _too_many_pixels(source, where, "declares more pixels than Pillow opens") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{source}: cannot decode {where} ({e}); the source is corrupt") from None
    if arr.shape[:2] != (height, width):  # a decoder that gave another size than its header
        raise _other_size(source, where, (arr.shape[1], arr.shape[0]), size or (width, height))
    return arr


def _too_many_pixels(source: Path, where: str, what: str) -> DataError:
    return DataError(f"{source}: {where} {what}, over the limit of {MAX_IMAGE_PIXELS:,} pixels (4096x4096) for one "
                     "image; refusing to decode it (a decompression bomb?); give --data a data set of small images "
                     "(CIFAR's are 32x32)")


def _other_size(source: Path, where: str, have: tuple[int, int], others: tuple[int, int]) -> DataError:
    return DataError(f"{source}: {where} is {have[0]}x{have[1]}, others are {others[0]}x{others[1]}; all images must "
                     "share one size")


def _check_empty_classes(folders: list[tuple[str, ...]], grouped: dict, source: Path) -> None:
    """Refuse class folders (``<split>/<class>/``) that hold no image: dropping them would
    shift every later label."""
    empty = sorted({(parts[0], parts[1]) for parts in folders
                    if len(parts) == 2 and parts[0] in SPLITS and not parts[1].startswith(".")
                    and parts[1] not in grouped[parts[0]]}, key=lambda sc: (sc[1], sc[0]))
    if not empty:
        return
    split, cls = empty[0]
    other = SPLITS[1 - SPLITS.index(split)]
    if cls not in grouped[other]:
        raise DataError(f"{source}: class folder {cls!r} has no images in train/ or test/; put its images in "
                        f"both splits or remove the folder (an empty class would shift the labels); {LAYOUT_HELP}")
    raise DataError(f"{source}: {split}/{cls}/ has no images ({other}/{cls}/ has {len(grouped[other][cls])}); "
                    f"every class needs images in both splits: add some or remove the class from both; {LAYOUT_HELP}")


def _check_size(source: Path, name: str, size: int, total: int) -> int:
    """The running total of member sizes after ``name`` (``size`` bytes, from its header); a
    member or a total over the limits is refused before the member is read."""
    if size > MAX_MEMBER_BYTES:
        raise DataError(f"{source}: member {name!r} is {size:,} bytes, over the limit of {MAX_MEMBER_BYTES:,} for one "
                        "image (a CIFAR image is a few KB); refusing to read it (an archive bomb?); give --data a "
                        "data set of small images")
    total += size
    if total > MAX_TOTAL_BYTES:
        raise DataError(f"{source}: its members hold more than {MAX_TOTAL_BYTES:,} bytes in all (the limit; CIFAR is "
                        "under 200 MB even as BMP); refusing to read further (an archive bomb?); give --data a "
                        "smaller data set")
    return total


# tar member types: files (read when images, else only counted), folders, links and devices (not
# followed, refused by _read_tar with their name), and the extended headers that describe the
# next member (checked by _BoundedTarInfo before they are read). Any other type is refused.
_TAR_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_TAR_LINK_TYPES = (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
_TAR_HEADER_TYPES = {tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link",
                     tarfile.XHDTYPE: "pax extended", tarfile.XGLTYPE: "pax global",
                     tarfile.SOLARIS_XHDTYPE: "Solaris extended"}
_TAR_OTHER_TYPES = {tarfile.GNUTYPE_SPARSE: "a GNU sparse file", b"V": "a GNU volume label",
                    b"M": "a GNU multi-volume continuation", b"D": "a GNU dump folder", b"N": "a GNU old long name"}


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that is checked before the tar reader acts on it: ``TarInfo._proc_member``
    reads an extended header's data whole (``size`` bytes) and skips a member of a type it does
    not know as if it were a file (``size`` bytes, decompressed and dropped), both before the
    member is given to ``_read_tar``. A ``DataError`` raised here comes out of ``tarfile.open``
    and ``TarFile.next()`` unchanged (they turn only header and zlib errors into ``ReadError``).
    ``_source``: the archive (set by ``_read_tar`` on a subclass of its own); ``_chain``: how many
    extended headers came in a row up to this one."""

    _source: Path
    _chain = 0

    def _proc_member(self, tar):
        cls = type(self)
        header = _TAR_HEADER_TYPES.get(self.type)
        if header is not None:
            cls._chain += 1
            if self.size > MAX_HEADER_BYTES:
                raise DataError(
                    f"{self._source}: a tar {header} header ({self.name!r}) declares {self.size:,} bytes, over the "
                    f"limit of {MAX_HEADER_BYTES:,} for one (a path is a few KB); refusing to read it (an archive "
                    "bomb?); point --data at an archive written by tar or zip from a folder of images")
            if cls._chain > MAX_HEADER_CHAIN:
                raise DataError(
                    f"{self._source}: more than {MAX_HEADER_CHAIN} tar extended headers (long names, pax records) "
                    "in a row before one member; refusing to read further (a damaged or malicious archive); "
                    "point --data at an archive written by tar or zip from a folder of images")
            return super()._proc_member(tar)
        cls._chain = 0
        if self.type in _TAR_FILE_TYPES:
            # the skip of its data uses the size in this header, which a pax record may replace
            # by a smaller one afterwards: the header's own size is checked too
            _check_size(self._source, self.name, self.size, 0)
        elif self.type != tarfile.DIRTYPE and self.type not in _TAR_LINK_TYPES:
            what = _TAR_OTHER_TYPES.get(self.type, "a type tar does not define")
            raise DataError(
                f"{self._source}: member {self.name!r} has tar type {self.type.decode('latin-1')!r} ({what}), not a "
                "regular file or a folder; refusing to read it; point --data at an archive of plain files and "
                "folders (e.g. written by `tar czf` from a folder of images)")
        return super()._proc_member(tar)

    def _refuse_sparse(self, next, *args):
        raise DataError(f"{self._source}: member {next.name!r} is a GNU sparse file (pax records), not a regular file; "
                        "refusing to read it; point --data at an archive of plain files and folders (e.g. written "
                        "by `tar czf` from a folder of images)")

    # a pax-described sparse file: its map is parsed from data the header sizes do not bound
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


def _read_tar(path: Path) -> list[tuple[tuple[str, ...], bytes | None]]:
    files = []
    total = 0
    bounded = type("_BoundedTarInfo", (_BoundedTarInfo,), {"_source": path})
    try:
        with tarfile.open(path, "r|*", tarinfo=bounded) as tar:  # streaming: never extracted to disk
            for member in tar:
                parts = _safe_parts(member.name, path)
                if member.issym() or member.islnk() or member.isdev():
                    raise DataError(f"{path}: member {member.name!r} is a link or device; refusing to read it")
                if member.isfile():
                    total = _check_size(path, member.name, member.size, total)
                if member.isfile() and _is_image(parts):
                    f = tar.extractfile(member)
                    files.append((parts, f.read() if f else b""))
                elif member.isdir() and parts:
                    files.append((parts, None))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: archive is corrupt or truncated ({type(e).__name__}: {e}); copy it again "
            f"(compare its sha256) or point --data at an intact source; {LAYOUT_HELP}"
        ) from None
    return files


def _read_zip(path: Path) -> list[tuple[tuple[str, ...], bytes | None]]:
    files = []
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = _safe_parts(info.filename, path)
                if not info.is_dir():
                    total = _check_size(path, info.filename, info.file_size, total)
                if not info.is_dir() and _is_image(parts):
                    files.append((parts, zf.read(info)))
                elif info.is_dir() and parts:
                    files.append((parts, None))
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: zip archive is corrupt or truncated ({type(e).__name__}: {e}); copy it again "
            f"or point --data at an intact source; {LAYOUT_HELP}"
        ) from None
    return files


def _check_tree(root: Path) -> None:
    """Every entry of a folder data set is a plain file or folder, within the size limits: a
    symbolic link (it could point anywhere, and was once skipped without a word), a FIFO or a
    device is refused, before anything is read."""
    total = 0
    for p in _walk(root):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise DataError(f"{root}: {rel} is a symbolic link; links in a data folder are not followed (one could "
                            "point outside it): replace it with a copy of what it points to, or remove it")
        if p.is_dir():
            continue
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{root}: {rel} is not a regular file (a FIFO, socket or device); remove it from the "
                            "data folder")
        total = _check_size(root, rel, st.st_size, total)


def _read_tree(root: Path) -> list[tuple[tuple[str, ...], bytes | None]]:
    files = []
    for p in _walk(root):
        parts = p.relative_to(root).parts
        if p.is_file() and not p.is_symlink() and _is_image(parts):
            files.append((parts, p.read_bytes()))
        elif p.is_dir() and not p.is_symlink():
            files.append((parts, None))
    return files


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ----------------------------------------------------------------------------- entry point


# The class names, in label order, of the data sets a study spec may name; a local copy
# (an archive or a folder) of one must have exactly these classes.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KNOWN_DATASETS = {"cifar10": {"num_classes": 10, "classes": CIFAR10_CLASSES, "image_size": (32, 32)},
                  "cifar100": {"num_classes": 100, "image_size": (32, 32)}}


def copy_problem(expected: str, ds: ImageDataset, expected_classes: Sequence[str] | None = None) -> str | None:
    """Why ``ds`` is not a copy of data set ``expected`` (a ``KNOWN_DATASETS`` name, or any
    data set whose ``expected_classes`` are given), or None when it is: the same number of
    classes and, where known, the same class names in the same order."""
    known = KNOWN_DATASETS.get(expected, {})
    classes = tuple(expected_classes) if expected_classes is not None else known.get("classes")
    count = len(classes) if classes is not None else known.get("num_classes")
    if count is not None and ds.num_classes != count:
        return f"{ds.name} has {ds.num_classes} classes, {expected} has {count}"
    size = known.get("image_size")
    have = tuple(ds.train_images.shape[1:3])
    if size is not None and have != size:
        return f"{ds.name}'s images are {have[1]}x{have[0]}, {expected}'s are {size[1]}x{size[0]}"
    if classes is not None and tuple(ds.classes) != classes:
        diff = next(i for i, (a, b) in enumerate(zip(ds.classes, classes, strict=True)) if a != b)
        return f"{ds.name}'s class {diff} is {ds.classes[diff]!r}, {expected}'s is {classes[diff]!r}"
    return None


def load_dataset(source: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageDataset:
    """Load ``source`` (``cifar10``, ``cifar100``, a folder or an archive), using the cache."""
    root = _expand_root(root, "data root") if root is not None else default_data_root()
    src = str(source)
    if not src.strip():
        raise DataError(f"data source {src!r} is empty: give cifar10, cifar100, a class-per-folder image tree, or a "
                        f".tar.gz/.zip archive of one ({LAYOUT_HELP})")
    _clean_cache(root)
    if src.lower() in TORCHVISION_SETS and not Path(src).exists():
        return _load_torchvision(src.lower(), root)
    path = Path(src).expanduser()
    try:  # a file or folder of the source that cannot be read (an unreadable class folder)
        if not path.exists():
            raise DataError(
                f"data source {src!r} not found: give cifar10, cifar100, a class-per-folder image "
                f"tree, or a .tar.gz/.zip archive of one ({LAYOUT_HELP})"
            )
        if path.is_dir():
            _check_tree(path)
            name, sha, reader = path.resolve().name, sha256_tree(path), _read_tree
        elif not stat.S_ISREG(path.stat().st_mode):
            raise DataError(f"{path}: not a regular file or a folder (a device, FIFO or socket, which could be read "
                            f"forever); give a .tar.gz/.tgz/.tar/.zip archive or a folder; {LAYOUT_HELP}")
        elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
            name, sha = archive_stem(path), sha256_file(path)
            reader = _read_zip if path.name.lower().endswith(".zip") else _read_tar
        else:
            raise DataError(f"{path}: not a folder or a .tar.gz/.tgz/.tar/.zip archive; {LAYOUT_HELP}")
    except OSError as e:
        raise _unreadable(path, e) from None
    cache = _cache_path(root, name, sha)
    cached = _read_cache(cache, str(path), sha)
    if cached is not None:
        return cached
    try:
        entries = reader(path)  # the archive readers say themselves what they cannot read
    except OSError as e:
        raise _unreadable(path, e) from None
    ds = _assemble(entries, path, name, sha)
    _write_cache(cache, ds)
    return ds


def _load_torchvision(name: str, root: Path) -> ImageDataset:
    import torchvision

    download_dir = root / "torchvision"
    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    timeout = net_timeout()
    url = getattr(cls, "url", name)
    before = set(download_dir.rglob("*")) if download_dir.exists() else set()
    missing = [d for d in (root, download_dir) if not d.exists()]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen calls take no timeout of their own
    try:
        sets = {split: cls(str(download_dir), train=(split == "train"), download=True) for split in SPLITS}
    except Exception as e:  # no network, a proxy error, a server that never answers, a corrupt download...
        _remove_created(download_dir, before, missing)
        if is_timeout(e):
            why = (f"no answer from {url} within {timeout:g} s (set {NET_TIMEOUT_ENV}=<seconds> to wait longer, "
                   f"e.g. on a slow network)")
        else:
            why = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(
            f"could not download {name} into {download_dir} ({why}); its partial files were removed. Without a "
            "network, point --data at local files: a class-per-folder tree or a .tar.gz/.zip of "
            "train/<class>/<image> and test/<class>/<image>, e.g. --data ../shared/data/cifar10-jpeg75.tar.gz"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    archive = download_dir / Path(cls.url).name
    sha = sha256_file(archive) if archive.exists() else sha256_tree(download_dir / cls.base_folder)
    cache = _cache_path(root, name, sha)
    cached = _read_cache(cache, name, sha)
    if cached is not None:
        return cached
    ds = ImageDataset(
        name=name, classes=list(sets["train"].classes), sha256=sha, source=name,
        train_images=np.asarray(sets["train"].data, dtype=np.uint8),
        train_labels=np.asarray(sets["train"].targets, dtype=np.int64),
        test_images=np.asarray(sets["test"].data, dtype=np.uint8),
        test_labels=np.asarray(sets["test"].targets, dtype=np.int64),
    )
    _write_cache(cache, ds)
    return ds


def _remove_created(download_dir: Path, before: set[Path], missing: list[Path]) -> None:
    """After a failed download: remove what it created (a partial archive, a half-extracted
    folder, folders that did not exist), so that nothing is mistaken for data later."""
    if download_dir.exists():
        for p in sorted(download_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if p in before:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for d in reversed(missing):  # the deepest first; only when nothing else was put there meanwhile
        try:
            d.rmdir()
        except OSError:
            pass
