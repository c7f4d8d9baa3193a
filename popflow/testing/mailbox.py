"""A thread-safe, in-memory POP3 maildrop for :class:`~popflow.testing.POP3TestServer`.

It behaves like a real maildrop: one session at a time holds the lock, a session sees the
messages that were there when it logged in, and deletions are applied only when that session
ends with QUIT (:meth:`Mailbox.expunge`). Messages added while a session is open appear in the
next session, as they would on a real server.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_LINE_END = re.compile(rb"\r?\n")
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,70}")


def to_wire(raw: bytes) -> bytes:
    """The message as a POP3 server sends it, before dot-stuffing: CRLF line endings, ending in CRLF.

    Real servers (Dovecot, for one) store LF and send CRLF, and their sizes (LIST, STAT) count
    the CRLF form, so this model does the same.
    """
    wire = _LINE_END.sub(b"\r\n", raw)
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire


@dataclass(frozen=True)
class StoredMessage:
    """One message in the maildrop: its unique id and its bytes, as stored and as sent."""

    uidl: str
    raw: bytes
    wire: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """The size LIST and STAT report: octets of the CRLF form, without dot-stuffing."""
        return len(self.wire)


def load_folder(path: Path) -> list[bytes]:
    """Every regular file of a folder, sorted by name; a Maildir's ``new/`` and ``cur/`` files too.

    A path to a single file serves that file as one message.
    """
    if path.is_file():
        return [path.read_bytes()]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    folders = [path / "new", path / "cur"] if (path / "new").is_dir() and (path / "cur").is_dir() else [path]
    files = sorted((f for folder in folders for f in folder.iterdir() if f.is_file()),
                   key=lambda f: (f.name, str(f)))
    # Maildir names start with the delivery time, so sorting by name keeps arrival order.
    return [f.read_bytes() for f in files if not f.name.startswith(".")]


class Mailbox:
    """The messages of one user, guarded by a lock; safe to use from any thread."""

    def __init__(self, messages: Iterable[bytes] = (), *, locking: bool = True) -> None:
        self.locking = locking
        """False: no maildrop lock, like servers that let two sessions open one maildrop at once."""
        self._lock = threading.Lock()
        self._messages: list[StoredMessage] = []
        self._next_id = 1
        self._holder: object | None = None
        self._released = threading.Condition(self._lock)
        for raw in messages:
            self.add(raw)

    def add(self, raw: bytes, uidl: str | None = None) -> str:
        """Append a message and return its UIDL (a new incrementing id unless ``uidl`` is given)."""
        raw = bytes(raw)
        with self._lock:
            if uidl is None:
                uidl = f"{self._next_id:08d}"
                self._next_id += 1
            elif not _UIDL_OK.fullmatch(uidl):
                raise ValueError(f"a UIDL is 1 to 70 printable ASCII characters without spaces: {uidl!r}")
            if any(m.uidl == uidl for m in self._messages):
                raise ValueError(f"duplicate UIDL {uidl!r}")
            self._messages.append(StoredMessage(uidl, raw, to_wire(raw)))
            return uidl

    def snapshot(self) -> list[StoredMessage]:
        """The messages now in the maildrop, in order (what a new session sees)."""
        with self._lock:
            return list(self._messages)

    def messages(self) -> list[bytes]:
        """The raw bytes of every remaining message, as stored."""
        return [m.raw for m in self.snapshot()]

    def uidls(self) -> list[str]:
        """The UIDL of every remaining message."""
        return [m.uidl for m in self.snapshot()]

    def clear(self) -> None:
        """Remove every message at once (not through a session)."""
        with self._lock:
            self._messages.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __iter__(self) -> Iterator[StoredMessage]:
        return iter(self.snapshot())

    # -- the maildrop lock -------------------------------------------------

    def acquire(self, owner: object) -> bool:
        """Take the maildrop lock for ``owner``; False when another session holds it."""
        if not self.locking:
            return True
        with self._lock:
            if self._holder is not None and self._holder is not owner:
                return False
            self._holder = owner
            return True

    def release(self, owner: object) -> None:
        """Give the lock back (no-op when ``owner`` does not hold it)."""
        with self._lock:
            if self._holder is owner:
                self._holder = None
                self._released.notify_all()

    @property
    def locked(self) -> bool:
        """True while a session holds the maildrop."""
        with self._lock:
            return self._holder is not None

    def wait_unlocked(self, timeout: float | None = None) -> bool:
        """Block until no session holds the maildrop; False on timeout."""
        with self._lock:
            return self._released.wait_for(lambda: self._holder is None, timeout)

    def expunge(self, owner: object, uidls: Iterable[str]) -> int:
        """Remove messages by UIDL on behalf of the lock holder (the UPDATE state); returns how many."""
        doomed = set(uidls)
        with self._lock:
            if self.locking and self._holder is not owner:
                raise RuntimeError("only the session holding the maildrop lock may expunge")
            before = len(self._messages)
            self._messages = [m for m in self._messages if m.uidl not in doomed]
            return before - len(self._messages)
