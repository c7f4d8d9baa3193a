"""``executor: celery`` piece by piece, on the real Redis/RabbitMQ, PostgreSQL and Dovecot.

* ticks: two schedulers claiming the same ticks enqueue each once; a redelivered task is a no-op;
  a tick whose worker died is enqueued again only once no live lease holds its source;
* two real ``popflow run`` schedulers on one state store enqueue each source's tick once;
* SIGTERM to a ``popflow worker`` mid-poll: the message in hand is finished, QUIT applies the
  deletions earned, the lease is released, exit status 0;
* dead letters written by a poll are shown and replayed from another "machine" (another folder,
  another ``data_dir``): their raw copy is in the state database;
* ``popflow check --connect`` checks the broker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu import Connection
from sqlalchemy import create_engine, insert, text

from popflow.executors.ticks import TickBook
from popflow.state import StateStore
from popflow.state_tables import locks
from popflow.timestamps import now
from tests.support.dovecot import DovecotServer, free_port
from tests.support.pipeline import sample_message
from tests.support.scaleout import Proc, broker_url, pg_schema, purge_queue, queue_name, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def state_url() -> Iterator[str]:
    """A PostgreSQL state store in a schema of its own."""
    with pg_schema() as url:
        yield url


def _config(path: Path, state: str, broker: str, queue: str, sources: dict[str, Any],
            sinks: dict[str, Any] | None = None, **extra: Any) -> Path:
    data = {"state": state, "data_dir": str(path.parent / "data"),
            "executor": {"type": "celery", "broker": broker, "queue": queue, "lease": "5s"},
            "sources": sources, "sinks": sinks or {"db": {"type": "database", "url": state, "table_prefix": "sink_"}},
            "routes": [{"sinks": list((sinks or {"db": None}).keys())}], **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def _source(server: DovecotServer, **options: Any) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
            "username": server.username, "password": server.password, "timeout": "10s", **options}


def _popflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popflow", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})


def _count(state: str, query: str) -> int:
    engine = create_engine(state)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(query)).scalar() or 0)
    finally:
        engine.dispose()


# -- ticks -----------------------------------------------------------------------------------------
def test_each_tick_is_claimed_once_and_a_redelivered_task_is_a_no_op(state_url: str) -> None:
    store = StateStore(state_url)
    try:
        one, two = TickBook(store, "a:1:x", grace=60), TickBook(store, "b:2:y", grace=60)
        due = [(f"s{n}", 1000) for n in range(20)]
        won = one.claim(due) + two.claim(due)
        assert sorted(won) == sorted(due)  # every tick once, whoever won it
        assert two.claim(due) == []
        assert one.claim([("s0", 2000)]) == []  # tick 1000 not finished: no pile-up behind it
        assert one.start("s0", 1000)
        assert two.start("s0", 1000)  # a redelivery of a running tick (its worker died) may start it again
        one.finish("s0", 1000, "ok")
        assert not one.start("s0", 1000)  # redelivered after it finished: nothing to do
        assert one.claim([("s0", 2000)]) == [("s0", 2000)]
        assert not one.start("s0", 1000)  # superseded by a newer tick
    finally:
        store.close()


def test_a_lost_tick_is_enqueued_again_only_when_no_live_lease_holds_the_source(state_url: str) -> None:
    store = StateStore(state_url)
    try:
        book = TickBook(store, "a:1:x", grace=0.5)
        assert book.claim([("s", 1000)]) == [("s", 1000)]
        assert book.start("s", 1000)  # then its worker dies, holding the lease on another machine
        with store.transaction() as connection:
            connection.execute(insert(locks).values(name="s", owner="elsewhere:1:z", acquired_at=now(),
                                                    expires_at=now() + timedelta(seconds=30)))
        time.sleep(0.6)
        assert book.claim([("s", 2000)]) == []  # the lease is live: the poll may still be running
        with store.transaction() as connection:
            connection.execute(text("UPDATE popflow_locks SET expires_at = :t"), {"t": now() - timedelta(seconds=1)})
        assert book.claim([("s", 2000)]) == [("s", 2000)]
    finally:
        store.close()


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_two_schedulers_enqueue_each_tick_once(tmp_path: Path, state_url: str, broker_kind: str,
                                               dovecot: DovecotServer) -> None:
    broker, queue = broker_url(broker_kind), queue_name()
    sources = {f"src{n}": _source(dovecot, every="1h") for n in range(8)}  # one tick each while the test runs
    config = _config(tmp_path / "popflow.yaml", state_url, broker, queue, sources)
    schedulers = [Proc.start(f"scheduler{n}", config, "run") for n in range(2)]
    try:
        wait_until(lambda: _count(state_url, "SELECT count(*) FROM popflow_schedule WHERE status = 'queued'") == 8,
                   30, what="eight ticks enqueued")
        time.sleep(2)  # both schedulers have looked at every source by now
        with Connection(broker) as connection:
            waiting = connection.default_channel.queue_declare(queue, passive=True).message_count
        codes = [proc.terminate() for proc in schedulers]
    finally:
        for proc in schedulers:
            if proc.process.poll() is None:
                proc.kill_group()
        purge_queue(broker, queue)
    assert waiting == 8, f"{waiting} poll tasks for 8 sources' first tick"
    assert codes == [0, 0], [proc.log()[-1500:] for proc in schedulers]


# -- worker ----------------------------------------------------------------------------------------
def test_sigterm_mid_poll_finishes_the_message_in_hand_quits_and_exits_0(tmp_path: Path, state_url: str,
                                                                          dovecot: DovecotServer) -> None:
    broker, queue = broker_url("amqp"), queue_name()
    total = 400
    for number in range(total):
        dovecot.deliver(sample_message(number))
    config = _config(tmp_path / "popflow.yaml", state_url, broker, queue, {"big": _source(dovecot, every="1h")},
                     batch_size=2)
    worker = Proc.start("worker", config, "worker", "--concurrency", "2")
    scheduler = Proc.start("scheduler", config, "run")
    try:
        wait_until(lambda: _count(state_url, "SELECT count(*) FROM popflow_ledger") >= 10, 60, interval=0.02,
                   what="the poll under way")
        code = worker.terminate(60)
        scheduler.terminate()
    finally:
        for proc in (worker, scheduler):
            if proc.process.poll() is None:
                proc.kill_group()
        purge_queue(broker, queue)
    log = worker.log()
    assert code == 0, log[-3000:]
    delivered = _count(state_url, "SELECT count(*) FROM sink_messages")
    assert 0 < delivered < total, "the SIGTERM did not land mid-poll"
    assert "(stopped early)" in log
    # QUIT applied every deletion the poll earned: what left the server is exactly what was delivered.
    dovecot_support_wait = time.monotonic() + 10
    while dovecot.count() != total - delivered and time.monotonic() < dovecot_support_wait:
        time.sleep(0.05)
    assert dovecot.count() == total - delivered
    assert _count(state_url, "SELECT count(*) FROM popflow_locks") == 0


# -- dead letters across machines -------------------------------------------------------------------
def test_dead_letters_are_shown_and_replayed_from_another_machine(tmp_path: Path, state_url: str,
                                                                   dovecot: DovecotServer) -> None:
    for number in range(3):
        dovecot.deliver(sample_message(number))
    dead_port = free_port()
    hook = {"hook": {"type": "webhook", "url": f"http://127.0.0.1:{dead_port}/hook", "retries": 0,
                     "timeout": "2s"}}
    worker_dir, other_dir = tmp_path / "worker-host", tmp_path / "other-host"
    worker_dir.mkdir()
    other_dir.mkdir()
    broker = "redis://127.0.0.1:6379/5"
    config = _config(worker_dir / "popflow.yaml", state_url, broker, "unused", {"box": _source(dovecot)}, hook)
    polled = _popflow("poll", "-c", str(config), cwd=worker_dir)
    assert polled.returncode == 1, polled.stdout + polled.stderr
    # The first message is a dead letter; the sink is then taken as down and the rest deferred.
    assert _count(state_url, "SELECT count(*) FROM popflow_dead_letters") == 1
    assert not list((worker_dir / "data").rglob("*.eml")), "raw copies were written to the worker's data_dir"
    # Another machine: its own folder and data_dir, the same state store; the sink now answers.
    sinks = {"hook": {"type": "database", "url": state_url, "table_prefix": "replayed_"}}
    other = _config(other_dir / "popflow.yaml", state_url, broker, "unused", {"box": _source(dovecot)}, sinks)
    shown = _popflow("dead-letters", "show", "1", "-c", str(other), cwd=other_dir)
    assert shown.returncode == 0, shown.stderr
    assert "popflow_raw_messages" in shown.stdout and "present" in shown.stdout
    replayed = _popflow("dead-letters", "replay", "-c", str(other), cwd=other_dir)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert _count(state_url, "SELECT count(*) FROM replayed_messages") == 1


# -- check -----------------------------------------------------------------------------------------
def test_check_connect_reports_the_broker(tmp_path: Path, state_url: str, dovecot: DovecotServer) -> None:
    good = _config(tmp_path / "good.yaml", state_url, broker_url("redis"), queue_name(), {"box": _source(dovecot)})
    result = _popflow("check", "--connect", "-c", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "executor: celery" in result.stdout and "broker reachable" in result.stdout
    bad = _config(tmp_path / "bad.yaml", state_url, f"redis://127.0.0.1:{free_port()}/5", "q",
                  {"box": _source(dovecot)})
    result = _popflow("check", "--connect", "-c", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert "broker" in result.stdout and "failed" in result.stdout
