"""The deliverer on its own: real folder sinks in tmp_path, a real SQLite state store, no POP3 server.

What a poll relies on: every routed sink gets a message once, a sink the ledger lists is not
written again, a sink that gives up dead-letters the message (raw bytes kept) and is down for the
rest of the batch, and the ledger records handled messages with their sinks in one step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from popflow import Message, Sink, hookimpl
from popflow.app import App
from popflow.config import load_config
from popflow.logs import JsonFormatter
from popflow.outcome import Delivery
from popflow.raw import RawMessage
from popflow.sources.base import Listing
from tests.support.pipeline import maildir_files, sample_message

SOURCE = "box"


def make_app(tmp_path: Path, sinks: dict[str, Any], routes: list[Any]) -> App:
    """An app with only sinks and routes (a deliverer needs no source)."""
    config = {"state": "sqlite:///state.db", "data_dir": "./data", "sinks": sinks, "routes": routes}
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    app = App(load_config(path))
    app.prepare_data_dir()
    return app


@pytest.fixture
def two_folders(tmp_path: Path) -> Iterator[App]:
    app = make_app(tmp_path, {"a": {"type": "folder", "path": "./a"}, "b": {"type": "folder", "path": "./b"}},
                   [{"sinks": ["a", "b"]}])
    yield app
    app.close()


def delivery(app: App, index: int) -> Delivery:
    """Message ``index`` through the app's pipeline, as a poll would make it."""
    prepared = app.pipeline().prepare(RawMessage.from_bytes(sample_message(index)), SOURCE, f"u{index}")
    assert isinstance(prepared, Delivery), prepared
    return prepared


def deliver(app: App, deliveries: list[Delivery]) -> list[Any]:
    deliverer = app.deliverer()
    try:
        return deliverer.deliver(deliveries)
    finally:
        deliverer.close()


def test_every_routed_sink_gets_each_message_once(two_folders: App, tmp_path: Path) -> None:
    outcomes = deliver(two_folders, [delivery(two_folders, i) for i in range(3)])
    assert [outcome.kind for outcome in outcomes] == ["delivered"] * 3
    assert [outcome.delivered for outcome in outcomes] == [["a", "b"]] * 3
    expected = sorted(sample_message(i) for i in range(3))
    assert sorted(path.read_bytes() for path in maildir_files(tmp_path / "a")) == expected
    assert sorted(path.read_bytes() for path in maildir_files(tmp_path / "b")) == expected


def test_a_sink_the_ledger_lists_is_not_written_again(two_folders: App, tmp_path: Path) -> None:
    # An earlier poll committed u1 to "a" and died before DELE: the ledger says so.
    two_folders.state.record_deliveries([(SOURCE, "u1", "a")])
    (outcome,) = deliver(two_folders, [delivery(two_folders, 1)])
    assert outcome.kind == "delivered"
    assert sorted(outcome.delivered) == ["a", "b"]
    assert maildir_files(tmp_path / "a") == []  # not written: a webhook would have repeated
    assert len(maildir_files(tmp_path / "b")) == 1


def test_record_writes_handled_messages_with_their_sinks(two_folders: App) -> None:
    deliveries = [delivery(two_folders, i) for i in range(2)]
    deliverer = two_folders.deliverer()
    try:
        outcomes = deliverer.deliver(deliveries)
        listings = [Listing(i + 1, f"u{i}", 100 + i, server_uidl=f"server-{i}") for i in range(2)]
        deliverer.record(SOURCE, list(zip(listings, outcomes, strict=True)), mailbox="m1",
                         heads={"u0": "head-0"})
    finally:
        deliverer.close()
    ledger = {row.uidl: row for row in two_folders.state.live_rows(SOURCE, "m1")}
    assert ledger["u0"].state == "handled"
    assert ledger["u0"].outcome == "delivered"
    assert ledger["u0"].size == 100
    assert ledger["u0"].server_uidl == "server-0"
    assert ledger["u0"].mailbox == "m1"
    assert ledger["u0"].header_sha256 == "head-0"
    assert ledger["u0"].sha256 == deliveries[0].raw.sha256
    assert ledger["u1"].state == "handled"
    assert ledger["u1"].header_sha256 is None
    assert two_folders.state.deliveries_pending(SOURCE, ["u0"]).get("u0") == {"a", "b"}
    assert two_folders.state.deliveries_pending(SOURCE, ["u1"]).get("u1") == {"a", "b"}


