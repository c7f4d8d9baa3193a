"""A hostile IMAP server (tests/support/scripted_imap.py, a real socket) cannot hang popflow, make it
buffer without end, or cost a message.

Each poll must end within a few seconds with a clear error, holding at most a few MB (tracemalloc's
peak), and leave every message it did not deliver on the server; a well-behaved poll afterwards
delivers each message exactly once.
"""

from __future__ import annotations

import itertools
import threading
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from popflow_imap.idle import idle_once
from popflow_imap.session import ImapSession

from popflow.errors import ServerMisbehaved
from popflow.poller import PollReport
from tests.support.killing import maildir_ids
from tests.support.pipeline import make_app, sample_message
from tests.support.scripted_imap import ImapConn, ScriptedImap

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 2.0
BOUNDED_SECONDS = 15.0
BOUNDED_BYTES = 16 * 1024 * 1024


def config(tmp_path: Path, server: ScriptedImap, **options: Any) -> Path:
    source = {"type": "imap", "host": "127.0.0.1", "port": server.port, "tls": "none", "allow_insecure": True,
              "username": "u", "password": "p", "timeout": f"{TIMEOUT}s", "idle": False, **options}
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump({
        "state": "sqlite:///state.db", "data_dir": "./data", "sources": {"imap": source},
        "sinks": {"archive": {"type": "folder", "path": "./mail", "layout": "maildir", "backoff": "10ms"}},
        "routes": [{"sinks": ["archive"]}]}))
    return path


def bounded_poll(tmp_path: Path, server: ScriptedImap, **options: Any) -> PollReport:
    """One poll; asserts it ended in bounded time and memory."""
    app = make_app(config(tmp_path, server, **options))
    tracemalloc.start()
    started = time.monotonic()
    try:
        report = app.poll("imap")
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < BOUNDED_SECONDS, f"{elapsed:.1f}s: {report.line()}"
    assert peak < BOUNDED_BYTES, f"peak {peak / 1e6:.1f} MB: {report.line()}"
    return report


def mailbox(count: int = 3) -> dict[int, bytes]:
    return {uid: sample_message(uid) for uid in range(1, count + 1)}


def endless(prefix: bytes, chunk: bytes = b"x" * 65536) -> Iterator[bytes]:
    """``prefix`` and then the same chunk forever (until the client hangs up)."""
    yield prefix
    while True:
        yield chunk


def trickle(data: bytes, pause: float = 0.4) -> Iterator[bytes]:
    for byte in data:
        time.sleep(pause)
        yield bytes([byte])


def stall(data: bytes) -> Iterator[bytes]:
    """``data``, then nothing more (the connection stays open)."""
    yield data
    for _ in range(600):
        time.sleep(0.1)
        yield b""


def once(answer: Any) -> Any:
    """A script entry used by the first session only (the next poll meets a well-behaved server)."""
    used = threading.Event()

    def scripted(conn: ImapConn, tag: bytes, args: bytes) -> Any:
        if used.is_set():
            return None
        used.set()
        return answer(conn, tag, args)

    return scripted


def delivered_once_after(tmp_path: Path, server: ScriptedImap, ids: Iterable[int]) -> None:
    """A well-behaved poll now delivers the rest: each message exactly once, mailbox empty."""
    report = bounded_poll(tmp_path, server)
    assert report.error is None, report.line()
    assert maildir_ids(tmp_path / "mail") == {f"<msg-{i}@example.org>": 1 for i in ids}
    assert server.messages == {}


