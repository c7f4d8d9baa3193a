"""End-to-end polls against popflow's own POP3 server: delivery, ledger, keep_on_server, rules, failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from popflow.errors import RetryableError
from popflow.outcome import PollCounts
from popflow.testing import POP3TestServer
from tests.support.pipeline import maildir_files, make_app, sample_message, write_config


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer([sample_message(i) for i in range(20)]) as srv:
        yield srv


def test_poll_delivers_everything_and_empties_server(tmp_path: Path, server: POP3TestServer) -> None:
    originals = server.messages()
    app = make_app(write_config(tmp_path, server))
    report = app.poll("test")
    app.close()
    assert report.clean, report.line()
    assert report.counts.fetched == 20
    assert report.counts.delivered == 20
    assert report.counts.deleted == 20
    assert server.messages() == []
    delivered = sorted(path.read_bytes() for path in maildir_files(tmp_path / "mail"))
    assert delivered == sorted(originals)  # byte-identical, leading dots included
    assert max(server.stats.retrieved.values()) == 1


def test_keep_on_server_fetches_each_message_once(tmp_path: Path, server: POP3TestServer) -> None:
    config = write_config(tmp_path, server, source={"keep_on_server": True})
    app = make_app(config)
    assert app.poll("test").counts.delivered == 20
    assert app.poll("test").counts.fetched == 0
    app.close()
    restarted = make_app(config)  # a new process: the ledger in state.db remembers
    server.add(sample_message(99))
    report = restarted.poll("test")
    restarted.close()
    assert report.counts.fetched == 1
    assert len(server.messages()) == 21
    assert set(server.stats.retrieved.values()) == {1}
    assert len(maildir_files(tmp_path / "mail")) == 21


def test_delete_after_removes_old_messages(tmp_path: Path, server: POP3TestServer) -> None:
    config = write_config(tmp_path, server, source={"keep_on_server": True, "delete_after": "0s"})
    app = make_app(config)
    app.poll("test")
    assert len(server.messages()) == 20
    report = app.poll("test")
    app.close()
    assert report.counts.fetched == 0
    assert report.counts.deleted == 20
    assert server.messages() == []


def test_max_size_skips_and_leaves_on_server(tmp_path: Path) -> None:
    big = sample_message(1, attachment=b"x" * 200_000)
    with POP3TestServer([sample_message(0), big]) as server:
        app = make_app(write_config(tmp_path, server, source={"max_size": "100KB"}))
        report = app.poll("test")
        assert report.clean
        assert report.counts.skipped == 1
        assert report.counts.delivered == 1
        assert server.messages() == [big]
        assert app.state.ledger_for("test")[server.uidls()[0]].state == "skipped"
        again = app.poll("test")  # still skipped and counted, never fetched
        app.close()
        assert again.counts.skipped == 1
        assert again.counts.fetched == 0
        assert server.messages() == [big]
        assert server.stats.retr == 1


def test_max_messages_limits_one_poll(tmp_path: Path, server: POP3TestServer) -> None:
    app = make_app(write_config(tmp_path, server, source={"max_messages": 5}))
    assert app.poll("test").counts.fetched == 5
    app.close()
    assert len(server.messages()) == 15


def test_filters_drop_and_routes_split(tmp_path: Path) -> None:
    mail = [sample_message(1, sender="news@newsletter.example.com"),
            sample_message(2, to="orders@shop.example", subject="Order #42 confirmed"),
            sample_message(3)]
    with POP3TestServer(mail) as server:
        config = write_config(
            tmp_path, server,
            sinks={"orders_db": {"type": "database", "url": "sqlite:///orders.db"},
                   "archive": {"type": "folder", "path": "./mail"}},
            filters=[{"drop": {"from": "*@newsletter.example.com"}}],
            routes=[{"match": {"to": "orders@*", "subject": "(?i)order #\\d+"}, "sinks": ["orders_db"], "stop": True},
                    {"sinks": ["archive"]}])
        app = make_app(config)
        report = app.poll("test")
        app.close()
        assert report.counts.dropped == 1
        assert report.counts.delivered == 2
        assert server.messages() == []
    rows = sqlite3.connect(tmp_path / "orders.db").execute("select subject from popflow_messages").fetchall()
    assert rows == [("Order #42 confirmed",)]
    assert len(maildir_files(tmp_path / "mail")) == 1


def test_a_message_no_route_matches_counts_as_no_route_not_delivered(tmp_path: Path) -> None:
    mail = [sample_message(1, to="orders@shop.example"), sample_message(2)]
    with POP3TestServer(mail) as server:
        config = write_config(tmp_path, server, routes=[{"match": {"to": "orders@*"}, "sinks": ["archive"]}])
        app = make_app(config)
        report = app.poll("test")
        app.close()
        assert server.messages() == []  # handled: a message no route matches leaves the server too
    assert report.counts.delivered == 1
    assert report.counts.no_route == 1
    assert " delivered=1 no_route=1 " in report.line()
    assert len(maildir_files(tmp_path / "mail")) == 1


def test_plain_file_plugin_sets_meta(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "order_number.py").write_text(
        "import re\nfrom popflow import hookimpl\n\n@hookimpl\ndef popflow_transform(message):\n"
        "    if found := re.search(r'order #(\\d+)', message.subject or '', re.I):\n"
        "        message.meta['order_number'] = found.group(1)\n        message.tags.add('order')\n")
    with POP3TestServer([sample_message(1, subject="Re: Order #777")]) as server:
        config = write_config(tmp_path, server, sinks={"db": {"type": "database", "url": "sqlite:///m.db"}},
                              routes=[{"sinks": ["db"]}], extra={"plugins_dir": "./plugins"})
        app = make_app(config)
        assert app.poll("test").clean
        app.close()
    meta, tags = sqlite3.connect(tmp_path / "m.db").execute("select meta, tags from popflow_messages").fetchone()
    assert '"order_number": "777"' in meta.replace(" ", "").replace('":"', '": "')
    assert "order" in tags


def test_handled_but_not_quit_is_deleted_without_redelivery(tmp_path: Path, server: POP3TestServer) -> None:
    """A crash after the ledger commit but before QUIT: the next poll DELEs without delivering again."""
    app = make_app(write_config(tmp_path, server))
    poller = app.poller("test")
    session = poller.source.connect()
    plan, _confirmed = poller.plan(session, session.list_messages())
    counts = PollCounts()
    poller._run_batch(session, session.retrieve_many(plan.fetch), counts)
    session.close(commit=False)  # the connection dies: no QUIT, nothing expunged
    assert counts.delivered == 20
    assert len(server.messages()) == 20
    report = app.poll("test")
    app.close()
    assert report.counts.fetched == 0
    assert report.counts.deleted == 20
    assert server.messages() == []
    assert len(maildir_files(tmp_path / "mail")) == 20
    assert max(server.stats.retrieved.values()) == 1


class FlakySink:
    """A plugin adding a sink type that fails the first ``failures`` writes."""

    failures = 0
    writes = 0

    def __init__(self) -> None:
        from popflow.sinks.base import Sink

        outer = self

        class Flaky(Sink):
            def write(self, message):  # type: ignore[no-untyped-def]
                outer.writes += 1
                if outer.failures > 0:
                    outer.failures -= 1
                    raise RetryableError("service unavailable")

        self.sink_class = Flaky

    from popflow import hookimpl

    @hookimpl
    def popflow_register_sinks(self, register):  # type: ignore[no-untyped-def]
        register("flaky", self.sink_class)


def test_failing_sink_retries_then_dead_letters_and_replays(tmp_path: Path) -> None:
    flaky = FlakySink()
    flaky.failures = 100
    with POP3TestServer([sample_message(1), sample_message(2)]) as server:
        config = write_config(tmp_path, server,
                              sinks={"archive": {"type": "folder", "path": "./mail"},
                                     "hook": {"type": "flaky", "retries": 2, "backoff": "1ms"}},
                              routes=[{"sinks": ["archive", "hook"]}])
        app = make_app(config, extra_plugins=[flaky])
        report = app.poll("test")
        assert not report.clean
        # message 1: 3 attempts then dead letter; message 2 deferred (sink down for the rest of the poll)
        assert report.counts.dead_letters == 1
        assert report.counts.deferred == 1
        assert len(server.messages()) == 1
        assert len(maildir_files(tmp_path / "mail")) == 2  # the healthy sink has both
        flaky.failures = 0
        report = app.poll("test")
        assert report.clean
        assert server.messages() == []
        assert len(maildir_files(tmp_path / "mail")) == 2  # idempotent: no duplicate in the archive
        dead = app.state.dead_letters()
        assert len(dead) == 1
        assert dead[0]["sink"] == "hook"
        from popflow.replay import replay_dead_letters

        results = replay_dead_letters(app)
        assert [r.ok for r in results] == [True]
        assert app.state.dead_letters() == []
        app.close()
    assert len(maildir_files(tmp_path / "mail")) == 2


class ExplodingTransform:
    """Raises for one subject only."""

    from popflow import hookimpl

    @hookimpl
    def popflow_transform(self, message):  # type: ignore[no-untyped-def]
        if "number 1" in (message.subject or ""):
            raise ValueError("cannot enrich this one")


def test_plugin_raising_for_one_message_does_not_stop_others(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with POP3TestServer([sample_message(i) for i in range(3)]) as server:
        app = make_app(write_config(tmp_path, server), extra_plugins=[ExplodingTransform()])
        report = app.poll("test")
        app.close()
        assert report.counts.delivered == 2
        assert report.counts.dead_letters == 1
        assert server.messages() == []  # a dead letter is handled: kept under data_dir, deleted from server
    dead = app.state.dead_letters()
    assert dead[0]["stage"] == "transform"
    assert "cannot enrich" in dead[0]["error"]
    assert app.store.path_for(dead[0]["sha256"]).exists()
    assert "ExplodingTransform" in caplog.text or "extra-0" in caplog.text


class CountingDurableSink:
    """A plugin adding a sink whose writes are immediately visible (like a webhook), failing one write once."""

    def __init__(self, fail_on_call: int) -> None:
        from popflow.sinks.base import Sink

        outer = self
        self.calls = 0
        self.successes: list[str] = []
        self.fail_on_call = fail_on_call

        class Durable(Sink):
            durable_writes = True

            def write(self, message):  # type: ignore[no-untyped-def]
                outer.calls += 1
                if outer.calls == outer.fail_on_call:
                    raise RetryableError("503 from the receiver", retry_after=0)
                outer.successes.append(message.uidl)

        self.sink_class = Durable

    from popflow import hookimpl

    @hookimpl
    def popflow_register_sinks(self, register):  # type: ignore[no-untyped-def]
        register("durable", self.sink_class)


def test_failure_mid_batch_never_repeats_a_durable_write(tmp_path: Path) -> None:
    plugin = CountingDurableSink(fail_on_call=2)
    with POP3TestServer([sample_message(i) for i in range(3)]) as server:
        config = write_config(tmp_path, server, sinks={"hook": {"type": "durable", "backoff": "1ms"}},
                              routes=[{"sinks": ["hook"]}])
        app = make_app(config, extra_plugins=[plugin])
        report = app.poll("test")
        app.close()
        assert report.clean, report.line()
        assert server.messages() == []
    assert sorted(plugin.successes) == sorted(set(plugin.successes))
    assert len(plugin.successes) == 3
    assert plugin.calls == 4  # three successes and the one failed attempt
