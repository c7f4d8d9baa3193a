"""A hostile or broken POP3 server costs bounded time, memory and disk, a clear error, and no message.

Every test runs real polls against a raw-socket server (tests/support/scripted_pop3.py) scripted to
misbehave: replies that never end, a RETR that streams far past its announced size, a server that
trickles a byte at a time, listings with impossible sizes, NUL bytes and overlong UIDLs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from popflow.testing.mailbox import to_wire as wire_form
from tests.support.pipeline import maildir_files, make_app, write_config
from tests.support.scripted_pop3 import Entry, ScriptedPop3, ScriptedSession

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024
SOCKET_SLACK = 32 * MB
"""What the server may push into loopback socket buffers (autotuned, several MB each way) beyond what popflow read."""


def message(tag: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {tag}\r\nMessage-ID: <{tag}@example.org>\r\n\r\nbody of {tag}\r\n".encode()


class Endless:
    """A reply that never ends: ``first`` then ``line`` forever; counts what it managed to send."""

    def __init__(self, first: bytes, line: bytes) -> None:
        self.first, self.line, self.sent = first, line, 0

    def __call__(self, session: ScriptedSession, args: list[bytes]) -> Iterator[bytes]:
        chunk = self.line * max(1, 65536 // len(self.line))
        self.sent += len(self.first)
        yield self.first
        while True:
            self.sent += len(chunk)
            yield chunk


def config(tmp_path: Path, server: ScriptedPop3, state: str = "sqlite:///state.db", **source: object) -> Path:
    return write_config(tmp_path, server, source={"auth": "user", "timeout": "2s", **source},
                        extra={"state": state})


def poll(path: Path) -> tuple[str | None, int, int]:
    """One poll: (error, delivered, skipped)."""
    app = make_app(path)
    try:
        report = app.poll("test")
    finally:
        app.close()
    return report.error, report.counts.delivered, report.counts.skipped


def in_maildir(tmp_path: Path) -> list[bytes]:
    return sorted(path.read_bytes() for path in maildir_files(tmp_path / "mail"))


@pytest.mark.parametrize("command", [b"LIST", b"UIDL", b"CAPA"])
def test_a_listing_that_never_ends_is_cut_off(tmp_path: Path, command: bytes) -> None:
    endless = Endless(b"+OK\r\n", b"7 xxxxxxxxxxxxxxxxxxxxxxxx\r\n")
    with ScriptedPop3([Entry(b"1", message("a"))], handlers={command: endless}) as server:
        started = time.monotonic()
        error, _delivered, _ = poll(config(tmp_path, server))
        elapsed = time.monotonic() - started
        assert len(server.remaining()) == 1
    assert error is not None, error
    assert "went on past" in error, error
    assert elapsed < 20
    assert endless.sent < 64 * 1024 + SOCKET_SLACK  # CAPA: 64 KB; LIST/UIDL of one message: 72 KB


def test_an_endless_top_is_cut_off(tmp_path: Path) -> None:
    """A server without UIDL: popflow keys messages by TOP n 0, which here never ends."""
    endless = Endless(b"+OK\r\n", b"X-Junk: " + b"y" * 100 + b"\r\n")
    with ScriptedPop3([Entry(b"1", message("a"))], capabilities=[b"TOP", b"USER"],
                      handlers={b"UIDL": lambda session, args: b"-ERR no UIDL\r\n", b"TOP": endless}) as server:
        error, _delivered, _ = poll(config(tmp_path, server))
        assert len(server.remaining()) == 1
    assert error is not None, error
    assert "TOP 1 0 went on past" in error, error
    assert endless.sent < 4 * MB + SOCKET_SLACK  # TOP replies are capped at 4 MB


def test_a_retr_streaming_past_its_size_is_cut_off_and_skipped_from_then_on(tmp_path: Path) -> None:
    good = [message("first"), message("third")]
    runaway = Endless(b"+OK\r\n", b"z" * 998 + b"\r\n")
    entries = [Entry(b"1", good[0]), Entry(b"2", message("second")), Entry(b"3", good[1])]
    with ScriptedPop3(entries) as server:
        server.handlers[b"RETR"] = lambda session, args: runaway(session, args) if args == [b"2"] else None
        path = config(tmp_path, server, pipelining=False)
        error, delivered, _ = poll(path)
        assert error is not None, error
        assert "RETR 2" in error, error
        assert "went on past" in error, error
        assert delivered == 1  # the message retrieved before the runaway one is delivered
        assert runaway.sent < 1 * MB + SOCKET_SLACK  # 2 x the listed size + 1 MB, then the connection drops
        assert list((tmp_path / "data").rglob("spool-*")) == []  # the partial spool file is gone
        error, delivered, skipped = poll(path)
        assert error is None
        assert delivered == 1
        assert skipped == 1
        error, delivered, skipped = poll(path)
        assert error is None
        assert delivered == 0
        assert skipped == 1
        assert [entry.raw for entry in server.remaining()] == [message("second")]  # left on the server
    assert in_maildir(tmp_path) == sorted(wire_form(m) for m in good)
    app = make_app(path)
    try:
        row = app.state.ledger_for("test")["2"]
    finally:
        app.close()
    assert row.state == "skipped"


def test_a_trickling_retr_hits_its_deadline(tmp_path: Path) -> None:
    """One byte every 0.3 s never trips a 2 s idle timeout; the reply's deadline (2 s + size / 64 KB/s) does."""
    def trickle(session: ScriptedSession, args: list[bytes]) -> Iterator[bytes]:
        data = session.body(session.entries[0].wire)
        for index in range(len(data)):
            time.sleep(0.3)
            yield data[index:index + 1]

    with ScriptedPop3([Entry(b"1", message("slow"))], handlers={b"RETR": trickle}) as server:
        started = time.monotonic()
        error, _delivered, _ = poll(config(tmp_path, server))
        elapsed = time.monotonic() - started
        assert len(server.remaining()) == 1
    assert error is not None, error
    assert "timed out after" in error, error
    assert "RETR 1" in error, error
    assert elapsed < 15


