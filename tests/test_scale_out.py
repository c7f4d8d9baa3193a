"""Scale-out on Celery: dozens of Dovecot mailboxes, several `popflow worker` processes, a scheduler.

Real parts only: a private Dovecot with one user per mailbox and ``pop3_lock_session = yes`` (a
second session on a maildrop is refused with ``[IN-USE]``, so two workers holding one mailbox
would show), the machine's Redis or RabbitMQ as the broker, PostgreSQL for the shared state and the
database sink, and every popflow part a real process (``python -m popflow run|worker``).

One worker is SIGKILLed (its whole process group, as when its machine dies) while it holds a
mailbox's lease, and replaced. Then: every message is in the sink exactly once, every mailbox is
empty, Dovecot refused no session, the surviving workers shared the work, and SIGTERM stops every
process with exit status 0 and no lease left behind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.support.dovecot import DovecotServer, DovecotUnavailable, start_dovecot, unavailable
from tests.support.killing import message_id
from tests.support.pipeline import sample_message
from tests.support.scaleout import Proc, broker_url, pg_schema, purge_queue, queue_name, wait_until

pytestmark = pytest.mark.timeout(240)

MAILBOXES = 30
PER_MAILBOX = 12
WORKERS = 3


@pytest.fixture(scope="module")
def locking_dovecot() -> Iterator[DovecotServer]:
    """A Dovecot of its own whose POP3 sessions lock the maildrop (a second one gets [IN-USE])."""
    try:
        server = start_dovecot(extra_config="pop3_lock_session = yes\n")
    except DovecotUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, server: DovecotServer, boxes: list[DovecotServer], state: str, broker: str,
            queue: str) -> Path:
    sources = {f"box{index:02d}": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                                   "username": box.username, "password": box.password, "every": "1s",
                                   "timeout": "10s"}
               for index, box in enumerate(boxes)}
    data = {
        "state": state, "data_dir": "./data", "batch_size": 3,
        "executor": {"type": "celery", "broker": broker, "queue": queue, "lease": "5s"},
        "sources": sources,
        "sinks": {"db": {"type": "database", "url": state, "table_prefix": "sink_", "backoff": "10ms"}},
        "routes": [{"sinks": ["db"]}],
    }
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def _sink_ids(state: str) -> Counter[str]:
    engine = create_engine(state)
    try:
        with engine.connect() as connection:
            try:
                rows = connection.execute(text("SELECT message_id FROM sink_messages")).all()
            except Exception:
                return Counter()
    finally:
        engine.dispose()
    return Counter(row[0] for row in rows)


def _lease_holders(state: str) -> list[str]:
    engine = create_engine(state)
    try:
        with engine.connect() as connection:
            try:
                return [row[0] for row in connection.execute(text("SELECT owner FROM popflow_locks")).all()]
            except Exception:
                return []
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("broker_kind", ["amqp", "redis"])
def test_workers_share_mailboxes_and_survive_a_sigkill(tmp_path: Path, locking_dovecot: DovecotServer,
                                                       broker_kind: str) -> None:
    broker = broker_url(broker_kind)
    queue = queue_name()
    run = os.urandom(3).hex()
    boxes = [locking_dovecot.add_user(f"u{run}{index:02d}", f"pw-{os.urandom(4).hex()}") for index in range(MAILBOXES)]
    expected: Counter[str] = Counter()
    for index, box in enumerate(boxes):
        for number in range(PER_MAILBOX):
            raw = sample_message(index * 1000 + number).replace(b"@example.org>", f"@{run}.test>".encode(), 1)
            box.deliver(raw)
            expected[message_id(raw)] += 1
    assert len(expected) == MAILBOXES * PER_MAILBOX
    procs: list[Proc] = []
    with pg_schema() as state:
        config = _config(tmp_path, locking_dovecot, boxes, state, broker, queue)
        try:
            workers = [Proc.start(f"worker{n}", config, "worker", "--concurrency", "3") for n in range(WORKERS)]
            procs += workers
            procs.append(Proc.start("scheduler", config, "run"))
            victim = workers[0]
            # Kill it while it holds a mailbox's lease: a poll is under way.
            wait_until(lambda: any(f":{victim.pid}:" in owner for owner in _lease_holders(state)), 60,
                       interval=0.01, what="the first worker to hold a lease")
            before = sum(_sink_ids(state).values())
            victim.kill_group()
            assert before < len(expected), "everything was delivered before the kill: the test proves nothing"
            procs.append(Proc.start("worker-replacement", config, "worker", "--concurrency", "3"))
            wait_until(lambda: sum(box.count() for box in boxes) == 0 and sum(_sink_ids(state).values())
                       >= len(expected), 90, what="every mailbox drained into the sink")
            # The workers that ran beside the victim; the replacement may start after they have
            # drained everything (it must still start and stop cleanly: the exit codes below).
            survivors = [proc for proc in workers if proc is not victim]
            codes = {proc.name: proc.terminate() for proc in procs if proc is not victim}
            ids = _sink_ids(state)
            leases = _lease_holders(state)
        finally:
            for proc in procs:
                if proc.process.poll() is None:
                    proc.kill_group()
            purge_queue(broker, queue)
    logs = {proc.name: proc.log() for proc in procs}
    assert codes == dict.fromkeys(codes, 0), {name: logs[name][-2000:] for name, code in codes.items() if code}
    duplicates = {mid: n for mid, n in ids.items() if n > 1}
    assert not duplicates, f"delivered more than once: {sorted(duplicates)[:10]}"
    assert set(ids) == set(expected), f"missing: {sorted(set(expected) - set(ids))[:10]}"
    assert all(box.count() == 0 for box in boxes)
    assert "IN-USE" not in locking_dovecot.log() + "".join(logs.values())
    assert "maildrop locked" not in "".join(logs.values())
    assert leases == [], f"leases left after SIGTERM: {leases}"
    delivered = {proc.name: sum(proc.polls().values()) for proc in survivors}
    every_worker = [proc for proc in procs if proc.name.startswith("worker")]  # victim and replacement too
    assert sum(sum(proc.polls().values()) for proc in every_worker) >= len(expected)
    assert all(count > 0 for count in delivered.values()), f"work not spread over the survivors: {delivered}"
