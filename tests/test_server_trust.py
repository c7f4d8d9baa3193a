"""Which message is which when the server's UIDLs are not what RFC 1939 promises (docs/delivery.md).

Each test runs real polls against a raw-socket server scripted to behave as real servers were seen
to: numbering UIDLs and reusing them after a deletion, listing one UIDL for several messages,
serving distinct non-ASCII UIDLs, or sitting behind a source that was re-pointed to another mailbox.
The rule under test: no message is deleted or passed over because its UIDL was seen before; every
message reaches every sink exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from popflow.state import LIVE_STATES
from tests.support.pipeline import maildir_files, make_app, write_config
from tests.support.scripted_pop3 import Entry, ScriptedPop3, ScriptedSession


def message(tag: str, body: str = "hello") -> bytes:
    return f"From: a@example.org\r\nSubject: {tag}\r\nMessage-ID: <{tag}@example.org>\r\n\r\n{body}\r\n".encode()


def config(tmp_path: Path, server: ScriptedPop3, **source: object) -> Path:
    return write_config(tmp_path, server, source={"auth": "user", "timeout": "5s", **source},
                        sinks={"archive": {"type": "folder", "path": "./mail", "layout": "maildir"},
                               "db": {"type": "database", "url": "sqlite:///mail.db"}},
                        routes=[{"sinks": ["archive", "db"]}])


def delivered(tmp_path: Path) -> list[bytes]:
    """Every message in the Maildir, sorted; and the database sink must hold the same ones."""
    files = sorted(path.read_bytes() for path in maildir_files(tmp_path / "mail"))
    with sqlite3.connect(tmp_path / "mail.db") as db:
        rows = db.execute("select count(*), count(distinct uidl) from popflow_messages").fetchone()
    assert rows == (len(files), len(files)), "the database sink holds other messages than the Maildir"
    return files


def wire(raw: bytes) -> bytes:
    return Entry(b"", raw).wire


def poll(config_path: Path) -> None:
    app = make_app(config_path)
    try:
        report = app.poll("test")
    finally:
        app.close()
    assert report.error is None, report.line()


def quit_fails(session: ScriptedSession, args: list[bytes]) -> bytes:
    """A QUIT that does not expunge (as when popflow dies before QUIT): the session's DELEs are undone."""
    session.deleted.clear()
    return b"-ERR cannot expunge\r\n"


def test_uidls_reused_after_deletion_are_new_messages(tmp_path: Path) -> None:
    """A server that numbers UIDLs 1, 2, 3 and numbers the next three 1, 2, 3 again."""
    first = [message(f"first-{n}") for n in range(3)]
    second = [message(f"again-{n}") for n in range(3)]  # the same sizes: LIST cannot tell them apart
    assert [len(m) for m in first] == [len(m) for m in second]
    with ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(first, 1)]) as server:
        path = config(tmp_path, server)
        poll(path)
        assert server.remaining() == []
        for n, raw in enumerate(second, 1):
            server.add(Entry(b"%d" % n, raw))
        poll(path)
        assert server.remaining() == []
        retrieved = [c for c in server.commands if c.startswith(b"RETR")]
    assert delivered(tmp_path) == sorted(wire(m) for m in first + second)
    assert len(retrieved) == 6


def test_reused_uidl_while_the_ledger_still_thinks_it_is_on_the_server(tmp_path: Path) -> None:
    """Handled, then QUIT failed (rows stay 'handled'); the mailbox is recreated with new mail under
    the same UIDLs and sizes (Dovecot within one second of its UIDVALIDITY). Headers tell them apart."""
    old = [message(f"old-{n}") for n in range(3)]
    new = [message(f"new-{n}") for n in range(3)]
    with ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(old, 1)],
                      handlers={b"QUIT": quit_fails}) as server:
        path = config(tmp_path, server)
        app = make_app(path)
        report = app.poll("test")
        app.close()
        assert report.counts.delivered == 3 and report.error is not None  # QUIT failed: nothing expunged
        server.handlers.clear()
        server.entries = [Entry(b"%d" % n, raw) for n, raw in enumerate(new, 1)]
        poll(path)
        assert server.remaining() == []
    assert delivered(tmp_path) == sorted(wire(m) for m in old + new)


def test_a_handled_message_still_on_the_server_is_deleted_without_a_second_delivery(tmp_path: Path) -> None:
    messages = [message(f"m-{n}") for n in range(4)]
    with ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(messages, 1)],
                      handlers={b"QUIT": quit_fails}) as server:
        path = config(tmp_path, server)
        app = make_app(path)
        app.poll("test")
        app.close()
        server.handlers.clear()
        server.commands.clear()
        poll(path)
        assert server.remaining() == []
        assert not [c for c in server.commands if c.startswith(b"RETR")]  # confirmed by TOP, not fetched
        assert len([c for c in server.commands if c.startswith(b"TOP")]) == 4
    assert delivered(tmp_path) == sorted(wire(m) for m in messages)


