"""Atomic files for the folder sinks: a file is visible whole or not at all, and on disk when committed.

Shared by the Maildir and eml layouts (:mod:`popflow.sinks.maildir`, :mod:`popflow.sinks.eml`):

* :meth:`AtomicFiles.write_file` writes through an unpredictable temp name opened ``O_EXCL`` and
  ``O_NOFOLLOW``, mode 0600, fsyncs it and ``os.replace``-s it into place (or writes in place, for a
  Maildir's ``tmp/`` file that no reader looks at);
* directories created or changed are remembered and fsynced once per batch
  (:meth:`AtomicFiles.sync_dirty`), which is what group commit saves;
* :meth:`AtomicFiles.syncfs` flushes a whole filesystem with one syncfs(2) (Linux);
* every ``OSError`` becomes a :class:`~popflow.errors.RetryableError` naming the path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

from popflow.errors import RetryableError
from popflow.private import DIR_MODE, open_new_private, temp_name, write_all

STALE_TMP_SECONDS = 36 * 3600
"""Temp files older than this are leftovers of a crash (the Maildir convention for ``tmp/``)."""


class AtomicFiles:
    """Atomic writes and batched directory syncs for one sink (``fsync: false`` skips every flush)."""

    def __init__(self, sink_name: str, fsync: bool = True) -> None:
        self.sink_name = sink_name
        self.fsync = fsync
        self.dirty_dirs: set[Path] = set()
        """Directories whose entries changed since the last :meth:`sync_dirty`."""

    def write_file(self, final: Path | str, chunks: Iterable[bytes], *, sync: bool = True,
                   in_place: bool = False) -> None:
        """Write ``final`` whole or not at all: temp file beside it, fsync, ``os.replace``.

        ``in_place`` writes ``final`` directly: for a Maildir's tmp/ file, never visible to a MUA.
        """
        # An unpredictable name opened O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: whoever can write the
        # folder cannot plant a symlink (or a file) that popflow would write through.
        temp = final if in_place else temp_name(final)
        created = False
        try:
            with self.os_errors("write", final):
                fd = open_new_private(temp)
                created = True
                try:
                    # os.write on the descriptor: a Python file object adds fstat, ioctl and lseek
                    # calls and a buffer copy per file, for chunks that are written whole anyway.
                    write_all(fd, chunks)
                    if sync and self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if not in_place:
                    os.replace(temp, final)
        except BaseException:
            if created:
                with suppress(OSError):  # a failing cleanup (EROFS, EIO) must not hide the real error
                    os.unlink(temp)
            raise

    def sync_dir(self, path: Path) -> None:
        """Flush a directory's entries (renames and new files) to disk."""
        if not self.fsync:
            return
        with self.os_errors("sync", path):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems can't
                    raise
            finally:
                os.close(fd)

    def sync_dirty(self) -> None:
        """One fsync per changed directory for the whole batch."""
        for directory in sorted(self.dirty_dirs):
            self.sync_dir(directory)
        self.dirty_dirs.clear()

    def syncfs(self, path: Path) -> None:
        """Flush every dirty file of ``path``'s filesystem to disk: one call for a whole batch."""
        assert _SYNCFS is not None
        with self.os_errors("sync", path):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                _SYNCFS(fd)
            finally:
                os.close(fd)

    def makedirs(self, path: Path) -> None:
        """``mkdir -p``, remembering each new directory's parent for the fsync at commit."""
        if path.is_dir():
            return
        missing = []
        probe = path
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        if not missing:
            raise RetryableError(f"folder sink {self.sink_name!r}: cannot create folder {path}: not a directory")
        for directory in reversed(missing):
            with self.os_errors("create folder", directory):
                try:
                    directory.mkdir(mode=DIR_MODE)  # mail is private by default
                except FileExistsError:
                    if not directory.is_dir():
                        raise
            self.dirty_dirs.add(directory.parent)

    def os_errors(self, action: str, path: Path | str) -> _OsErrors:
        """Turn an OSError (full disk, permissions, ...) into a RetryableError naming the path."""
        return _OsErrors(self.sink_name, action, path)


class _OsErrors:
    """The context manager of :meth:`AtomicFiles.os_errors` (entered several times per file: a
    class costs less than a ``@contextmanager`` generator)."""

    __slots__ = ("action", "path", "sink_name")

    def __init__(self, sink_name: str, action: str, path: Path | str) -> None:
        self.sink_name = sink_name
        self.action = action
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise RetryableError(
                f"folder sink {self.sink_name!r}: cannot {self.action} {self.path}: {reason}") from exc


def syncfs_available() -> bool:
    """Whether :meth:`AtomicFiles.syncfs` works here (Linux with a C library that has syncfs)."""
    return _SYNCFS is not None


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2) (flush one filesystem), or None where the C library lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


_SYNCFS = _load_syncfs() if sys.platform.startswith("linux") else None
