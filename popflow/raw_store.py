"""Raw bytes of dead letters and quarantined messages, kept under ``data_dir``.

Files are named by their SHA-256, so a message dead-lettered for two sinks is stored once. Each is
written to a temporary name, fsynced and renamed, so a crash never leaves a partial file under its
final name; leftovers from a crash are removed at the next start. A temporary name carries the pid
and a hash of the host of the process writing it (``<sha>.eml.tmp-<pid>.<host>.<random>``), so the
start-up of a second popflow process on the same ``data_dir`` removes only what dead processes left.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from popflow.errors import StorageError
from popflow.private import mkdirs_private, write_private_atomic
from popflow.processes import pid_alive, this_host
from popflow.raw import RawMessage

STALE_AFTER = 24 * 3600.0
"""Temporary files whose writer cannot be checked (another host's, or an old popflow's unnamed ones)
are removed once not written to for this long."""


def _host_tag() -> str:
    # A short, file-name-safe stand-in for the host name.
    return hashlib.sha256(this_host().encode()).hexdigest()[:8]


def temp_suffix(suffix: str = "", pid: int | None = None) -> str:
    """The suffix of a temporary file of this process (or ``pid``): ``<suffix>.tmp-<pid>.<host>.<random>``."""
    return f"{suffix}.tmp-{pid or os.getpid()}.{_host_tag()}.{secrets.token_hex(8)}"


def _writer_dead(path: Path) -> bool | None:
    """True/False when the temp file names a process of this host; None when it cannot be told."""
    parts = path.name.rsplit(".tmp-", 1)[-1].split(".")
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] != _host_tag():
        return None
    return not pid_alive(int(parts[0]))


class MessageStore:
    """Raw messages by SHA-256 under one folder (``data_dir/messages``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        """Where the raw bytes with this SHA-256 live."""
        return self.root / sha256[:2] / f"{sha256}.eml"

    def put(self, raw: RawMessage, details: dict[str, Any] | None = None) -> Path:
        """Store raw bytes (once per SHA-256) and an optional JSON sidecar; returns the path."""
        final = self.path_for(raw.sha256)
        try:
            mkdirs_private(final.parent)
            if not final.exists():
                # Private (0600), unpredictable and never through a planted symlink (O_EXCL|O_NOFOLLOW);
                # the ``.tmp-`` infix is what clean_partial() looks for after a crash.
                write_private_atomic(final, raw.iter_chunks(), temp=final.with_suffix(temp_suffix(".eml")))
            if details is not None:
                sidecar = json.dumps(details, indent=2, default=str).encode("utf-8")
                write_private_atomic(final.with_suffix(".json"), [sidecar],
                                     temp=final.with_suffix(temp_suffix(".json")))
        except OSError as exc:
            where = exc.filename or final
            raise StorageError(f"cannot keep a copy of the message under {where}: "
                               f"{exc.strerror or exc}") from exc
        return final

    def has(self, sha256: str) -> bool:
        """Whether the bytes with this SHA-256 are stored."""
        return self.path_for(sha256).exists()

    def where(self, sha256: str) -> str:
        """Where the copy lives, for people: its path."""
        return str(self.path_for(sha256))

    def get(self, sha256: str) -> RawMessage:
        """The stored raw bytes (spooled from the file, not loaded)."""
        path = self.path_for(sha256)
        return RawMessage(path=path)

    def read(self, sha256: str) -> bytes:
        """The stored raw bytes, loaded."""
        return self.path_for(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        """Delete stored bytes and sidecar."""
        path = self.path_for(sha256)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)

    def clean_partial(self, stale_after: float = STALE_AFTER) -> int:
        """Remove temporary files left by a crashed process; returns how many.

        A file of a live process of this host is being written and stays. One of a dead process
        goes at once; one whose writer cannot be checked goes only after ``stale_after`` seconds.
        """
        removed = 0
        if not self.root.exists():
            return 0
        cutoff = time.time() - stale_after
        for path in self.root.glob("*/*.tmp-*"):
            dead = _writer_dead(path)
            try:
                if dead is False or (dead is None and path.lstat().st_mtime >= cutoff):
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # its writer renamed it into place meanwhile
            removed += 1
        return removed


def clean_spool(spool_dir: Path) -> int:
    """Remove spool files of messages that were being received when popflow stopped."""
    removed = 0
    if spool_dir.exists():
        for path in spool_dir.glob("spool-*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
