"""The raw bytes of a message: held in memory when small, spooled to a file when large.

The raw bytes are the source of truth: parsers read them, sinks store them unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from popflow.private import mkdirs_private

SPOOL_THRESHOLD = 1024 * 1024
"""Messages larger than this are kept in a spool file instead of memory."""

CHUNK = 256 * 1024

# Errors of the spool file itself (not of the network feeding it): they get the file's name.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES,
                          errno.EPERM})


class RawMessage:
    """Immutable raw message bytes, in memory or in a spool file that this object owns."""

    __slots__ = ("_data", "_path", "_sha256", "size")

    def __init__(self, data: bytes | None = None, *, path: Path | None = None, size: int | None = None,
                 sha256: str | None = None) -> None:
        if (data is None) == (path is None):
            raise ValueError("give exactly one of data or path")
        self._data = data
        self._path = path
        self.size = len(data) if data is not None else (size if size is not None else path.stat().st_size)  # type: ignore[union-attr]
        self._sha256 = sha256

    @classmethod
    def from_bytes(cls, data: bytes) -> RawMessage:
        """Wrap bytes already in memory."""
        return cls(bytes(data))

    @classmethod
    def from_chunks(cls, chunks: Iterator[bytes], spool_dir: Path | Callable[[], Path] | None = None,
                    threshold: int = SPOOL_THRESHOLD) -> RawMessage:
        """Collect chunks, switching to a spool file in ``spool_dir`` once past ``threshold``.

        ``spool_dir`` may be a callable giving the folder: it is called only for a message that
        needs spooling (finding the process's spool folder costs a stat(2) and ~9 µs, most
        messages never need it).
        """
        digest = hashlib.sha256()
        buffer = bytearray()
        spool: BinaryIO | None = None
        path: Path | None = None
        size = 0
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                if spool is not None:
                    spool.write(chunk)
                    continue
                buffer += chunk
                if len(buffer) > threshold:
                    if callable(spool_dir):
                        spool_dir = spool_dir()
                    if spool_dir is not None:
                        mkdirs_private(spool_dir)  # mkstemp makes the file 0600; the folder is 0700
                    fd, name = tempfile.mkstemp(prefix="spool-", suffix=".eml", dir=spool_dir)
                    spool = os.fdopen(fd, "wb")
                    path = Path(name)
                    spool.write(buffer)
                    buffer = bytearray()
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS and exc.filename is None:
                exc.filename = str(path or spool_dir)  # "No space left on device" alone names no file
            if spool is not None:
                # A failing cleanup must not hide why the spool failed.
                with suppress(OSError):
                    spool.close()
                with suppress(OSError):
                    path.unlink(missing_ok=True)  # type: ignore[union-attr]
            raise
        if spool is None:
            return cls(bytes(buffer), sha256=digest.hexdigest())
        spool.close()
        return cls(path=path, size=size, sha256=digest.hexdigest())

    @property
    def spooled(self) -> bool:
        """True when the bytes live in a spool file."""
        return self._path is not None

    @property
    def path(self) -> Path | None:
        """The spool file, when spooled."""
        return self._path

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the raw bytes."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.iter_chunks():
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def read(self) -> bytes:
        """All the bytes (reads the spool file when spooled)."""
        if self._data is not None:
            return self._data
        return self._path.read_bytes()  # type: ignore[union-attr]

    def open(self) -> BinaryIO:
        """A binary file object positioned at the start."""
        if self._data is not None:
            return io.BytesIO(self._data)
        return open(self._path, "rb")  # type: ignore[arg-type,return-value]

    def iter_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The bytes in chunks, without loading a spooled message whole."""
        if self._data is not None:
            if len(self._data) <= size and type(self._data) is bytes:
                yield self._data  # immutable bytes: handed out as they are, not copied
                return
            view = memoryview(self._data)
            for start in range(0, len(view), size):
                yield bytes(view[start:start + size])
            return
        with self.open() as handle:
            while chunk := handle.read(size):
                yield chunk

    def head(self, limit: int = 256 * 1024) -> bytes:
        """At most ``limit`` bytes from the start (enough for the header block of real mail)."""
        if self._data is not None:
            return self._data[:limit]
        with self.open() as handle:
            return handle.read(limit)

    def discard(self) -> None:
        """Remove the spool file, if any. The object must not be used afterwards."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    def __bytes__(self) -> bytes:
        return self.read()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        where = f"spool={self._path}" if self._path else "memory"
        return f"<RawMessage {self.size} bytes, {where}>"