def test_sigterm_ends_a_poll_stuck_on_a_trickling_server(tmp_path: Path) -> None:
    def trickle(session: ScriptedSession, args: list[bytes]) -> Iterator[bytes]:
        yield b"+OK\r\n"
        while True:
            time.sleep(1.0)
            yield b"x"

    with ScriptedPop3([Entry(b"1", message("a")), Entry(b"2", message("b"))], handlers={b"RETR": trickle}) as server:
        path = config(tmp_path, server, timeout="30s")
        process = subprocess.Popen([sys.executable, "-m", "popflow", "poll", "-c", str(path)], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 20
        while not any(c.startswith(b"RETR") for c in server.commands):
            assert time.monotonic() < deadline, "the poll never sent RETR"
            assert process.poll() is None, "the poll never sent RETR"
            time.sleep(0.05)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = process.communicate(timeout=30)
        waited = time.monotonic() - signalled
        assert len(server.remaining()) == 2  # nothing deleted that was not delivered
    assert waited < 10, output.decode(errors="replace")
    assert b"stop requested" in output, output.decode(errors="replace")
    assert b"Traceback" not in output


def test_bad_listing_entries_cost_only_themselves(tmp_path: Path, store_url: str) -> None:
    long_uidl = b"L" * 300
    entries = [Entry(b"1", message("plain")),
               Entry(b"2", message("huge-size"), listed_size=b"99999999999999999999"),
               Entry(b"ab\x00cd\x1b[31m", message("nul-uidl")),
               Entry(long_uidl, message("long-uidl")),
               Entry(b"5", message("negative"), listed_size=b"-5"),
               Entry(b"\xe4\xbd\xa0", message("utf8-1")),
               Entry(b"\xe4\xbd\xa1", message("utf8-2"))]
    flowing = [message(t) for t in ("plain", "nul-uidl", "long-uidl", "utf8-1", "utf8-2")]
    with ScriptedPop3(entries) as server:
        path = config(tmp_path, server, state=store_url)
        error, delivered, skipped = poll(path)
        assert error is None
        assert delivered == 5
        assert skipped == 2
        error, delivered, skipped = poll(path)
        assert error is None
        assert delivered == 0
        assert skipped == 2
        assert sorted(entry.raw for entry in server.remaining()) == sorted([message("huge-size"), message("negative")])
    assert in_maildir(tmp_path) == sorted(wire_form(m) for m in flowing)
    app = make_app(path)
    try:
        keys = set(app.state.ledger_for("test"))
    finally:
        app.close()
    assert {"ab\\x00cd\\x1b[31m", "\\xe4\\xbd\\xa0", "\\xe4\\xbd\\xa1"} <= keys  # exact and printable
    assert any(key.startswith("L" * 96 + "..sha256:") for key in keys)
