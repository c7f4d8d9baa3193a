"""The ``folder`` sink: raw messages into a Maildir, or ``.eml`` files with JSON beside them.

``layout: maildir`` follows the Maildir protocol: write to ``tmp/``, fsync, rename into ``new/``.
A file in ``new/`` is therefore always complete; a crash leaves at most a stray file in ``tmp/``,
which :meth:`FolderSink.open` removes once it is 36 hours old (the Maildir convention).

``layout: eml`` writes ``<path>/<source>/<yyyy>/<mm>/<id>.eml``, the attachments under ``<id>/``
(``attachments: true``) and ``<id>.json`` last: the JSON file marks a complete delivery, so an
interrupted attempt is simply redone on retry. Every file goes through a temp file, fsync and
``os.replace``, so no visible file is ever partial.

Both layouts name files after a hash of ``(source, uidl)``, which makes them idempotent: writing a
message the folder already holds changes nothing. Directory fsyncs are deferred to
:meth:`FolderSink.commit` (group commit); ``group_commit: true`` also defers the Maildir file
fsyncs, keeping a batch in ``tmp/`` until one ``syncfs(2)`` in ``commit()`` has it on disk and the
renames move it into ``new/``. It is the default for ``layout: maildir``; where syncfs(2) is missing
each file is fsynced as it is written and only the renames wait for ``commit()``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from popflow.config import SinkSettings
from popflow.context import RuntimeContext
from popflow.errors import RetryableError
from popflow.hookspecs import hookimpl
from popflow.message import Message
from popflow.private import DIR_MODE, TEMP_SUFFIX, open_new_private, temp_name, write_all
from popflow.record import json_value
from popflow.safenames import safe_filename, unique_name
from popflow.sinks.base import Sink

STALE_TMP_SECONDS = 36 * 3600
"""Files older than this in a Maildir's ``tmp/`` are leftovers of a crash (Maildir convention)."""

MAILDIR_SUFFIX = ".popflow"
_OWN_TMP_RE = re.compile(r"^\d+\.P(\d+)Q\d+R[0-9a-f]{12}\.[0-9a-f]{32}$")
_KEY_RE = re.compile(r"^([0-9a-f]{32})\.popflow(?:$|[:!;,])")
_counter = itertools.count(1)


class FolderConfig(SinkSettings):
    """Options of ``type: folder``."""

    path: Path
    """The folder; a relative path is relative to the config file's folder."""
    layout: Literal["maildir", "eml"] = "maildir"
    attachments: bool = False
    """``layout: eml`` only: also save each attachment under ``<id>/``."""
    fsync: bool = True
    """Flush files and folders to disk; turn off only for scratch folders."""
    group_commit: bool | None = None
    """``layout: maildir`` only: fsync and publish a batch at ``commit()`` instead of every write.

    Unset means on for ``maildir`` (the guarantee is the same: one syncfs(2) before any rename) and
    off for ``eml``."""

    @model_validator(mode="after")
    def _eml_only_options(self) -> FolderConfig:
        if self.layout != "eml" and self.attachments:
            raise ValueError("'attachments: true' needs 'layout: eml'")
        if self.layout != "maildir" and self.group_commit:
            raise ValueError("'group_commit: true' needs 'layout: maildir'")
        if self.group_commit is None:
            self.group_commit = self.layout == "maildir"
        return self


