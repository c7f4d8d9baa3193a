"""The POP3 fault matrix: a misbehaving server never makes popflow lose, duplicate or wrongly delete mail.

Each test scripts one fault into popflow's own POP3 server (:class:`popflow.testing.FaultScript`),
polls into a Maildir, and checks, after every poll:

* nothing is in the Maildir twice, and no message was retrieved again once it was handled
  (``server.stats.retrieved``);
* every message gone from the server is in the Maildir (nothing undelivered was deleted);
* the poll report says what happened (not clean, with the reason), and a later poll recovers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from popflow.app import App
from popflow.poller import PollReport
from popflow.testing import FaultAction, FaultScript, POP3TestServer
from tests.support.killing import maildir_ids, message_id
from tests.support.pipeline import make_app, sample_message, write_config

pytestmark = pytest.mark.timeout(60)

COUNT = 6


class Rig:
    """A server with ``COUNT`` messages, a config polling it into ``./mail``, and the checks."""

    def __init__(self, tmp_path: Path, server: POP3TestServer, **source: Any) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.ids = {message_id(raw) for raw in server.messages()}
        self.uidls = server.uidls()
        self.config = write_config(tmp_path, server, source={"timeout": "2s", **source},
                                   extra={"batch_size": 2})

    def poll(self) -> PollReport:
        """One poll in a fresh App (as a new `popflow poll` process would), then the safety checks."""
        app: App = make_app(self.config)
        try:
            report = app.poll("test")
        finally:
            app.close()
        self.server.wait_idle(10)
        self.check()
        return report

    def delivered(self) -> set[str]:
        """Message-IDs in the Maildir."""
        return set(maildir_ids(self.tmp_path / "mail"))

    def check(self) -> None:
        """No duplicate in the sink; nothing gone from the server that is not in the sink."""
        in_maildir = maildir_ids(self.tmp_path / "mail")
        assert max(in_maildir.values(), default=1) == 1, "a message was delivered twice"
        on_server = {message_id(raw) for raw in self.server.messages()}
        assert not (self.ids - on_server) - set(in_maildir), "a message was deleted before it was delivered"

    def retrieved(self, number: int) -> int:
        """How many times message ``number`` (1-based, as first listed) was RETRieved."""
        return self.server.stats.retrieved[self.uidls[number - 1]]

    def assert_all_done(self) -> None:
        """Every message delivered once, the server empty."""
        assert self.server.messages() == []
        assert self.delivered() == self.ids


@pytest.fixture
def mail() -> list[bytes]:
    return [sample_message(i) for i in range(COUNT)]


def serve(mail: list[bytes], faults: FaultScript, **options: Any) -> POP3TestServer:
    return POP3TestServer(mail, faults=faults, **options)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_connection_dropped_mid_retr(tmp_path: Path, mail: list[bytes], reset: bool) -> None:
    # Batches of 2: messages 1-2 are delivered and DELE'd, then message 3 is cut 300 bytes in.
    faults = FaultScript().on("RETR", 3, drop_after_bytes=300, reset=reset).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error and "connection" in first.error.lower()
        assert first.counts.delivered == 2 and first.counts.deleted == 0
        assert len(server.messages()) == COUNT  # no QUIT: the two earned DELEs were not applied
        second = rig.poll()
        assert second.clean, second.line()
        assert second.counts.fetched == COUNT - 2 and second.counts.deleted == COUNT
        rig.assert_all_done()
        assert rig.retrieved(1) == rig.retrieved(2) == 1  # handled ones are deleted, not fetched again


def test_err_on_retr_leaves_that_message_and_delivers_the_others(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("RETR", 3, err="-ERR [SYS/TEMP] cannot read message").once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error is None
        assert first.counts.errors == 1 and first.counts.delivered == COUNT - 1
        assert [message_id(raw) for raw in server.messages()] == [message_id(mail[2])]
        second = rig.poll()
        assert second.clean and second.counts.fetched == 1
        rig.assert_all_done()
        assert max(server.stats.retrieved.values()) == 1


def test_err_on_dele_keeps_the_message_until_a_later_poll_deletes_it(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("DELE", 2, err="-ERR cannot delete now").once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.counts.errors == 1
        assert first.counts.delivered == COUNT and first.counts.deleted == COUNT - 1
        assert [message_id(raw) for raw in server.messages()] == [message_id(mail[1])]
        second = rig.poll()
        assert second.clean and second.counts.fetched == 0 and second.counts.deleted == 1
        rig.assert_all_done()
        assert max(server.stats.retrieved.values()) == 1  # delivered once, deleted later, never refetched


def test_connection_dropped_during_dele(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("DELE", 3, drop=True).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error
        assert len(server.messages()) == COUNT
        second = rig.poll()
        assert second.clean, second.line()
        rig.assert_all_done()
        assert rig.retrieved(3) == rig.retrieved(4) == 1  # handled before the drop: not fetched again


def test_stalling_server_times_out_quickly(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("RETR", 3, stall=3.0).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server, timeout="1s")
        started = time.monotonic()
        first = rig.poll()
        assert time.monotonic() - started < 6  # 1 s timeout (+ the stalled server session ending)
        assert not first.clean and first.error and "tim" in first.error.lower(), first.error
        assert first.counts.seconds < 3
        assert len(server.messages()) == COUNT  # no QUIT, nothing expunged
        second = rig.poll()
        assert second.clean, second.line()
        rig.assert_all_done()
        assert rig.retrieved(1) == rig.retrieved(2) == 1


def test_locked_maildrop_is_reported_clearly(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("LOGIN", in_use=True).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error and "locked" in first.error and "IN-USE" in first.error
        assert first.counts.fetched == 0 and server.stats.retr == 0
        assert rig.poll().clean
        rig.assert_all_done()


def test_server_without_uidl_uses_header_keys(tmp_path: Path, mail: list[bytes],
                                              caplog: pytest.LogCaptureFixture) -> None:
    # QUIT fails the first time, so the second poll must recognise the handled messages by key alone.
    faults = FaultScript().on("QUIT", quit_fails=True).once()
    with serve(mail, faults, uidl=False) as server, caplog.at_level(logging.WARNING):
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert "does not support UIDL" in caplog.text and "hdr-sha256:" in caplog.text
        assert first.counts.delivered == COUNT and not first.clean
        assert len(server.messages()) == COUNT
        second = rig.poll()
        assert second.clean and second.counts.fetched == 0 and second.counts.deleted == COUNT
        rig.assert_all_done()
        assert server.stats.retr == COUNT  # each message retrieved exactly once
    app = make_app(rig.config)
    keys = app.state.ledger_for("test")
    app.close()
    assert len(keys) == COUNT and all(key.startswith("hdr-sha256:") for key in keys)


def test_server_without_uidl_keep_on_server_fetches_once(tmp_path: Path, mail: list[bytes]) -> None:
    with serve(mail, FaultScript(), uidl=False) as server:
        rig = Rig(tmp_path, server, keep_on_server=True)
        assert rig.poll().counts.delivered == COUNT
        again = rig.poll()
        assert again.clean and again.counts.fetched == 0
        assert len(server.messages()) == COUNT and server.stats.retr == COUNT
        assert rig.delivered() == rig.ids


def test_listed_but_not_retrievable(tmp_path: Path, mail: list[bytes]) -> None:
    # Message 4 is listed (LIST, UIDL) in every session, yet RETR always fails, as when another
    # client expunged it in between or the store is damaged.
    broken = {"uidl": "00000004", "on": True}

    def gone(session: Any, command: str, args: list[str]) -> FaultAction | None:
        if broken["on"] and command == "RETR" and args and args[0].isdigit():
            number = int(args[0])
            if 1 <= number <= len(session.messages) and session.messages[number - 1].uidl == broken["uidl"]:
                return FaultAction.error("-ERR Message was expunged by another session")
        return None

    faults = FaultScript(before_command=gone)
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        for _ in range(2):
            report = rig.poll()
            assert not report.clean and report.counts.errors == 1
            assert [message_id(raw) for raw in server.messages()] == [message_id(mail[3])]
        assert rig.delivered() == rig.ids - {message_id(mail[3])}
        assert max(count for uidl, count in server.stats.retrieved.items() if uidl != rig.uidls[3]) == 1
        broken["on"] = False  # the server recovers
        assert rig.poll().clean
        rig.assert_all_done()


def test_quit_failing_applies_no_deletions_and_next_poll_deletes(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("QUIT", quit_fails=True).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error and "QUIT failed" in first.error
        assert first.counts.delivered == COUNT and first.counts.deleted == 0
        assert len(server.messages()) == COUNT
        second = rig.poll()
        assert second.clean and second.counts.fetched == 0 and second.counts.deleted == COUNT
        rig.assert_all_done()
        assert max(server.stats.retrieved.values()) == 1


def test_connection_dropped_at_quit(tmp_path: Path, mail: list[bytes]) -> None:
    faults = FaultScript().on("QUIT", drop=True).once()
    with serve(mail, faults) as server:
        rig = Rig(tmp_path, server)
        first = rig.poll()
        assert not first.clean and first.error and "deletions may not have been applied" in first.error
        assert len(server.messages()) == COUNT
        assert rig.poll().clean
        rig.assert_all_done()
        assert max(server.stats.retrieved.values()) == 1