@pytest.fixture
def one_broken(tmp_path: Path) -> Iterator[App]:
    """Sink ``good`` works; sink ``bad`` is a folder whose path is a regular file (cannot be created)."""
    (tmp_path / "blocker").write_text("not a folder")
    app = make_app(tmp_path, {"good": {"type": "folder", "path": "./good"},
                              "bad": {"type": "folder", "path": "./blocker/mail", "retries": 1, "backoff": "1ms"}},
                   [{"sinks": ["good", "bad"]}])
    yield app
    app.close()


def test_a_sink_that_gives_up_dead_letters_one_message_and_defers_the_rest(one_broken: App, tmp_path: Path) -> None:
    first, second = delivery(one_broken, 1), delivery(one_broken, 2)
    outcomes = deliver(one_broken, [first, second])
    # The first message: two attempts (retries: 1) on "bad", then a dead letter for that sink only.
    assert outcomes[0].kind == "delivered"
    assert outcomes[0].delivered == ["good"]
    assert outcomes[0].dead_lettered == ["bad"]
    # "bad" is down for the rest of the batch: the second message waits on the server for it.
    assert outcomes[1].kind == "deferred"
    assert outcomes[1].delivered == ["good"]
    assert "bad" in outcomes[1].reason
    assert len(maildir_files(tmp_path / "good")) == 2
    (dead,) = one_broken.state.dead_letters()
    assert dead["uidl"] == "u1"
    assert dead["sink"] == "bad"
    assert dead["stage"] == "deliver:bad"
    assert dead["attempts"] == 2
    assert "Not a directory" in dead["error"]
    assert one_broken.store.read(dead["sha256"]) == sample_message(1)  # the raw bytes are kept


def test_a_deferred_message_stays_unhandled_but_its_sinks_are_remembered(one_broken: App) -> None:
    deliverer = one_broken.deliverer()
    try:
        outcomes = deliverer.deliver([delivery(one_broken, 1), delivery(one_broken, 2)])
        listings = [Listing(1, "u1", 10), Listing(2, "u2", 10)]
        deliverer.record(SOURCE, list(zip(listings, outcomes, strict=True)), mailbox="m1", heads={})
    finally:
        deliverer.close()
    ledger = one_broken.state.ledger_for(SOURCE)
    assert ledger["u1"].state == "handled"
    assert "u2" not in ledger  # deferred: the next poll fetches it again
    # ... and does not write it to "good" a second time.
    assert one_broken.state.deliveries_pending(SOURCE, ["u2"]) == {"u2": {"good"}}


def test_stopping_during_a_backoff_defers_instead_of_waiting(one_broken: App) -> None:
    deliverer = one_broken.deliverer()
    deliverer.stop.set()  # e.g. SIGTERM while the sink is being retried
    try:
        (outcome,) = deliverer.deliver([delivery(one_broken, 1)])
    finally:
        deliverer.close()
    assert outcome.kind == "deferred"
    assert "stopped while retrying" in outcome.reason
    assert one_broken.state.dead_letters() == []


def test_record_deliveries_keeps_the_ledger_row(two_folders: App) -> None:
    """What a replay does: the sinks are remembered; the message's ledger row stays as it was."""
    item = delivery(two_folders, 1)
    deliverer = two_folders.deliverer()
    try:
        deliverer.deliver([item])
        deliverer.record_deliveries([item])
    finally:
        deliverer.close()
    assert two_folders.state.deliveries_pending(SOURCE, ["u1"]).get("u1") == {"a", "b"}
    assert two_folders.state.ledger_for(SOURCE) == {}


class ChattySink(Sink):
    """Logs while it writes and commits, as a real sink's driver or plugin code may."""

    def write(self, message: Message) -> None:
        logging.getLogger("tests.chatty").info("writing %s", message.uidl)

    def commit(self) -> None:
        logging.getLogger("tests.chatty").info("committing")


class ChattyPlugin:
    @hookimpl
    def popflow_register_sinks(self, register: Any) -> None:
        register("chatty", ChattySink)


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, in the logging thread, as popflow's own handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_what_a_sink_logs_on_the_fast_path_names_the_sink(tmp_path: Path) -> None:
    config = {"state": "sqlite:///state.db", "data_dir": "./data", "sinks": {"talk": {"type": "chatty"}},
              "routes": [{"sinks": ["talk"]}]}
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    app = App(load_config(path), extra_plugins=[ChattyPlugin()])
    handler = JsonLines()
    logger = logging.getLogger("tests.chatty")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        app.prepare_data_dir()
        (outcome,) = deliver(app, [delivery(app, 0)])
    finally:
        logger.removeHandler(handler)
        app.close()
    assert outcome.kind == "delivered"
    assert [line["message"] for line in handler.lines] == ["writing u0", "committing"]
    assert [line.get("sink") for line in handler.lines] == ["talk", "talk"]
    assert handler.lines[0].get("uidl") == "u0"
