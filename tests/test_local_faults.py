"""Local faults: a sink folder that cannot be written, a full disk, a database that is down.

Each scenario routes four messages to a healthy SQLite database sink (``good``) and to a broken
sink (``bad``, ``retries: 2``). What must happen:

1. the poll does not crash: the first message is tried three times, then becomes a dead letter for
   ``bad`` (raw bytes under ``data_dir``, listed in the state DB); ``bad`` is then considered down
   for the rest of the poll, so the other three are deferred — left on the server — instead of
   each waiting out the backoff. ``good`` has all four.
2. the fault is fixed; ``popflow dead-letters replay`` delivers the dead letter to ``bad``;
3. the next poll delivers the deferred three to ``bad`` only (``good`` is not written twice);
   the server is empty and each sink holds each message exactly once.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from popflow.cli import main
from popflow.sinks import files as files_module
from popflow.testing import POP3TestServer
from tests.support.databases import SERVER_URLS, TestDatabase, require_server
from tests.support.dovecot import free_port
from tests.support.killing import db_ids, maildir_ids, message_id
from tests.support.pipeline import make_app, sample_message, write_config

pytestmark = pytest.mark.timeout(60)

COUNT = 4


@dataclass
class Fault:
    """One broken sink: its options, how to count what it holds, how to fix it."""

    options: dict[str, Any]
    holds: Callable[[], Counter[str]]
    fix: Callable[[], None]


def _folder_not_writable(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> Generator[Fault, None, None]:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where the sink expects a folder\n")
    yield Fault({"type": "folder", "path": "./blocker/mail"}, lambda: maildir_ids(blocker / "mail"),
                lambda: blocker.unlink())


def _disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Generator[Fault, None, None]:
    # ENOSPC from fsync and syncfs, for files under ./full only (delayed allocation reports a full disk there).
    # The state DB and data_dir live elsewhere, as they would on a separate mail volume.
    target = str(tmp_path / "full")
    real_fsync = os.fsync
    full = {"on": True}

    def fsync(fd: int) -> None:
        if full["on"] and os.readlink(f"/proc/self/fd/{fd}").startswith(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    real_syncfs = files_module._SYNCFS
    if real_syncfs is not None:  # group commit (the Maildir default) flushes a batch with syncfs(2)
        def syncfs(fd: int) -> None:
            if full["on"] and os.readlink(f"/proc/self/fd/{fd}").startswith(target):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_syncfs(fd)

        monkeypatch.setattr(files_module, "_SYNCFS", syncfs)
    yield Fault({"type": "folder", "path": "./full"}, lambda: maildir_ids(tmp_path / "full"),
                lambda: full.update(on=False))


def _database_down(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> Generator[Fault, None, None]:
    require_server("postgresql")
    database = TestDatabase("postgresql", SERVER_URLS["postgresql"], f"t{uuid.uuid4().hex[:10]}_")
    closed = SERVER_URLS["postgresql"].replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    assert closed != database.url
    options: dict[str, Any] = {"type": "database", "url": closed, "table_prefix": database.prefix,
                               "connect_timeout": "2s"}

    def holds() -> Counter[str]:
        engine = create_engine(database.url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text(f"select message_id from {database.prefix}messages")).fetchall()
        except Exception:
            return Counter()
        finally:
            engine.dispose()
        return Counter(row[0] for row in rows)

    try:
        yield Fault(options, holds, lambda: options.update(url=database.url))  # the operator fixes the URL
    finally:
        database.drop_tables()


FAULTS = {"folder_not_writable": _folder_not_writable, "disk_full": _disk_full, "database_down": _database_down}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_local_fault_dead_letters_then_replay_delivers_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           kind: str) -> None:
    faults = FAULTS[kind](tmp_path, monkeypatch)
    fault = next(faults)
    try:
        mail = [sample_message(i) for i in range(COUNT)]
        ids = {message_id(raw) for raw in mail}

        def configure() -> Path:
            return write_config(tmp_path, server,
                                sinks={"good": {"type": "database", "url": "sqlite:///good.db"},
                                       "bad": {**fault.options, "retries": 2, "backoff": "10ms"}},
                                routes=[{"sinks": ["good", "bad"]}])

        with POP3TestServer(mail) as server:
            server_uidl = server.uidls()[0]
            config = configure()
            app = make_app(config)
            report = app.poll("test")  # must not raise
            dead = app.state.dead_letters()
            app.close()
            assert not report.clean and report.error is None, report.line()
            assert report.counts.dead_letters == 1 and report.counts.deferred == COUNT - 1
            assert len(dead) == 1 and dead[0]["sink"] == "bad" and dead[0]["attempts"] == 3
            assert app.store.path_for(dead[0]["sha256"]).read_bytes() == mail[0]
            assert len(server.messages()) == COUNT - 1  # the dead letter is handled; the deferred stay
            assert db_ids(tmp_path / "good.db") == Counter(ids)
            assert fault.holds() == Counter()

            fault.fix()
            config = configure()
            result = CliRunner().invoke(main, ["dead-letters", "replay", "-c", str(config)])
            assert result.exit_code == 0, result.output
            assert "replayed 1 of 1" in result.output
            assert fault.holds() == Counter([message_id(mail[0])])

            app = make_app(config)
            report = app.poll("test")
            app.close()
            assert report.clean, report.line()
            assert report.counts.delivered == COUNT - 1 and server.messages() == []
            assert server.stats.retrieved[server_uidl] == 1  # the dead-lettered one was not fetched again

        again = CliRunner().invoke(main, ["dead-letters", "replay", "-c", str(config)])
        assert again.exit_code == 0 and "replayed 0 of 0" in again.output
        assert fault.holds() == Counter(ids), "bad sink: lost or duplicated"
        assert db_ids(tmp_path / "good.db") == Counter(ids), "good sink: lost or duplicated"
    finally:
        faults.close()  # drops the PostgreSQL tables
