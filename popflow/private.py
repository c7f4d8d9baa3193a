"""Private files and folders: how popflow creates everything that holds mail or its ledger.

Mail and the ledger are private by default, whatever the umask: files ``0600``, folders ``0700``.
A umask can only take permission bits away, so creating with these modes is enough; nothing is
ever widened afterwards.

Temporary files get an unpredictable name and are opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``:
someone who can write the folder cannot make popflow write through a planted symlink (or into a
file they prepared), because the open fails instead of following or reusing what is there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

FILE_MODE = 0o600
"""Mode of every file popflow creates for mail or state."""
DIR_MODE = 0o700
"""Mode of every folder popflow creates for mail or state."""

TEMP_SUFFIX = ".popflow-tmp"
"""Every temp file from :func:`temp_name` ends so (and starts with a dot)."""

_NEW_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                   | getattr(os, "O_CLOEXEC", 0))


def mkdirs_private(path: Path) -> None:
    """``mkdir -p`` creating each missing folder with mode 0700 (existing folders are left alone)."""
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:  # another process made it first
            if not directory.is_dir():
                raise


def temp_name(final: Path | str) -> str:
    """An unpredictable hidden temp name beside ``final`` (``.<name>.<random>.popflow-tmp``)."""
    head, tail = os.path.split(os.fspath(final))
    return os.path.join(head, f".{tail}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def open_new_private(path: Path | str) -> int:
    """Create ``path`` (mode 0600) and open it for writing; fails if anything, even a symlink, is there."""
    return os.open(path, _NEW_FILE_FLAGS, FILE_MODE)


def write_all(fd: int, chunks: Iterable[bytes]) -> None:
    """Write every chunk to a raw descriptor (``os.write`` may write less than asked)."""
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def write_private_atomic(final: Path | str, chunks: Iterable[bytes], *, sync: bool = True,
                         temp: Path | str | None = None) -> None:
    """Write ``final`` (mode 0600) whole or not at all: private temp file beside it, fsync, rename.

    ``temp`` overrides the temp file's name (it must be unpredictable: see :func:`temp_name`).
    A failed cleanup never hides the error that made the write fail.
    """
    temp = temp if temp is not None else temp_name(final)
    try:
        fd = open_new_private(temp)
        try:
            write_all(fd, chunks)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        with suppress(OSError):  # e.g. EROFS for a temp file that was never created
            os.unlink(temp)
        raise


def ensure_private_file(path: Path | str) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file is left untouched).

    Used for SQLite databases: SQLite creates its ``-wal`` and ``-shm`` files with the main file's
    permissions, so creating the main file 0600 first keeps all three private.
    """
    with suppress(FileExistsError):
        os.close(open_new_private(path))


def ensure_private_sqlite(url: URL) -> None:
    """Create a file-backed SQLite database 0600 before SQLAlchemy opens it (other URLs: nothing).

    A file that cannot be created here is left to SQLite, which reports the problem itself.
    """
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:") or url.query.get("uri") in ("true", "1"):
        return
    with suppress(OSError):
        ensure_private_file(database)
