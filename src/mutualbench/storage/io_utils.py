"""Atomic file writes, safe checkpoint loading, and the checks and clean-ups around them.

Every write goes to a temporary file ``.<name>.mutualbench-<pid>-<8 random characters>.tmp``
in the target's folder and is renamed over the target once complete, so a reader never sees a
partial file. The name says whose it is (this package's, of process <pid>), so that a clean-up
removes only what a writer of ours left, never another program's file.
The finished file gets the mode a plain ``open()`` would give a new file (``0o666 & ~umask``).
A full disk or an unwritable folder is a ``UserError`` naming the folder, and the temporary
file is removed; what was there before stays as it was.

A write given a ``root`` (the study folder, a run folder, the data root) is confined to it
(``safe_target``): a symbolic link planted at the target or at any folder between ``root`` and
it is refused, so nothing is written outside ``root`` through a link."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..core.errors import UserError

# The temporary files of atomic writes: the writer's pid, then tempfile.mkstemp's 8 characters
# of [a-z0-9_]. No other program makes such a name, so a clean-up never takes another's file.
TEMP_TAG = "mutualbench"
TEMP_NAME = re.compile(rf"^\.(?P<target>.+)\.{TEMP_TAG}-(?P<pid>[1-9][0-9]{{0,9}})-[a-z0-9_]{{8}}\.tmp$")
# A run's work folder (``<run folder>/<run id>/``): run ids are ``<method>-<12 hex digits>``.
WORK_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*-[0-9a-f]{12}$")
MIN_FREE_BYTES = 64 << 20  # the least free space an output folder must have before a run starts
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(UserError):
    """No space left on the device (or the quota) of an output folder."""


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask."""
    try:
        with open("/proc/self/status") as f:  # reading it leaves the umask alone (threads)
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(path: Path, e: OSError) -> UserError:
    """The one-line error for a failed write of ``path``."""
    folder = Path(path).parent
    if e.errno in DISK_FULL:
        return DiskFull(f"no space left on device writing {path} (folder {folder}); free space there and run the same "
                        "command again (a run resumes from its last checkpoint)")
    return UserError(f"cannot write {path} ({e.strerror or type(e).__name__}); make the folder {folder} writable "
                     "or choose another output folder")


def temp_prefix(path: Path) -> str:
    """The start of the name of a temporary file for ``path`` made by this process (``TEMP_NAME``:
    ``tempfile.mkstemp`` adds 8 random characters and ``.tmp``)."""
    return f".{Path(path).name}.{TEMP_TAG}-{os.getpid()}-"


def safe_target(root: Path, path: Path) -> Path:
    """``path``, checked before it is written (or a folder or lock made there) to stay inside
    ``root``: neither ``path`` nor any folder between ``root`` and it is a symbolic link, and
    its resolved path lies inside ``root``'s. Else a one-line UserError naming the link: a link
    planted in a study folder would have a run write its weights, checkpoints and locks wherever
    it points. ``root`` itself may be a link (the user chose it); what lies below it may not."""
    root, path = Path(root), Path(path)
    base = Path(os.path.abspath(root))
    if root.parts and path.parts[:len(root.parts)] == root.parts:
        rel = Path(*path.parts[len(root.parts):])
    elif path.parts.count("..") > root.parts.count(".."):
        rel = Path("..")  # a '..' below root is refused: it would step back over a link unchecked
    else:
        try:
            rel = Path(os.path.abspath(path)).relative_to(base)
        except ValueError:
            rel = Path("..")
    if ".." in rel.parts or rel.is_absolute():
        raise UserError(f"{path} lies outside the folder {root} it must be written in; give a path inside it")
    target = base / rel
    here = base
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            try:
                dest = f" (to {os.readlink(here)})"
            except OSError:
                dest = ""
            link = root / here.relative_to(base)
            way = "" if here == target else f", on the way to {path}"
            raise UserError(f"{link} is a symbolic link{dest}{way}; nothing is written through a link in {root}: "
                            "remove the link and run again")
    try:
        inside = target.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise UserError(f"{path} resolves outside the folder {root} it must be written in; remove what redirects it "
                        "and run again")
    return path


def _new_temp(path: Path) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        pass
    return fd, tmp


def _atomic_write(path: Path, write: Callable[[BinaryIO], None], root: Path | None = None) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file beside it, which is
    synced and renamed over ``path``; on any failure the temporary file is removed and ``path``
    keeps its old content. An OSError (a full disk, no permission) becomes a one-line UserError.
    ``root``: the folder the write must stay in (``safe_target``), checked first."""
    path = Path(path)
    if root is not None:
        safe_target(root, path)
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, root: Path | None = None) -> None:
    _atomic_write(path, lambda f: f.write(data), root)


def atomic_write_json(path: Path, obj: Any, root: Path | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode(), root)


def atomic_torch_save(path: Path, obj: Any, root: Path | None = None) -> None:
    # Through a Python file object: a full disk then raises OSError(ENOSPC), where a path
    # given to torch.save fails with an opaque RuntimeError.
    _atomic_write(path, lambda f: torch.save(obj, f), root)


WEIGHTS_ONLY_REFUSAL = re.compile(r"Unsupported global: GLOBAL (?P<name>[\w.]+)|Unsupported operand (?P<op>\S+)")


def read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (a spec, record or manifest: small files a user or a clone supplies),
    read only when it is a regular file of at most ``limit`` bytes: a FIFO (a read would wait for
    a writer), a device such as /dev/zero (a read would never end) or a larger file is a
    ``UserError`` before anything is read. An OSError of the open or read is the caller's."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: opening a FIFO does not wait
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {path} is not a regular file (a FIFO, device or socket); give the path of a "
                            "file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} {path} is over {limit:,} bytes (the limit for a {what}); it cannot be one: give "
                        "the right file")
    return data


def safe_torch_load(path: Path, what: str = "checkpoint", fix: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (no code runs); any failure is a UserError.
    ``fix``: what to do about an unusable file (default: give a state_dict saved with torch.save)."""
    fix = fix or "give a state_dict saved with torch.save (loaded with weights_only=True)"
    try:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise UserError(f"{what} {path} is empty (0 bytes; an interrupted copy or write?); {fix}")
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found; check the path") from None
    except UserError:
        raise
    except Exception as e:
        text = str(e)
        refused = WEIGHTS_ONLY_REFUSAL.search(text) if "Weights only load failed" in text else None
        if refused or "Weights only load failed" in text:
            # torch's own text goes on to suggest weights_only=False, i.e. running the file's code
            found = refused["name"] or refused["op"] if refused else None
            why = ("it holds Python objects besides tensors" + (f" ({found})" if found else "")
                   + ", which are refused since loading them could run code")
        else:
            why = f"{type(e).__name__}: {(text.splitlines() or [''])[0][:200]}"
        raise UserError(f"{what} {path} is unreadable ({why}); {fix}") from None


