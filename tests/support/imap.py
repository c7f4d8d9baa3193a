"""IMAP test helpers around the private Dovecot (tests/support/dovecot.py serves IMAP too).

Dovecot keeps the user's mail as Maildir++: ``INBOX`` is the Maildir itself, a folder ``Archive``
is the sub-Maildir ``.Archive``. Mail dropped into ``new/`` is seen by Dovecot at once (it is how
mail arrives from an MTA), and a folder's UIDVALIDITY lives in its ``dovecot-uidlist`` and index.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dovecot import DovecotServer

_counter = iter(range(10**9))


def folder_dir(server: DovecotServer, folder: str = "INBOX") -> Path:
    """The Maildir holding ``folder``."""
    return server.maildir if folder == "INBOX" else server.maildir / f".{folder}"


def deliver_to(server: DovecotServer, folder: str, raw: bytes) -> str:
    """Drop a message into ``folder``'s ``new/`` (written to ``tmp/`` first); returns its file name."""
    if folder == "INBOX":
        return server.deliver(raw)
    path = folder_dir(server, folder)
    make_folder(server, folder)
    name = f"{time.time_ns()}.P{os.getpid()}R{next(_counter)}.popflow-test"
    (path / "tmp" / name).write_bytes(raw)
    os.chown(path / "tmp" / name, server.uid, server.gid)
    os.rename(path / "tmp" / name, path / "new" / name)
    return name


def make_folder(server: DovecotServer, folder: str) -> Path:
    """Create ``folder`` as a Maildir++ sub-folder owned by the mail user."""
    path = folder_dir(server, folder)
    for sub in ("", "new", "cur", "tmp"):
        (path / sub).mkdir(exist_ok=True)
        os.chown(path / sub, server.uid, server.gid)
        (path / sub).chmod(0o700)
    return path


def files(server: DovecotServer, folder: str = "INBOX") -> list[Path]:
    """Message files of ``folder`` (``new/`` and ``cur/``), sorted by name."""
    path = folder_dir(server, folder)
    return sorted(p for sub in ("new", "cur") if (path / sub).is_dir() for p in (path / sub).iterdir())


def flags(path: Path) -> str:
    """The Maildir flags of a message file (``S`` for \\Seen, ``T`` for \\Deleted)."""
    return path.name.split(":2,", 1)[1] if ":2," in path.name else ""


def reset_uidvalidity(server: DovecotServer, folder: str = "INBOX") -> None:
    """Make Dovecot give ``folder`` a new UIDVALIDITY (as a rebuilt index or a restored backup does).

    The uidlist and index files go; a uidlist header with a larger UIDVALIDITY takes their place,
    so every message is numbered afresh from UID 1 under the new UIDVALIDITY.
    """
    path = folder_dir(server, folder)
    old = path / "dovecot-uidlist"
    validity = int(old.read_text().split()[1][1:]) if old.exists() else int(time.time())
    for item in path.iterdir():
        if item.name.startswith("dovecot"):
            item.unlink()
    old.write_text(f"3 V{validity + 1000} N1 G{os.urandom(16).hex()}\n")
    os.chown(old, server.uid, server.gid)


def clear_folders(server: DovecotServer) -> None:
    """Remove every sub-folder (INBOX is emptied by the ``dovecot`` fixture)."""
    for path in server.maildir.iterdir():
        if path.is_dir() and path.name.startswith("."):
            shutil.rmtree(path)
    subscriptions = server.maildir / "subscriptions"
    subscriptions.unlink(missing_ok=True)


def imap_source(server: DovecotServer, **options: Any) -> dict[str, Any]:
    """Options of a ``type: imap`` source reading the private Dovecot over implicit TLS."""
    source: dict[str, Any] = {"type": "imap", "host": server.host, "port": server.imaps_port, "tls": "implicit",
                              "ca_file": str(server.ca_file), "username": server.username,
                              "password": server.password, "timeout": "10s", "idle": False}
    source.update(options)
    return {key: value for key, value in source.items() if value is not None}


def write_imap_config(tmp_path: Path, server: DovecotServer, *, sinks: dict[str, Any] | None = None,
                      extra: dict[str, Any] | None = None, **options: Any) -> Path:
    """A popflow.yaml reading the private Dovecot by IMAP into a Maildir folder sink ``./mail``."""
    data: dict[str, Any] = {
        "state": "sqlite:///state.db",
        "data_dir": "./data",
        "sources": {"imap": imap_source(server, **options)},
        "sinks": sinks or {"archive": {"type": "folder", "path": "./mail", "layout": "maildir", "backoff": "10ms"}},
        "routes": [{"sinks": list((sinks or {"archive": None}).keys())}],
    }
    data.update(extra or {})
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def imap_dovecot(dovecot: DovecotServer) -> Iterator[DovecotServer]:
    """The session's Dovecot with an empty INBOX and no other folders."""
    clear_folders(dovecot)
    yield dovecot
    clear_folders(dovecot)