@pytest.mark.parametrize("keep", [False, True], ids=["delete", "keep"])
def test_one_uidl_listed_for_several_messages(tmp_path: Path, keep: bool) -> None:
    """popa3d derives UIDLs from a few headers: several messages, one UIDL, in one listing."""
    shared = [message("same", body=f"body {n}") for n in range(4)]  # same headers, same sizes
    others = [message(f"other-{n}") for n in range(3)]
    entries = [Entry(b"shared-uidl", raw) for raw in shared] + [Entry(b"o%d" % n, raw) for n, raw in enumerate(others)]
    with ScriptedPop3(entries) as server:
        path = config(tmp_path, server, keep_on_server=keep)
        poll(path)
        poll(path)
        assert len(server.remaining()) == (7 if keep else 0)
        assert len([c for c in server.commands if c.startswith(b"RETR")]) == 7
    assert delivered(tmp_path) == sorted(wire(m) for m in shared + others)


def test_duplicate_uidls_survive_a_failed_quit_without_loss_or_duplicates(tmp_path: Path) -> None:
    shared = [message("same", body=f"body {n}") for n in range(3)]
    with ScriptedPop3([Entry(b"x", raw) for raw in shared], handlers={b"QUIT": quit_fails}) as server:
        path = config(tmp_path, server)
        app = make_app(path)
        app.poll("test")
        app.close()
        server.handlers.clear()
        poll(path)  # fetched again (a header match proves nothing here), recognised by content, deleted
        assert server.remaining() == []
    assert delivered(tmp_path) == sorted(wire(m) for m in shared)


def test_a_server_that_does_not_expunge_gets_no_second_delivery(tmp_path: Path) -> None:
    """QUIT answers +OK but the messages stay: listed again, fetched, recognised by content."""
    messages = [message(f"sticky-{n}") for n in range(3)]

    def quit_keeps_everything(session: ScriptedSession, args: list[bytes]) -> bytes:
        session.deleted.clear()
        return b"+OK bye\r\n"

    with ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(messages, 1)],
                      handlers={b"QUIT": quit_keeps_everything}) as server:
        path = config(tmp_path, server)
        poll(path)
        poll(path)
        assert len(server.remaining()) == 3
    assert delivered(tmp_path) == sorted(wire(m) for m in messages)


def test_keep_on_server_messages_that_vanish_for_a_poll_are_not_delivered_again(tmp_path: Path) -> None:
    """A server that lists an empty mailbox once (maintenance, an index rebuild), then all of it again."""
    entries = [Entry(b"%d" % n, message(f"kept-{n}")) for n in range(3)]
    with ScriptedPop3(entries) as server:
        path = config(tmp_path, server, keep_on_server=True)
        poll(path)
        server.entries = []
        poll(path)
        server.entries = list(entries)
        poll(path)
        poll(path)
        assert len([c for c in server.commands if c.startswith(b"RETR")]) == 6  # fetched again once, to compare
    assert delivered(tmp_path) == sorted(wire(e.raw) for e in entries)


def test_a_source_repointed_to_another_mailbox_reads_it_as_new(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    old = [message(f"mailbox-a-{n}") for n in range(2)]
    new = [message(f"mailbox-b-{n}") for n in range(2)]
    with ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(old, 1)],
                      handlers={b"QUIT": quit_fails}) as server_a, \
            ScriptedPop3([Entry(b"%d" % n, raw) for n, raw in enumerate(new, 1)]) as server_b:
        app = make_app(config(tmp_path, server_a))
        app.poll("test")  # handled, but QUIT failed: the ledger holds UIDLs 1 and 2 as still on server A
        app.close()
        with caplog.at_level(logging.WARNING, logger="popflow"):
            poll(config(tmp_path, server_b))  # same source name, another port
        assert server_b.remaining() == []
        assert len([c for c in server_b.commands if c.startswith(b"RETR")]) == 2
    assert f"now reads pop3://u@127.0.0.1:{server_b.port}" in caplog.text
    assert delivered(tmp_path) == sorted(wire(m) for m in old + new)


def test_keep_on_server_mailbox_switch_fetches_the_new_mailbox(tmp_path: Path) -> None:
    with ScriptedPop3([Entry(b"1", message("a"))]) as server_a, ScriptedPop3([Entry(b"1", message("b"))]) as server_b:
        poll(config(tmp_path, server_a, keep_on_server=True))
        poll(config(tmp_path, server_b, keep_on_server=True))
        poll(config(tmp_path, server_b, keep_on_server=True))
    assert delivered(tmp_path) == sorted([wire(message("a")), wire(message("b"))])


def test_a_poll_reads_only_the_rows_of_messages_on_the_server(tmp_path: Path) -> None:
    """The ledger's history (deleted messages) stays out of a poll's reads."""
    with ScriptedPop3([Entry(b"%d" % n, message(f"h-{n}")) for n in range(50)]) as server:
        path = config(tmp_path, server)
        poll(path)
        app = make_app(path)
        try:
            rows = app.state.ledger_for("test")
            assert len(rows) == 50 and {row.state for row in rows.values()} == {"deleted"}
            assert app.state.live_rows("test", app.poller("test").mailbox or "any") == []
            assert "deleted" not in LIVE_STATES
        finally:
            app.close()