HOSTILE: dict[str, tuple[str, Any, str]] = {
    "endless greeting line": ("GREETING", lambda c, t, a: endless(b"* OK "), "line too long"),
    "endless listing line": ("FETCH-LIST", lambda c, t, a: endless(b"* 1 FETCH (UID 1 FLAGS ("), "line too long"),
    "endless body line": ("FETCH-BODY", lambda c, t, a: endless(b"* 1 FETCH (UID 1 BODY[] "), "line too long"),
    "terabyte literal in the body": (
        "FETCH-BODY", lambda c, t, a: endless(b"* 1 FETCH (UID 1 BODY[] {999999999999}\r\n"),
        "a message body of 999999999999 bytes announced"),
    "terabyte literal in the listing": (
        "FETCH-LIST", lambda c, t, a: endless(b"* 1 FETCH (UID 1 FLAGS {999999999999}\r\n"),
        "a literal of 999999999999 bytes exceeds"),
    "terabyte literal in the greeting": (
        "GREETING", lambda c, t, a: endless(b"* OK {999999999999}\r\n"), "a literal of 999999999999 bytes"),
    "a body that stalls": (
        "FETCH-BODY", lambda c, t, a: stall(b"* 1 FETCH (UID 1 BODY[] {100000}\r\n" + b"y" * 100), "timed out"),
    "untagged responses without end": (
        "FETCH-LIST", lambda c, t, a: (b"* OK [ALERT] still working\r\n" for _ in itertools.count()),
        "no end to the responses"),
    "EXISTS storm while fetching": (
        "FETCH-BODY", lambda c, t, a: (b"* %d EXISTS\r\n" % n for n in itertools.count(4)),
        "no end to the responses"),
    "a reply trickled a byte at a time": (
        "SELECT", lambda c, t, a: trickle(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n" + t + b" OK done\r\n"),
        "timed out"),
    "absurd UIDVALIDITY": (
        "SELECT", lambda c, t, a: [b"* 3 EXISTS\r\n* OK [UIDVALIDITY 99999999999999999999] x\r\n", t + b" OK x\r\n"],
        "UIDVALIDITY"),
    "zero UIDVALIDITY": (
        "SELECT", lambda c, t, a: [b"* 3 EXISTS\r\n* OK [UIDVALIDITY 0] x\r\n", t + b" OK x\r\n"], "UIDVALIDITY"),
    "absurd EXISTS": (
        "SELECT", lambda c, t, a: [b"* 4294967295 EXISTS\r\n", b"* OK [UIDVALIDITY 7] x\r\n", t + b" OK x\r\n"],
        "claims 4294967295 messages"),
    "endless listing of new UIDs": (
        "FETCH-LIST", lambda c, t, a: (b"* %d FETCH (UID %d RFC822.SIZE 100 FLAGS ())\r\n" % (n, n)
                                       for n in itertools.count(1)), "no end to the responses"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_server_is_bounded_and_loses_nothing(tmp_path: Path, case: str) -> None:
    command, answer, error = HOSTILE[case]
    server = ScriptedImap(mailbox())
    server.script[command] = once(answer)
    with server:
        report = bounded_poll(tmp_path, server)
        assert report.error is not None and error in report.error, report.line()
        assert len(server.messages) == 3  # nothing expunged that was not delivered
        assert not maildir_ids(tmp_path / "mail")
        skipped = case == "terabyte literal in the body"  # the poller leaves that message on the server
        if skipped:
            report = bounded_poll(tmp_path, server)
            assert report.counts.delivered == 2 and len(server.messages) == 1, report.line()
            assert 1 in server.messages  # skipped, with the reason in the ledger; still on the server
        else:
            delivered_once_after(tmp_path, server, range(1, 4))


def test_absurd_uids_are_left_on_the_server_not_used(tmp_path: Path) -> None:
    """UID 0, past 2^32-1, negative, or not a number: never sent back to the server in a command."""
    server = ScriptedImap(mailbox(2))
    server.script["FETCH-LIST"] = once(lambda c, t, a: [
        b"* 1 FETCH (UID 1 RFC822.SIZE %d FLAGS ())\r\n" % len(server.messages[1]),
        b"* 2 FETCH (UID 0 RFC822.SIZE 10 FLAGS ())\r\n",
        b"* 3 FETCH (UID 4294967296 RFC822.SIZE 10 FLAGS ())\r\n",
        b"* 4 FETCH (UID 99999999999999999999999 RFC822.SIZE 10 FLAGS ())\r\n",
        b"* 5 FETCH (UID -3 RFC822.SIZE 10 FLAGS ())\r\n",
        t + b" OK done\r\n"])
    with server:
        report = bounded_poll(tmp_path, server)
        assert report.error is None and report.counts.delivered == 1, report.line()
        sent = b"".join(server.commands)
        assert b"4294967296" not in sent and b"99999999999" not in sent and b"UID FETCH 0" not in sent
        assert list(server.messages) == [2]
        delivered_once_after(tmp_path, server, [1, 2])


def idle_session(tmp_path: Path, server: ScriptedImap) -> ImapSession:
    session = make_app(config(tmp_path, server, idle=True)).source("imap").session()  # type: ignore[attr-defined]
    assert isinstance(session, ImapSession)
    session.open()
    return session


def test_exists_storm_during_idle_wakes_the_poll_a_bounded_number_of_times(tmp_path: Path) -> None:
    server = ScriptedImap(mailbox(1))
    storm = 20_000
    server.script["IDLE"] = lambda c, t, a: [b"+ idling\r\n",
                                             b"".join(b"* %d EXISTS\r\n" % n for n in range(2, storm + 2))]
    wakes: list[float] = []
    with server:
        session = idle_session(tmp_path, server)
        tracemalloc.start()
        try:
            exists = idle_once(session, 1, lambda: wakes.append(time.monotonic()), threading.Event(), renew=5)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            session.close(commit=False)
    assert exists == storm + 1
    assert 1 <= len(wakes) <= 200, f"{len(wakes)} wakes for one burst of {storm} EXISTS"
    assert peak < BOUNDED_BYTES


def test_idle_that_never_completes_after_done_is_dropped(tmp_path: Path) -> None:
    server = ScriptedImap(mailbox(1))
    server.script["IDLE"] = lambda c, t, a: itertools.chain(
        [b"+ idling\r\n"], (b"* OK still here\r\n" for _ in itertools.count()))
    with server:
        session = idle_session(tmp_path, server)
        started = time.monotonic()
        with pytest.raises(ServerMisbehaved, match="no end to the responses after DONE"):
            idle_once(session, 1, lambda: None, threading.Event(), renew=0.5)
        assert time.monotonic() - started < BOUNDED_SECONDS
        session.close(commit=False)


def test_move_without_the_move_capability_copies_then_expunges(tmp_path: Path) -> None:
    """A server without MOVE (RFC 6851): ``UID COPY`` to the folder, then ``\\Deleted`` + ``UID EXPUNGE``."""
    raws = mailbox(2)
    server = ScriptedImap(dict(raws))
    with server:
        report = bounded_poll(tmp_path, server, after="move:Archive")
        assert report.error is None and report.counts.delivered == 2, report.line()
    assert sorted(raw for _, raw in server.copied) == sorted(raws.values())
    assert {target for target, _ in server.copied} == {b'"Archive"'}
    assert server.messages == {}
    sent = b"".join(server.commands)
    assert b"UID MOVE" not in sent and sent.index(b"UID COPY") < sent.index(b"UID EXPUNGE")
