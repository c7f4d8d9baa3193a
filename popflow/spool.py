"""Spool folders that belong to one process each, so two popflow processes can share a ``data_dir``.

Large messages are spooled to files while they are received (:mod:`popflow.raw`). Each process
spools into its own folder ``data_dir/spool/<pid>-<random>/``, which holds a ``lock`` file the
process keeps ``flock``-ed for as long as it runs. The kernel drops that lock when the process
dies, however it dies, so at start-up :func:`clean_spool` removes exactly the folders of dead
processes: those whose lock it can take. A folder of a live process (a ``popflow run`` beside a
manual ``popflow poll``) is never touched.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import secrets
import shutil
import threading
import time
from contextlib import suppress
from pathlib import Path

from popflow.private import mkdirs_private, open_new_private
from popflow.processes import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
LEGACY_STALE_AFTER = 3600.0
"""Spool files directly in ``spool/`` come from popflow before per-process folders; removed when
not written to for this long (their writer cannot be known)."""

_held: dict[Path, tuple[int, Path, int]] = {}
"""spool root → (pid, this process's folder, fd holding its flock)."""
_held_lock = threading.Lock()


def process_spool_dir(root: Path) -> Path:
    """This process's spool folder under ``root`` (created and locked on first use)."""
    root = Path(root)
    with _held_lock:
        held = _held.get(root)
        if held is not None and held[0] == os.getpid() and (held[1] / LOCK_NAME).exists():
            return held[1]
        folder, fd = _make_locked_folder(root)
        _held[root] = (os.getpid(), folder, fd)
        return folder


def _make_locked_folder(root: Path) -> tuple[Path, int]:
    mkdirs_private(root)
    while True:
        folder = root / f"{os.getpid()}-{secrets.token_hex(4)}"
        mkdirs_private(folder)
        lock_path = folder / LOCK_NAME
        fd = open_new_private(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a cleaner took it between our open and flock; it removes the folder
            continue
        # A cleaner may have locked, emptied and removed the folder before our flock: then the
        # path no longer leads to the file we locked, and we start over with a new folder.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return folder, fd
        os.close(fd)


def clean_spool(root: Path) -> int:
    """Remove the spool folders of processes that no longer run; returns how many files went."""
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    own = {held[1] for held in _held.values() if held[0] == os.getpid()}
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if entry not in own:
                removed += _clean_folder(entry)
        elif entry.name.startswith("spool-"):
            with suppress(FileNotFoundError):
                if time.time() - entry.lstat().st_mtime > LEGACY_STALE_AFTER:
                    entry.unlink()
                    removed += 1
    return removed


def _clean_folder(folder: Path) -> int:
    """Empty and remove one process's folder if its owner is gone; returns how many spool files went."""
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # No lock yet: its owner may be between mkdir and creating the lock. The pid in the name decides.
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            return _remove(folder)
        return 0
    except OSError as exc:
        log.debug("spool folder %s: cannot open its lock: %s", folder, exc)
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its process still runs: the files are in use
        return _remove(folder)  # removed while we hold the lock, so no one can start using it
    finally:
        os.close(fd)


def _remove(folder: Path) -> int:
    count = sum(1 for path in folder.iterdir() if path.name != LOCK_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    return count


@atexit.register
def _remove_own_folders() -> None:
    """A clean exit removes this process's spool folders (a crash leaves them to :func:`clean_spool`)."""
    for pid, folder, fd in list(_held.values()):
        if pid == os.getpid():
            shutil.rmtree(folder, ignore_errors=True)
            with suppress(OSError):
                os.close(fd)
    _held.clear()
