"""Retrieval runs ahead of delivery: the next batch's RETRs are in flight while a batch is written.

Against popflow's own server with a command log (``FaultScript(before_command=...)``): the order
the server saw proves the read-ahead; the Maildir at the moment of each DELE proves the guarantee
did not move (a message is DELE'd only once its batch is committed); cuts and stops while messages
are read ahead lose nothing and duplicate nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from popflow import hookimpl
from popflow.testing import FaultAction, FaultScript, POP3TestServer
from popflow.testing.mailbox import to_wire
from tests.support.killing import maildir_ids, message_id
from tests.support.pipeline import maildir_files, make_app, sample_message, write_config

pytestmark = pytest.mark.timeout(60)

TOTAL = 30
BATCH = 10


class CommandLog:
    """Records every command the server runs, in order, with what the Maildir held at each DELE."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.commands: list[str] = []
        self.committed: list[int] = []
        """Messages in the Maildir's new/ as each command arrived."""
        self.committed_at_dele: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, session: Any, command: str, args: list[str]) -> FaultAction | None:
        with self.lock:
            self.commands.append(" ".join([command.upper(), *args[:1]]))
            self.committed.append(len(list((self.maildir / "new").glob("*"))))
            if command.upper() == "DELE":
                self.committed_at_dele.append(self.committed[-1])
        return None


def _poll(config: Path, **kwargs: Any) -> Any:
    app = make_app(config, **kwargs)
    try:
        return app.poll("test")
    finally:
        app.close()


def test_the_next_batch_is_retrieved_before_this_one_is_deleted(tmp_path: Path) -> None:
    log = CommandLog(tmp_path / "mail")
    mail = [sample_message(i) for i in range(TOTAL)]
    with POP3TestServer(mail, faults=FaultScript(before_command=log)) as server:
        report = _poll(write_config(tmp_path, server, extra={"batch_size": BATCH}))
        assert report.clean, report.error
        assert server.messages() == []
        assert max(server.stats.retrieved.values()) == 1
    # Lock-step batches sent DELE 1 before RETR 11; read-ahead has RETR 11 on the wire first.
    assert log.commands.index("RETR 11") < log.commands.index("DELE 1")
    assert log.commands.index("RETR 21") < log.commands.index("DELE 11")
    assert sorted(p.read_bytes() for p in maildir_files(tmp_path / "mail")) == sorted(map(to_wire, mail))


def test_a_message_is_deleted_only_after_its_batch_is_committed(tmp_path: Path) -> None:
    log = CommandLog(tmp_path / "mail")
    with POP3TestServer([sample_message(i) for i in range(TOTAL)], faults=FaultScript(before_command=log)) as server:
        assert _poll(write_config(tmp_path, server, extra={"batch_size": BATCH})).clean
    deles = [int(command.split()[1]) for command in log.commands if command.startswith("DELE")]
    assert deles == list(range(1, TOTAL + 1))
    for number, committed in zip(deles, log.committed_at_dele, strict=True):
        assert committed >= number, f"DELE {number} went out with only {committed} messages in new/"


def test_a_cut_during_read_ahead_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """The connection dies inside a read-ahead RETR (message 15), with the first batch's DELEs behind it."""
    mail = [sample_message(i) for i in range(TOTAL)]
    ids = {message_id(raw) for raw in mail}
    faults = FaultScript().on("RETR", 15, drop_after_bytes=200).once()
    with POP3TestServer(mail, faults=faults) as server:
        config = write_config(tmp_path, server, extra={"batch_size": BATCH})
        first = _poll(config)
        assert first.error is not None
        # The first batch is delivered and recorded, and so are the read-ahead messages that
        # arrived whole before the cut (11-14); the first batch's DELEs, queued behind the cut
        # RETRs, never applied: no QUIT, nothing expunged.
        assert first.counts.delivered == 14
        assert len(server.messages()) == TOTAL
        second = _poll(config)
        assert second.clean, second.error
        assert second.counts.delivered == TOTAL - 14
        assert second.counts.fetched == TOTAL - 14  # the handled ones are confirmed by TOP, not fetched again
        assert server.messages() == []
    delivered = maildir_ids(tmp_path / "mail")
    assert set(delivered) == ids
    assert max(delivered.values()) == 1