def move_aside(path: Path, why: str = "unreadable", root: Path | None = None) -> Path:
    """Rename ``path`` to ``<name>.<why>-<UTC time>`` (kept for inspection, out of the way);
    returns the new path. ``root``: the folder both names must stay in (``safe_target``)."""
    path = Path(path)
    if root is not None:
        safe_target(root, path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    try:
        os.replace(path, target)
    except OSError as e:
        raise UserError(f"{path} is {why} and could not be moved aside ({e.strerror}); "
                        "move or delete it, then run the same command again") from None
    return target


NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path (Linux)
OUT_PATH_MAX = 3800  # bytes in an output folder's path: PATH_MAX (4096) less room for the files below it


def check_path_length(folder: Path, option: str = "--out", limit: int = OUT_PATH_MAX) -> None:
    """Fail when a path cannot exist: a component over NAME_MAX bytes, or a whole path over
    ``limit`` bytes (for an output folder: too long for the run folders and files a run writes
    below it, an ENAMETOOLONG later, mid-run)."""
    for part in Path(folder).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"{option}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, over the "
                            f"{NAME_MAX} a file system allows; choose a shorter name")
    size = len(os.fsencode(str(Path(folder).absolute())))
    if size > limit:
        room = " that leave room for the files a run writes below it" if limit < PATH_MAX else " a path may have"
        raise UserError(f"{option}: the path is {size:,} bytes long, over the {limit:,}{room}; choose a shorter path")


def check_not_a_file(folder: Path, option: str = "--out") -> Path:
    """Fail when ``folder`` is a file or lies under one; returns the nearest existing folder."""
    folder = Path(folder)
    check_path_length(folder, option)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is an existing file, not a folder; give a folder path "
                        "(it is created when missing)")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {folder} cannot be created: {probe} is a file, not a folder; "
                        "give another folder path")
    return probe


def safe_child(folder: Path, name: str, what: str = "file") -> Path:
    """``folder / name`` for a file name built from a user's name (an arm's, a study's), checked to
    stay a direct child of ``folder``: no separator, no ``..``, nothing that resolves elsewhere."""
    folder = Path(folder)
    path = folder / name
    if (not name or "/" in name or "\\" in name or name in (".", "..") or ".." in name or "\0" in name
            or path.resolve().parent != folder.resolve()):
        raise UserError(f"{what} name {name!r} would be written outside {folder}; names must be letters, digits, "
                        "_, . and - (fix the spec's name)")
    return path


def check_output_folder(folder: Path, option: str = "--out") -> None:
    """Fail at once, before any data is loaded or anything trained, when ``folder`` cannot
    hold a run's output: it is a file, lies under a file, cannot be written, or its disk is
    (nearly) full. Probes with a real write of a small temporary file; creates nothing."""
    folder = Path(folder)
    probe = check_not_a_file(folder, option)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        raise DiskFull(f"no space left on device for {option} {folder} (folder {probe}: {free >> 20} MiB free, a run "
                       f"needs at least {MIN_FREE_BYTES >> 20} MiB); free space there or choose another folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(probe / "write-test"), suffix=".tmp", dir=probe)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFull(f"no space left on device for {option} {folder} (folder {probe}); free space there "
                           "or choose another folder") from None
        raise UserError(f"{option} {folder}: cannot write in {probe} ({e.strerror or type(e).__name__}); "
                        "give a folder you can write to") from None


def leftover_temporaries(folder: Path, busy=lambda path: False) -> list[Path]:
    """Temporary files of interrupted atomic writes of this package (``TEMP_NAME``:
    ``.<name>.mutualbench-<pid>-<8 characters>.tmp``) in ``folder`` and in its run work folders
    (direct subfolders named like a run id), except those ``busy(path)`` says a live writer may
    still be writing. Other files and other subfolders are never listed: they may be another
    program's; nor is anything behind a symbolic link."""
    folder = Path(folder)
    if folder.is_symlink():
        return []
    found = []
    dirs = [folder]
    try:
        dirs += sorted(p for p in folder.iterdir() if WORK_FOLDER.match(p.name) and p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    for d in dirs:
        try:
            names = sorted(p for p in d.iterdir() if TEMP_NAME.match(p.name))
        except OSError:
            continue
        found += [p for p in names if p.is_file() and not p.is_symlink() and not busy(p)]
    return found


def remove_temporaries(paths: list[Path]) -> list[Path]:
    """Delete ``paths``; returns those actually removed."""
    removed = []
    for p in paths:
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # left for a later run; harmless
    return removed
