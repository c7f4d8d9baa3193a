"""Mail and the ledger are private by default, and temp files never follow a planted symlink.

Under umask 022 a real ``popflow poll`` delivers into a Maildir, an eml folder with attachments and
a SQLite database sink, dead-letters one message and quarantines another: every file it leaves
under ``data_dir``, the sink folders and the state DB must be 0600 (folders 0700): no group or
other bit. Then symlinks are planted at every predictable temp name popflow used to write
through; their targets must stay untouched and the mail must still be delivered.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from popflow.raw import RawMessage
from popflow.raw_store import MessageStore
from popflow.sinks.folder import delivery_key
from popflow.state import StateStore
from popflow.testing import POP3TestServer
from tests.support.pipeline import sample_message, write_config

pytestmark = pytest.mark.timeout(120)

SCANNER = '''
from popflow import ScanVerdict, hookimpl


@hookimpl
def popflow_scan(message):
    """Quarantine anything whose subject says it is a virus."""
    if "virus" in (message.subject or ""):
        return ScanVerdict("infected", "testscan", signature="Test.Virus")
    return ScanVerdict("clean", "testscan")
'''


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with this umask (child processes inherit it)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def poll(config: Path) -> subprocess.CompletedProcess[str]:
    """``popflow poll`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "popflow", "poll", "-c", str(config)], capture_output=True,
                          text=True, timeout=90, cwd=config.parent)


def public_bits(root: Path) -> list[str]:
    """Every path under ``root`` (and ``root``) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def test_poll_leaves_only_private_files_under_umask_022(tmp_path: Path) -> None:
    mail = [sample_message(0, attachment=b"%PDF-1.4 invoice"),
            sample_message(1, subject="a virus inside"),
            sample_message(2, subject="poison"),
            sample_message(3, attachment=os.urandom(1_500_000))]  # > 1 MB: received through the spool
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "scanner.py").write_text(SCANNER)
    (tmp_path / "blocker").write_text("a file where the sink wants a folder: every write fails\n")
    with umask(0o022), POP3TestServer(mail) as server:
        config = write_config(
            tmp_path, server,
            sinks={"maildir": {"type": "folder", "path": "./maildir"},
                   "eml": {"type": "folder", "path": "./eml", "layout": "eml", "attachments": True},
                   "db": {"type": "database", "url": "sqlite:///mail.db", "store_raw": True},
                   "broken": {"type": "folder", "path": "./blocker/mail", "retries": 0}},
            routes=[{"match": {"subject": "poison"}, "sinks": ["broken"], "stop": True},
                    {"sinks": ["maildir", "eml", "db"]}],
            extra={"plugins_dir": "./plugins"})
        result = poll(config)
        assert "Traceback" not in result.stderr, result.stderr
        assert len(server.messages()) == 0, result.stdout + result.stderr  # all handled
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("select count(*) from popflow_dead_letters").fetchone()[0] == 1
        assert db.execute("select count(*) from popflow_quarantine").fetchone()[0] == 1
    stored = list((tmp_path / "data" / "messages").rglob("*.eml"))
    assert len(stored) == 2 and len(list((tmp_path / "data" / "messages").rglob("*.json"))) == 2
    assert list((tmp_path / "eml").rglob("*.pdf")) or list((tmp_path / "eml").rglob("file-0.bin"))
    leaks = []
    for root in ("data", "maildir", "eml"):
        leaks += public_bits(tmp_path / root)
    for database in [*tmp_path.glob("state.db*"), *tmp_path.glob("mail.db*")]:
        leaks += public_bits(database)
    assert not leaks, "readable by group/other:\n" + "\n".join(leaks)


@pytest.mark.parametrize("kind", ["state", "sink"])
def test_sqlite_wal_and_shm_files_are_private(tmp_path: Path, kind: str) -> None:
    # SQLite gives -wal and -shm the main file's mode: they exist only while a connection is open.
    from popflow.context import RuntimeContext
    from popflow.sinks.database import DatabaseConfig, DatabaseSink

    database = tmp_path / "x.db"
    with umask(0o022):
        if kind == "state":
            StateStore(f"sqlite:///{database}").close()
        else:
            sink = DatabaseSink("db", DatabaseConfig(type="database", url=f"sqlite:///{database}"),
                                RuntimeContext(data_dir=tmp_path / "data", base_dir=tmp_path))
            sink.open()
            sink.close()
        holder = sqlite3.connect(database)
        try:
            holder.execute("PRAGMA journal_mode=WAL")
            holder.execute("CREATE TABLE IF NOT EXISTS probe (x)")
            holder.execute("INSERT INTO probe VALUES (1)")
            holder.commit()
            files = sorted(tmp_path.glob("x.db*"))
            assert {path.name for path in files} >= {"x.db", "x.db-wal", "x.db-shm"}
            assert [f"{p.name} {stat.filemode(p.stat().st_mode)}" for p in files if p.stat().st_mode & 0o077] == []
        finally:
            holder.close()


def test_planted_symlinks_at_eml_temp_names_are_not_followed(tmp_path: Path) -> None:
    # Someone who can write the sink folder plants a symlink at each temp name popflow used to
    # open with O_CREAT|O_TRUNC: the .eml, its .json and each attachment's temp file.
    target = tmp_path / "precious"
    target.write_bytes(b"must stay as it is\n")
    mail = [sample_message(0, attachment=b"attached bytes")]
    with POP3TestServer(mail) as server:
        key = delivery_key("test", server.uidls()[0])
        month = tmp_path / "eml" / "test" / "2026" / "11"  # sample_message's Date
        (month / key).mkdir(parents=True)
        planted = [month / f".{key}.eml.popflow-tmp", month / f".{key}.json.popflow-tmp",
                   month / key / ".file-0.bin.popflow-tmp"]
        for link in planted:
            link.symlink_to(target)
        config = write_config(tmp_path, server, sinks={
            "eml": {"type": "folder", "path": "./eml", "layout": "eml", "attachments": True, "backoff": "10ms"}},
            routes=[{"sinks": ["eml"]}])
        result = poll(config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(server.messages()) == 0
    assert target.read_bytes() == b"must stay as it is\n"
    for path in (month / f"{key}.eml", month / f"{key}.json", month / key / "file-0.bin"):
        assert not path.is_symlink() and path.is_file(), path
    assert (month / f"{key}.eml").read_bytes() == mail[0]
    assert (month / key / "file-0.bin").read_bytes() == b"attached bytes"


def test_planted_symlinks_in_the_message_store_are_not_followed(tmp_path: Path) -> None:
    # The dead-letter/quarantine copy used ``<sha>.tmp-<pid>`` (predictable) and wrote its JSON
    # sidecar in place: both followed a symlink planted there.
    target = tmp_path / "precious"
    target.write_bytes(b"must stay as it is\n")
    store = MessageStore(tmp_path / "messages")
    raw = RawMessage.from_bytes(sample_message(7))
    final = store.path_for(raw.sha256)
    final.parent.mkdir(parents=True)
    for link in (final.with_suffix(f".tmp-{os.getpid()}"), final.with_suffix(".json")):
        link.symlink_to(target)
    store.put(raw, {"uidl": "7"})
    assert target.read_bytes() == b"must stay as it is\n"
    assert final.read_bytes() == raw.read()
    assert not final.with_suffix(".json").is_symlink()
    assert '"uidl": "7"' in final.with_suffix(".json").read_text()