class StopAt:
    """A transform that requests a stop when it sees message ``number`` (0-based subject number)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.stop: threading.Event | None = None

    @hookimpl
    def popflow_transform(self, message: Any) -> None:
        if (message.subject or "").endswith(f"number {self.number}") and self.stop is not None:
            self.stop.set()


@pytest.mark.parametrize("stop_at", [2, BATCH - 1], ids=["mid-batch", "end-of-batch"])
def test_a_stop_under_expire_0_keeps_what_was_read_ahead(tmp_path: Path, stop_at: int) -> None:
    """EXPIRE 0: QUIT expunges every retrieved message, also one read ahead and never delivered."""
    mail = [sample_message(i) for i in range(TOTAL)]
    ids = {message_id(raw) for raw in mail}
    stopper = StopAt(stop_at)
    with POP3TestServer(mail, expire="0") as server:
        config = write_config(tmp_path, server, extra={"batch_size": BATCH})
        app = make_app(config, extra_plugins=[stopper])
        try:
            poller = app.poller("test")
            stopper.stop = poller.stop
            first = poller.poll()
        finally:
            app.close()
        assert first.stopped
        delivered = set(maildir_ids(tmp_path / "mail"))
        on_server = {message_id(raw) for raw in server.messages()}
        assert delivered | on_server == ids, "a message read ahead was expunged without being delivered"
        second = _poll(config)
        assert second.clean, second.error
        assert server.messages() == []
    final = maildir_ids(tmp_path / "mail")
    assert set(final) == ids
    assert max(final.values()) == 1


def test_a_dele_refused_behind_the_read_ahead_is_not_counted_deleted(tmp_path: Path) -> None:
    """DELEs queued behind read-ahead RETRs are settled later; a refused one stays live in the ledger."""
    mail = [sample_message(i) for i in range(TOTAL)]
    faults = FaultScript().on("DELE", 5, err="not now").once()
    with POP3TestServer(mail, faults=faults) as server:
        config = write_config(tmp_path, server, extra={"batch_size": BATCH})
        first = _poll(config)
        assert first.error is None
        assert (first.counts.delivered, first.counts.deleted, first.counts.errors) == (TOTAL, TOTAL - 1, 1)
        assert [message_id(raw) for raw in server.messages()] == [message_id(mail[4])]
        second = _poll(config)  # handled, still on the server: confirmed by TOP and deleted, not delivered again
        assert second.clean, second.error
        assert (second.counts.fetched, second.counts.delivered, second.counts.deleted) == (0, 0, 1)
        assert server.messages() == []
    delivered = maildir_ids(tmp_path / "mail")
    assert len(delivered) == TOTAL
    assert max(delivered.values()) == 1


def test_deletes_do_not_wait_for_their_replies_while_retrievals_run_ahead(tmp_path: Path) -> None:
    """The DELEs of a batch go out and the next batch is processed before their replies are read.

    The server stalls 1.5 s on the first batch's last DELE. A poll that waits for DELE replies
    sends its next command only after that (lock-step batches: RETR 11, with 10 messages in the
    Maildir); here the next batch was read ahead, so it is written and committed during the stall
    and the command after DELE 10 finds 20 messages in the Maildir.
    """
    log = CommandLog(tmp_path / "mail")
    faults = FaultScript(before_command=log).on("DELE", BATCH, stall=1.5).once()
    with POP3TestServer([sample_message(i) for i in range(TOTAL)], faults=faults) as server:
        assert _poll(write_config(tmp_path, server, extra={"batch_size": BATCH})).clean
        assert server.messages() == []
    after_stall = log.commands.index(f"DELE {BATCH}") + 1
    assert log.committed[after_stall] >= 2 * BATCH, (log.commands[after_stall], log.committed[after_stall])
