"""One writer per study folder and per run: lock files.

A lock is a small JSON file (``pid``, ``host``, when it was taken, the process's start time)
created atomically with ``O_CREAT | O_EXCL``:

* ``<study folder>/.lock``: held by ``mutualbench replicate`` for the whole command, so a
  second ``replicate`` on the same folder refuses at once;
* ``<run folder>/<run_id>/.lock``: held while one run trains, so no run is trained twice at
  the same time (``mutualbench run`` into a study's ``runs/`` while the study is running).

A lock whose process no longer exists on this host is stale: it is reported as a warning and
replaced. A lock taken on another host cannot be checked from here and counts as held, unless
it names the SLURM job now running (an earlier run of this requeued job). The
lock is removed when the command ends, also on errors and Ctrl-C; a killed process leaves a
stale lock that the next run replaces.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..core.errors import UserError, warn
from .io_utils import TEMP_NAME, file_mode, leftover_temporaries, remove_temporaries, safe_target

LOCK = ".lock"


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def read_lock(path: Path) -> tuple[str, dict | None]:
    """The lock file's text and its parsed content (None when unparseable). A lock being
    created may be empty for a moment: an empty file is read again for up to a second.
    Raises FileNotFoundError when there is no lock."""
    text = ""
    for _ in range(6):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            break
        time.sleep(0.2)
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = None
    if isinstance(info, int):  # a bare PID
        info = {"pid": info}
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or isinstance(info.get("pid"), bool):
        return text, None
    return text, info


def holder_is_live(info: dict) -> bool:
    """Whether the process that took a lock may still be running. A lock taken by an earlier
    run of this same SLURM job (requeued after its time limit or preemption, perhaps on another
    node) is not: SLURM runs one instance of a job at a time."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and info.get("slurm_job") == job:
        return False
    host = info.get("host") or socket.gethostname()
    if host != socket.gethostname():
        return True  # another machine: cannot be checked from here
    pid = info["pid"]
    if not _alive(pid):
        return False
    started = info.get("proc_start")
    return started is None or _proc_start(pid) in (None, started)


def held_by_other(path: Path) -> dict | None:
    """The lock's content when another live process holds the lock ``path``, else None."""
    try:
        _, info = read_lock(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    if info is None:
        return None
    same = info["pid"] == os.getpid() and (info.get("host") or socket.gethostname()) == socket.gethostname()
    return None if same or not holder_is_live(info) else info


class FolderLock:
    """``with FolderLock(folder / LOCK, "study folder X is in use by another replicate"):``.

    Creates the missing folders above the lock (and removes those it created, when they are
    empty again on release). ``root``: the folder the lock and those folders must stay in
    (``io_utils.safe_target``: no symbolic link between it and the lock)."""

    def __init__(self, path: Path, busy: str, root: Path | None = None) -> None:
        self.path, self.busy, self.root = Path(path), busy, root
        self.token = secrets.token_hex(8)
        self._created: list[Path] = []
        self.held = False

    def _make_folders(self) -> None:
        missing = []
        d = self.path.parent
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
                self._created.append(d)
            except FileExistsError:
                pass
            except OSError as e:
                raise UserError(f"cannot create the folder {d} ({e.strerror}); choose a folder you can write to") from None

    def _content(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                           "since": datetime.now(UTC).isoformat(timespec="seconds"), "token": self.token,
                           "slurm_job": os.environ.get("SLURM_JOB_ID")}) + "\n"

    def acquire(self) -> FolderLock:
        if self.root is not None:
            safe_target(self.root, self.path)
        self._make_folders()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
            except FileExistsError:
                try:
                    text, info = read_lock(self.path)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                except OSError as e:
                    raise UserError(f"cannot read the lock {self.path} ({e.strerror}); remove it if no other "
                                    "process is using the folder") from None
                if info is not None and holder_is_live(info):
                    since = f" since {info['since']}" if info.get("since") else ""
                    raise UserError(f"{self.busy}: process {info['pid']} on {info.get('host') or 'this host'}{since} "
                                    f"holds the lock {self.path}; wait for it to finish, or delete the lock file "
                                    "if that process is gone") from None
                self._remove_stale(text, info)
                continue
            except OSError as e:
                self._remove_created()
                raise UserError(f"cannot create the lock file {self.path} ({e.strerror}); choose a folder you can "
                                "write to") from None
            created = None
            try:
                with os.fdopen(fd, "w") as f:
                    created = os.fstat(f.fileno())
                    f.write(self._content())
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                # not written (a full disk): remove the lock file this call created, so that no empty
                # lock is left for the next process to wait on and report as stale
                self._remove_unwritten(created)
                raise
            self.held = True
            return self
        raise UserError(f"{self.busy}: the lock {self.path} keeps changing hands; try again")

    def _remove_unwritten(self, created: os.stat_result | None) -> None:
        """Remove the lock file ``acquire`` created (``created``: its status) and could not write,
        unless another process has replaced it meanwhile; then the folders it created."""
        try:
            now = os.stat(self.path)
            if created is not None and (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
                self.path.unlink()
        except OSError:
            pass
        self._remove_created()

    def _remove_stale(self, text: str, info: dict | None) -> None:
        try:
            if Path(self.path).read_text(encoding="utf-8", errors="replace") != text:
                return  # replaced meanwhile by another process: look again
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise UserError(f"{self.path}: stale lock that cannot be removed ({e.strerror}); delete it") from None
        who = (f"of process {info['pid']} on {info.get('host') or 'this host'}, which is no longer running"
               if info is not None else "that is unreadable")
        warn(f"removed the stale lock {self.path} {who}; taking it over")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                _, info = read_lock(self.path)
                if info is not None and info.get("token") == self.token:
                    self.path.unlink()
            except OSError:
                pass
        self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self._created):
            try:
                d.rmdir()  # only when empty
            except OSError:
                break
        self._created = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _busy(path: Path) -> bool:
    """Whether a live writer may still be writing the temporary file ``path``: the process its
    name gives is alive here, or another live process holds the lock of its folder or, for a
    run record, of its run (a writer on another host that shares the folder)."""
    m = TEMP_NAME.match(path.name)
    if m is None:
        return True  # not a temporary file of ours: never removed
    try:
        if _alive(int(m["pid"])):
            return True
    except OverflowError:
        return True
    if held_by_other(path.parent / LOCK):
        return True
    target = m["target"]
    return target.endswith(".json") and held_by_other(path.parent / target[: -len(".json")] / LOCK) is not None


def clean_temporaries(folder: Path, log: Callable[[str], None]) -> list[Path]:
    """Remove the temporary files that interrupted atomic writes of this package left in
    ``folder`` and its run work folders: only names ``.<name>.mutualbench-<pid>-<8 characters>.tmp``
    (no other program makes them) whose process is gone and which no live writer may be
    writing; and say so in the log. Any other file, however named, is left alone."""
    removed = remove_temporaries(leftover_temporaries(folder, busy=_busy))
    if removed:
        names = ", ".join(str(p.relative_to(folder)) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write in {folder}: {names}")
    return removed