def delivery_key(source: str, uidl: str, sha256: str = "") -> str:
    """32 hex characters naming a message's files, derived from ``(source, uidl)``.

    A message without a UIDL falls back to its content hash, so two such messages never collapse
    into one file.
    """
    identity = f"{source}\0{uidl}" if uidl else f"{source}\0sha256:{sha256}"
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class FolderSink(Sink):
    """Deliver messages into a folder (``layout: maildir`` or ``layout: eml``)."""

    config_model = FolderConfig
    config: FolderConfig

    def __init__(self, name: str, config: FolderConfig, context: RuntimeContext) -> None:
        super().__init__(name, config, context)
        self.root = context.resolve(config.path)
        self._root_str = str(self.root)
        self._opened = False
        self._known: set[str] = set()  # maildir: keys already in new/ or cur/
        self._pending: list[_Pending] = []  # group commit: written to tmp/, renamed at commit()
        self._dirty_dirs: set[Path] = set()  # directories to fsync at commit()
        self._swept: set[Path] = set()  # eml folders already cleaned of stale temp files

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder (and ``cur/ new/ tmp/``), clean stale temp files, index the Maildir."""
        if self._opened:
            return
        if self.config.layout == "maildir":
            for sub in ("tmp", "new", "cur"):
                self._makedirs(self.root / sub)
            self._clean_stale_tmp()
            self._known = set(self._scan_keys())
        else:
            self._makedirs(self.root)
        self._opened = True

    def write(self, message: Message) -> None:
        """Store one message; a message the folder already holds is left as it is."""
        self.open()
        if self.config.layout == "maildir":
            self._write_maildir(message)
        else:
            self._write_eml(message)

    def commit(self) -> None:
        """Make every write since the last commit durable (and, with group commit, visible)."""
        pending, self._pending = self._pending, []
        try:
            # Every file must be on disk before the first rename (those fsynced one by one already are).
            if any(not item.synced for item in pending):
                self._syncfs()
            for item in pending:
                with self._os_errors("move into new/", item.final):
                    os.rename(item.tmp, item.final)
            if pending:
                self._dirty_dirs.update({self.root / "tmp", self.root / "new"})
            # One fsync per directory for the whole batch: this is what group commit saves.
            for directory in sorted(self._dirty_dirs):
                self._sync_dir(directory)
        except BaseException:
            # Whatever was not published stays pending so rollback() can clean it up.
            self._pending = [item for item in pending if os.path.exists(item.tmp)] + self._pending
            raise
        self._dirty_dirs.clear()

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
        self._swept.clear()

    def check(self) -> str:
        """Create the folder and prove it is writable; say what it holds."""
        self.open()
        try:
            probe_dir = self.root / "tmp" if self.config.layout == "maildir" else self.root
            probe = probe_dir / f".popflow-check.{os.getpid()}.{next(_counter)}.{secrets.token_hex(6)}"
            self._write_file(probe, [b"ok\n"], sync=False, in_place=True)
            probe.unlink()
            if self.config.layout == "maildir":
                return f"writable maildir {self.root}, {len(self._known)} messages from popflow"
            return f"writable folder {self.root}"
        finally:
            self.close()

    def describe(self) -> str:
        """E.g. ``folder maildir ./mail``."""
        extra = " +attachments" if self.config.attachments else ""
        return f"folder {self.config.layout} {self.config.path}{extra}"

    # -- maildir -------------------------------------------------------------------------------
    def _write_maildir(self, message: Message) -> None:
        key = delivery_key(message.source, message.uidl, message.sha256)
        if key in self._known:
            return
        # Plain strings, not Path objects: two Path joins per file cost more than the f-strings.
        root = self._root_str
        final = f"{root}/new/{key}{MAILDIR_SUFFIX}"
        # Unique in tmp/ even across processes and retries: time, pid, counter (Maildir style), and
        # a random part so nobody can plant a file there first (it is opened O_EXCL anyway).
        tmp = f"{root}/tmp/{time.time_ns()}.P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(6)}.{key}"
        if self.config.group_commit:
            # With syncfs(2) the file is written now without an fsync and commit() flushes the whole
            # batch with one syncfs before the first rename, so no file reaches new/ before its bytes
            # are on disk. Without it (or with fsync off) the file is fsynced here as usual.
            deferred = _SYNCFS is not None and self.config.fsync
            self._write_file(tmp, message.raw.iter_chunks(), sync=not deferred, in_place=True)
            self._known.add(key)
            self._pending.append(_Pending(tmp, final, key, synced=not deferred))
            return
        self._write_file(tmp, message.raw.iter_chunks(), in_place=True)
        self._known.add(key)
        try:
            with self._os_errors("move into new/", final):
                os.rename(tmp, final)
        except RetryableError:
            self._known.discard(key)
            with suppress(OSError):  # a failing cleanup must not hide why the rename failed
                os.unlink(tmp)
            raise
        self._dirty_dirs.add(self.root / "new")

    def _scan_keys(self) -> Iterator[str]:
        """Keys of popflow's files in new/ and cur/ (a MUA may have moved one and added flags)."""
        for sub in ("new", "cur"):
            with self._os_errors("list", self.root / sub), os.scandir(self.root / sub) as entries:
                for entry in entries:
                    if found := _KEY_RE.match(entry.name):
                        yield found.group(1)

    def _clean_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        with self._os_errors("list", self.root / "tmp"), os.scandir(self.root / "tmp") as entries:
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

    # -- eml -------------------------------------------------------------------------------
    def _write_eml(self, message: Message) -> None:
        key = delivery_key(message.source, message.uidl, message.sha256)
        source_dir = self.root / safe_filename(message.source, fallback="source")
        if message.date is not None:
            when = _utc(message.date)
            month_dir = source_dir / f"{when.year:04d}" / f"{when.month:02d}"
            if (month_dir / f"{key}.json").exists():
                return
        else:
            # The folder follows the delivery time, which differs on a redelivery: look everywhere.
            if any(self._month_dirs_holding(source_dir, f"{key}.json")):
                return
            now = datetime.now(UTC)
            month_dir = source_dir / f"{now.year:04d}" / f"{now.month:02d}"
        self._makedirs(month_dir)
        self._sweep_stale_temps(month_dir)
        self._write_file(month_dir / f"{key}.eml", message.raw.iter_chunks())
        message.load_body()
        saved: dict[int, str] = {}
        if self.config.attachments and message.attachments:
            saved = self._save_attachments(message, month_dir / key)
            self._sync_dir(month_dir / key)
        # The .json marks the delivery complete, so what it points at must be on disk first.
        self._sync_dir(month_dir)
        record = self._json_record(message, key, saved)
        self._write_file(month_dir / f"{key}.json", [record])
        self._dirty_dirs.add(month_dir)

    def _save_attachments(self, message: Message, folder: Path) -> dict[int, str]:
        """Save each attachment under a safe, unique name; returns index → path relative to root."""
        self._makedirs(folder)
        self._sweep_stale_temps(folder)
        taken: set[str] = set()
        saved = {}
        for index, attachment in enumerate(message.attachments):
            # The parser already made the name safe; a plugin may have changed it since.
            name = unique_name(safe_filename(attachment.filename, fallback=f"attachment-{index + 1}"), taken)
            self._write_file(folder / name, attachment.chunks())  # bounded memory, whatever its size
            saved[index] = f"{folder.name}/{name}"
        return saved

    def _json_record(self, message: Message, key: str, saved: dict[int, str]) -> bytes:
        meta = json_value(message.meta)  # the rule every sink follows (popflow.record)
        data: dict[str, Any] = message.model_dump(mode="json", fallback=repr, exclude={"meta"})
        data["tags"] = sorted(message.tags)
        data["meta"] = meta
        for index, path in saved.items():
            data["attachments"][index]["saved_as"] = path
        data["popflow"] = {"id": key, "eml": f"{key}.eml", "delivered_at": datetime.now(UTC).isoformat()}
        return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    def _sweep_stale_temps(self, folder: Path) -> None:
        """Remove temp files a crashed attempt left in ``folder`` (once per folder per poll).

        Temp names are random, so a retry cannot reuse its predecessor's file; like a Maildir's
        tmp/, leftovers older than :data:`STALE_TMP_SECONDS` are removed (a symlink is removed,
        never followed).
        """
        if folder in self._swept:
            return
        self._swept.add(folder)
        cutoff = time.time() - STALE_TMP_SECONDS
        with suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    with suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)

    @staticmethod
    def _month_dirs_holding(source_dir: Path, name: str) -> Iterator[Path]:
        for month_dir in source_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]"):
            if (month_dir / name).exists():
                yield month_dir

    # -- files ------------------------------------------------------------------------------
    def _write_file(self, final: Path | str, chunks: Iterable[bytes], *, sync: bool = True,
                    in_place: bool = False) -> None:
        """Write ``final`` whole or not at all: temp file beside it, fsync, ``os.replace``.

        ``in_place`` writes ``final`` directly: for a Maildir's tmp/ file, never visible to a MUA.
        """
        # An unpredictable name opened O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: whoever can write the
        # folder cannot plant a symlink (or a file) that popflow would write through.
        temp = final if in_place else temp_name(final)
        created = False
        try:
            with self._os_errors("write", final):
                fd = open_new_private(temp)
                created = True
                try:
                    # os.write on the descriptor: a Python file object adds fstat, ioctl and lseek
                    # calls and a buffer copy per file, for chunks that are written whole anyway.
                    write_all(fd, chunks)
                    if sync and self.config.fsync:
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

    def _sync_dir(self, path: Path) -> None:
        """Flush a directory's entries (renames and new files) to disk."""
        if not self.config.fsync:
            return
        with self._os_errors("sync", path):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems can't
                    raise
            finally:
                os.close(fd)

    def _syncfs(self) -> None:
        """Flush every dirty file of the sink's filesystem to disk: one call for a whole batch."""
        assert _SYNCFS is not None
        with self._os_errors("sync", self.root):
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                _SYNCFS(fd)
            finally:
                os.close(fd)

    def _makedirs(self, path: Path) -> None:
        """``mkdir -p``, remembering each new directory's parent for the fsync at commit()."""
        if path.is_dir():
            return
        missing = []
        probe = path
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        if not missing:
            raise RetryableError(f"folder sink {self.name!r}: cannot create folder {path}: not a directory")
        for directory in reversed(missing):
            with self._os_errors("create folder", directory):
                try:
                    directory.mkdir(mode=DIR_MODE)  # mail is private by default
                except FileExistsError:
                    if not directory.is_dir():
                        raise
            self._dirty_dirs.add(directory.parent)

    @contextmanager
    def _os_errors(self, action: str, path: Path | str) -> Iterator[None]:
        """Turn an OSError (full disk, permissions, ...) into a RetryableError naming the path."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RetryableError(f"folder sink {self.name!r}: cannot {action} {path}: {reason}") from exc


@dataclass(frozen=True)
class _Pending:
    """A group-commit write: its temp file in ``tmp/`` and its name in ``new/``."""

    tmp: str
    final: str
    key: str
    synced: bool
    """True when the file was fsynced as written; False when it awaits commit()'s syncfs(2)."""


def _writer_is_gone(name: str) -> bool:
    """True for a popflow temp file whose writing process no longer exists."""
    found = _OWN_TMP_RE.match(name)
    if found is None or int(found.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


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


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one, or one at the edge of the calendar, as it is."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. year 1 with a positive offset: real mail has such dates
        return moment


@hookimpl
def popflow_register_sinks(register: Any) -> None:
    """Register the ``folder`` sink type."""
    register("folder", FolderSink)
