"""Real brokers, a private PostgreSQL schema and real `popflow` processes, for the scale-out tests.

* :func:`broker_url` — Redis (``POPFLOW_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/5``) or
  RabbitMQ (``POPFLOW_TEST_AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672//``); a broker that
  does not answer fails the test under ``CI=true`` and skips it otherwise;
* :func:`queue_name` — a queue of this test alone (``POPFLOW_TEST_BROKER_TAG`` prefix), removed afterwards;
* :func:`pg_schema` — a fresh PostgreSQL schema on ``POPFLOW_TEST_POSTGRES_URL`` and a SQLAlchemy URL
  whose ``search_path`` is that schema, so the state store and the sink of one test share nothing with
  any other test (its tables have the fixed names ``popflow_*``);
* :class:`Proc` — a ``python -m popflow ...`` process in its own process group, with its log in a file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.databases import SERVER_URLS, require_server

BROKERS = {
    "redis": os.environ.get("POPFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/5"),
    "amqp": os.environ.get("POPFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
TAG = os.environ.get("POPFLOW_TEST_BROKER_TAG", "popflow_test")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def broker_url(kind: str) -> str:
    """The broker URL of ``kind`` (``redis`` or ``amqp``), after checking that it accepts connections."""
    url = BROKERS[kind]
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or (6379 if kind == "redis"
                                                                                    else 5672)), timeout=3):
            pass
    except OSError as exc:
        _unavailable(f"the {kind} broker at {parts.hostname}:{parts.port} is not reachable: {exc}")
    return url


def queue_name() -> str:
    """A queue name no other test (or helper sharing the broker) uses."""
    return f"{TAG}_{uuid.uuid4().hex[:10]}"


def purge_queue(url: str, queue: str) -> None:
    """Delete a test's queue and what Celery keeps beside it (best effort)."""
    from kombu import Connection

    with suppress(Exception), Connection(url, connect_timeout=3) as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.close()


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL; yields a URL whose search_path is that schema."""
    require_server("postgresql")
    base = SERVER_URLS["postgresql"]
    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        shown = url.render_as_string(hide_password=False)
        # Migrate once here: processes started together on an empty schema would race to create it.
        from popflow.state import StateStore

        StateStore(shown).close()
        yield shown
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@dataclass
class Proc:
    """A `popflow` subprocess in its own process group (killable with everything it started)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, config: Path, *args: str, verbose: bool = False) -> Proc:
        """``python -m popflow [-v] ARGS -c CONFIG``, output to ``<config dir>/<name>.log``."""
        log_path = config.parent / f"{name}.log"
        command = [sys.executable, "-m", "popflow", *(["-v"] if verbose else []), *args, "-c", str(config)]
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=config.parent, start_new_session=True)
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        """The process's pid (also its process group's id)."""
        return self.process.pid

    def log(self) -> str:
        """Everything it wrote so far."""
        return self.log_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL the whole process group, as when the machine dies."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; wait for the exit code (the group is SIGKILLed if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM:\n{self.log()[-3000:]}") \
                from None

    def polls(self) -> Counter[str]:
        """Messages delivered by this process's polls, by source (from its one-line poll summaries)."""
        delivered: Counter[str] = Counter()
        for line in self.log().splitlines():
            if ": poll " in line and " delivered=" in line:
                name = line.split(": poll ", 1)[1].split(":", 1)[0]
                delivered[name] += int(line.split(" delivered=", 1)[1].split()[0])
        return delivered


def wait_until(condition: object, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
