"""``type: folder`` with ``layout: maildir``: raw messages into a Maildir (``tmp/`` → ``new/``).

The Maildir protocol: write to ``tmp/``, have it on disk, rename into ``new/``. A file in ``new/``
is therefore always complete; a crash leaves at most a stray file in ``tmp/``, which
:meth:`MaildirSink.open` removes (at once when its writer is gone, else after 36 hours).

Group commit (the default): each file is written to ``tmp/`` without an fsync, and
:meth:`MaildirSink.commit` flushes the whole batch with one syncfs(2) before the first rename into
``new/``, then fsyncs ``tmp/`` and ``new/`` once. Where syncfs(2) is missing (or with
``group_commit: false``) each file is fsynced as it is written. Files are named after a hash of
``(source, uidl)``, so writing a message the Maildir holds already (in ``new/`` or ``cur/``)
changes nothing.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import NamedTuple

from popflow.context import RuntimeContext
from popflow.errors import RetryableError
from popflow.message import Message
from popflow.processes import pid_alive
from popflow.sinks import files
from popflow.sinks.files import STALE_TMP_SECONDS
from popflow.sinks.folder import FolderConfig, FolderSink, delivery_key

MAILDIR_SUFFIX = ".popflow"
_OWN_TMP_RE = re.compile(r"^\d+\.P(\d+)Q\d+R[0-9a-f]{12}\.[0-9a-f]{32}$")
_KEY_RE = re.compile(r"^([0-9a-f]{32})\.popflow(?:$|[:!;,])")
_counter = itertools.count(1)


class _Unique:
    """The process id and random hex for temp names, without a getpid(2) and a getrandom(2) per file.

    The random part is drawn from the OS's CSPRNG in blocks (every 12 hex digits still unseen
    before they are used); a forked child starts with a new pid and a new block.
    """

    BLOCK = 1536
    """Random bytes fetched at once: 256 names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the pid and the unused random digits (in a new process)."""
        self.pid = os.getpid()
        self._pool = ""
        self._at = 0

    def random_hex(self, digits: int = 12) -> str:
        """``digits`` fresh random hex digits."""
        with self._lock:
            at = self._at
            if at + digits > len(self._pool):
                self._pool, at = os.urandom(self.BLOCK).hex(), 0
            self._at = at + digits
            return self._pool[at:at + digits]


_unique = _Unique()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unique.reset)


class _Pending(NamedTuple):
    """A group-commit write: its temp file in ``tmp/`` and its name in ``new/``."""

    tmp: str
    final: str
    key: str
    synced: bool
    """True when the file was fsynced as written; False when it awaits commit()'s syncfs(2)."""


class MaildirSink(FolderSink):
    """Deliver raw messages into a Maildir (see the module docstring)."""

    def __init__(self, name: str, config: FolderConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self._root_str = str(self.root)
        self._known: set[str] = set()  # keys already in new/ or cur/ (or pending)
        self._pending: list[_Pending] = []  # group commit: written to tmp/, renamed at commit()

    def open(self) -> None:
        """Create ``cur/ new/ tmp/``, clean stale temp files, index the keys already delivered."""
        if self._opened:
            return
        for sub in ("tmp", "new", "cur"):
            self.files.makedirs(self.root / sub)
        self._clean_stale_tmp()
        self._known = set(self._scan_keys())
        self._opened = True

    def write(self, message: Message) -> None:
        """Store one message; a message the Maildir already holds is left as it is."""
        self.open()
        key = delivery_key(message.source, message.uidl, message.sha256)
        if key in self._known:
            return
        # Plain strings, not Path objects: two Path joins per file cost more than the f-strings.
        root = self._root_str
        final = f"{root}/new/{key}{MAILDIR_SUFFIX}"
        # Unique in tmp/ even across processes and retries: time, pid, counter (Maildir style), and
        # a random part so nobody can plant a file there first (it is opened O_EXCL anyway).
        tmp = f"{root}/tmp/{time.time_ns()}.P{_unique.pid}Q{next(_counter)}R{_unique.random_hex()}.{key}"
        if self.config.group_commit:
            # With syncfs(2) the file is written now without an fsync and commit() flushes the whole
            # batch with one syncfs before the first rename, so no file reaches new/ before its bytes
            # are on disk. Without it (or with fsync off) the file is fsynced here as usual.
            deferred = files.syncfs_available() and self.config.fsync
            self.files.write_file(tmp, message.raw.iter_chunks(), sync=not deferred, in_place=True)
            self._known.add(key)
            self._pending.append(_Pending(tmp, final, key, synced=not deferred))
            return
        self.files.write_file(tmp, message.raw.iter_chunks(), in_place=True)
        self._known.add(key)
        try:
            with self.files.os_errors("move into new/", final):
                os.rename(tmp, final)
        except RetryableError:
            self._known.discard(key)
            with suppress(OSError):  # a failing cleanup must not hide why the rename failed
                os.unlink(tmp)
            raise
        self.files.dirty_dirs.add(self.root / "new")

    def commit(self) -> None:
        """Make every write since the last commit durable and, with group commit, visible."""
        pending, self._pending = self._pending, []
        try:
            # Every file must be on disk before the first rename (those fsynced one by one already are).
            if any(not item.synced for item in pending):
                self.files.syncfs(self.root)
            for item in pending:
                with self.files.os_errors("move into new/", item.final):
                    os.rename(item.tmp, item.final)
            if pending:
                self.files.dirty_dirs.update({self.root / "tmp", self.root / "new"})
            self.files.sync_dirty()
        except BaseException:
            # Whatever was not published stays pending so rollback() can clean it up.
            self._pending = [item for item in pending if os.path.exists(item.tmp)] + self._pending
            raise

    def rollback(self) -> None:
        """Drop unpublished group-commit writes; files already in ``new/`` are complete and stay."""
        pending, self._pending = self._pending, []
        for item in pending:
            self._known.discard(item.key)
            with suppress(OSError):  # gone already, or a read-only folder: nothing to clean
                os.unlink(item.tmp)

    def close(self) -> None:
        """Forget the index; writes never committed are rolled back."""
        self.rollback()
        self._opened = False
        self._known.clear()

    def check(self) -> str:
        """Create the Maildir and prove ``tmp/`` is writable; say how many messages popflow put there."""
        self.open()
        try:
            self._probe(self.root / "tmp")
            return f"writable maildir {self.root}, {len(self._known)} messages from popflow"
        finally:
            self.close()

    def _scan_keys(self) -> Iterator[str]:
        """Keys of popflow's files in new/ and cur/ (a MUA may have moved one and added flags)."""
        for sub in ("new", "cur"):
            with self.files.os_errors("list", self.root / sub), os.scandir(self.root / sub) as entries:
                for entry in entries:
                    if found := _KEY_RE.match(entry.name):
                        yield found.group(1)

    def _clean_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        with self.files.os_errors("list", self.root / "tmp"), os.scandir(self.root / "tmp") as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    # A batch left in tmp/ by a killed popflow (its pid is gone) goes at once; a
                    # failing rename is retried, so even a wrong guess loses nothing.
                    if entry.stat().st_mtime < cutoff or _writer_is_gone(entry.name):
                        os.unlink(entry.path)
                except FileNotFoundError:  # another process cleaned it first
                    continue


def _writer_is_gone(name: str) -> bool:
    """True for a popflow temp file whose writing process no longer exists."""
    found = _OWN_TMP_RE.match(name)
    if found is None or int(found.group(1)) == os.getpid():
        return False
    return not pid_alive(int(found.group(1)))
