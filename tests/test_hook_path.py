"""Stage hooks go through pluggy: wrappers, tryfirst/trylast and tracing work on the poll path."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path

import pytest

from popflow import hookimpl
from popflow.holding import Holding
from popflow.hookcall import PluginHookError
from popflow.message import Message
from popflow.outcome import Delivery, Outcome
from popflow.pipeline import Pipeline
from popflow.plugins import make_plugin_manager
from popflow.raw import RawMessage
from popflow.raw_store import MessageStore
from popflow.state import StateStore

MAIL = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody\r\n"


class RouteAll:
    @hookimpl
    def popflow_route(self, message: Message) -> list[str]:
        return ["archive"]


class Wrapper:
    """A new-style wrapper around popflow_transform, as a plugin author writes one."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def popflow_transform(self, message: Message) -> Generator[None, None, None]:
        self.seen.append("before")
        try:
            yield
        except PluginHookError as exc:
            self.seen.append(f"caught {exc.plugin}")
            raise
        self.seen.append("after")
        message.tags.add("wrapped")


class Order:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(trylast=True)
    def popflow_transform(self, message: Message) -> None:
        self.log.append("last")


class First:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(tryfirst=True)
    def popflow_transform(self, message: Message) -> None:
        self.log.append("first")


class Broken:
    @hookimpl
    def popflow_transform(self, message: Message) -> None:
        raise KeyError("boom")


def prepare(tmp_path: Path, *plugins: object) -> Delivery | Outcome:
    pm = make_plugin_manager(extra_plugins=[RouteAll(), *plugins], load_entry_points=False)
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        pipeline = Pipeline(pm, Holding(state, MessageStore(tmp_path / "messages")), {"archive"})
        return pipeline.prepare(RawMessage.from_bytes(MAIL), "box", "u1")
    finally:
        state.close()


def test_wrapper_around_transform_runs_on_the_poll_path(tmp_path: Path) -> None:
    wrapper = Wrapper()
    routed = prepare(tmp_path, wrapper)
    assert isinstance(routed, Delivery)
    assert wrapper.seen == ["before", "after"]
    assert "wrapped" in routed.message.tags


def test_tryfirst_and_trylast_order_a_stage(tmp_path: Path) -> None:
    log: list[str] = []
    # Registered so that pluggy's last-registered-first rule alone would give the other order.
    prepare(tmp_path, First(log), Order(log))
    assert log == ["first", "last"]


def test_a_failing_plugin_is_named_and_a_wrapper_sees_it(tmp_path: Path) -> None:
    wrapper = Wrapper()
    outcome = prepare(tmp_path, Broken(), wrapper)
    assert isinstance(outcome, Outcome)
    assert outcome.kind == "dead_letter"
    assert "extra-1-Broken" in outcome.reason
    assert wrapper.seen == ["before", "caught extra-1-Broken"]


def test_tracing_logs_the_stage_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("POPFLOW_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.DEBUG, logger="popflow.plugins"):
        prepare(tmp_path)
    traced = " ".join(record.getMessage() for record in caplog.records)
    for hook in ("popflow_parse", "popflow_scan", "popflow_filter", "popflow_transform", "popflow_route"):
        assert hook in traced
