"""``popflow run``: the scheduler as a real subprocess against Dovecot and popflow's own server, and its parts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner

from popflow.app import App
from popflow.cli import main
from popflow.config import parse_config
from popflow.poller import PollReport
from popflow.scheduler import PollScheduler, describe_schedule, trigger_for
from popflow.testing import POP3TestServer
from tests.support.dovecot import DovecotServer, free_port

# The shared private Dovecot's fixtures, under their own names.

pytestmark = pytest.mark.timeout(60)


def mail(n: int, subject: str = "hello") -> bytes:
    """A small, distinct message."""
    return (f"From: sender{n}@example.com\r\nTo: inbox@example.com\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <run-{n}-{time.time_ns()}@example.com>\r\n\r\nbody {n}\r\n").encode()


def write_config(tmp_path: Path, sources: dict[str, dict[str, Any]], **extra: Any) -> Path:
    """A config polling ``sources`` into an eml folder sink under ``tmp_path``."""
    config = {"state": "sqlite:///state.db", "data_dir": "./data", "sources": sources,
              "routes": [{"sinks": ["mail"]}], "sinks": {"mail": {"type": "folder", "path": "./mail", "layout": "eml"}}}
    config.update(extra)
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def dovecot_source(server: DovecotServer, **options: Any) -> dict[str, Any]:
    """A source for the private Dovecot: STARTTLS verified with its test CA, polled every second."""
    return {"host": server.host, "port": server.port, "tls": "starttls", "ca_file": str(server.ca_file),
            "username": server.username, "password": server.password, "every": "1s", **options}


def plain_source(server: POP3TestServer, **options: Any) -> dict[str, Any]:
    """A source for popflow's own loopback server (plain POP3)."""
    return {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
            "username": server.username, "password": server.password, "every": "1s", **options}


def delivered(tmp_path: Path) -> int:
    """How many messages the folder sink holds."""
    return sum(1 for _ in (tmp_path / "mail").rglob("*.eml")) if (tmp_path / "mail").exists() else 0


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class RunProcess:
    """``popflow run -c CONFIG`` in a subprocess, its log in a file."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.parent / "run.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", "from popflow.cli import main; main()", "run",
                                      "-c", str(config)], cwd=config.parent, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM; the exit status (fails if it takes longer than ``timeout``)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill it if a failed test left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_run() -> Iterator[Callable[[Path], RunProcess]]:
    """Start ``popflow run`` processes that are killed at the end of the test, whatever happens."""
    started: list[RunProcess] = []

    def start(config: Path) -> RunProcess:
        process = RunProcess(config)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


# -- against Dovecot --------------------------------------------------------------------------------
def test_mail_arriving_while_running_is_delivered_and_sigterm_exits_0(
        dovecot: DovecotServer, tmp_path: Path, start_run: Callable[[Path], RunProcess]) -> None:
    for n in range(3):
        dovecot.deliver(mail(n))
    run = start_run(write_config(tmp_path, {"inbox": dovecot_source(dovecot)}))
    wait_until(lambda: delivered(tmp_path) == 3, what="the first poll")
    for n in range(3, 5):
        dovecot.deliver(mail(n, "arrived while running"))
    wait_until(lambda: delivered(tmp_path) == 5 and dovecot.count() == 0, what="the next tick")
    assert run.terminate() == 0
    log = run.log()
    assert "polling inbox (every 1s)" in log
    assert "poll inbox: fetched=3 delivered=3" in log
    assert "poll inbox: fetched=2 delivered=2" in log
    assert "SIGTERM" in log and "stopped" in log
    assert "Traceback" not in log
    assert dovecot.count() == 0


def test_sigterm_in_the_middle_of_a_poll_keeps_earned_deletions(
        dovecot: DovecotServer, tmp_path: Path, start_run: Callable[[Path], RunProcess]) -> None:
    total = 300
    for n in range(total):
        dovecot.deliver(mail(n))
    run = start_run(write_config(tmp_path, {"inbox": dovecot_source(dovecot)}, batch_size=5))
    wait_until(lambda: delivered(tmp_path) > 0, what="the first deliveries")
    started = time.monotonic()
    assert run.terminate() == 0
    assert time.monotonic() - started < 10
    # Whatever was delivered was deleted at QUIT; whatever is left was not delivered: nothing lost or doubled.
    assert delivered(tmp_path) + dovecot.count() == total
    log = run.log()
    assert "(stopped early)" in log and dovecot.count() > 0  # it really stopped mid-mailbox
    assert "Traceback" not in log


def test_a_broken_source_does_not_stop_a_healthy_one(
        dovecot: DovecotServer, tmp_path: Path, start_run: Callable[[Path], RunProcess]) -> None:
    dovecot.deliver(mail(1))
    closed = free_port()
    sources = {"broken": {"host": "127.0.0.1", "port": closed, "tls": "none", "allow_insecure": True,
                          "username": "x", "password": "y", "every": "1s", "timeout": "2s"},
               "healthy": dovecot_source(dovecot)}
    run = start_run(write_config(tmp_path, sources))
    wait_until(lambda: delivered(tmp_path) == 1, what="the healthy source's first poll")
    dovecot.deliver(mail(2))
    wait_until(lambda: delivered(tmp_path) == 2, what="the healthy source's next tick")
    wait_until(lambda: run.log().count("source broken failed") >= 2, what="the broken source's retry")
    assert run.terminate() == 0
    log = run.log()
    assert f"cannot connect to 127.0.0.1:{closed}" in log
    assert dovecot.count() == 0


# -- against popflow's own server (no system service needed) ----------------------------------------
def test_run_against_the_builtin_server(tmp_path: Path, start_run: Callable[[Path], RunProcess]) -> None:
    with POP3TestServer([mail(1), mail(2)]) as server:
        run = start_run(write_config(tmp_path, {"box": plain_source(server)}))
        wait_until(lambda: delivered(tmp_path) == 2, what="the first poll")
        server.add(mail(3))
        wait_until(lambda: delivered(tmp_path) == 3 and not server.messages(), what="the next tick")
        assert run.terminate() == 0
        assert server.stats.retrieved.most_common(1)[0][1] == 1  # nothing fetched twice
    assert "Traceback" not in run.log()


# -- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "check"])
def test_an_invalid_cron_is_a_config_error(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path, {"box": {"host": "127.0.0.1", "username": "u", "password": "p",
                                             "cron": "*/5 * * *"}})
    result = CliRunner().invoke(main, [command, "-c", str(config)])
    assert result.exit_code == 2
    assert "sources.box" in result.output and "invalid cron expression" in result.output
    assert "Traceback" not in result.output


def test_run_without_enabled_sources_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"off": {"host": "127.0.0.1", "username": "u", "password": "p",
                                             "enabled": False}})
    result = CliRunner().invoke(main, ["run", "-c", str(config)])
    assert result.exit_code == 2
    assert "no enabled source" in result.output


# -- the scheduler itself ---------------------------------------------------------------------------
class FakeApp:
    """Just what :class:`PollScheduler` uses of an :class:`App`: settings, the stop event, ``poll``."""

    def __init__(self, sources: dict[str, dict[str, Any]], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        config = parse_config({"sources": {name: {"host": "h", "username": "u", "password": "p", **opts}
                                           for name, opts in sources.items()}})
        app = App(config)
        self.source_configs = app.source_configs
        self.context = app.context
        self.fail = fail
        self.polls: list[str] = []
        self.polled = threading.Condition()

    def enabled_sources(self) -> list[str]:
        """Every configured source."""
        return list(self.source_configs)

    def poll(self, name: str) -> PollReport:
        """Record the poll; raise for a source named in ``fail``."""
        with self.polled:
            self.polls.append(name)
            self.polled.notify_all()
        if name in self.fail:
            raise RuntimeError(f"{name} is broken")
        return PollReport(name)

    def wait_polls(self, name: str, count: int, timeout: float = 5.0) -> None:
        """Wait until ``name`` was polled ``count`` times."""
        with self.polled:
            assert self.polled.wait_for(lambda: self.polls.count(name) >= count, timeout), self.polls


def test_triggers_and_job_options() -> None:
    app = FakeApp({"often": {"every": "1s"}, "rare": {"cron": "*/5 * * * *"}, "default": {}})
    scheduler = PollScheduler(app)  # type: ignore[arg-type]
    assert isinstance(trigger_for(scheduler.settings("rare")), CronTrigger)
    often = trigger_for(scheduler.settings("often"))
    assert isinstance(often, IntervalTrigger) and often.jitter == pytest.approx(0.1)
    default = trigger_for(scheduler.settings("default"))
    assert isinstance(default, IntervalTrigger) and default.interval.total_seconds() == 60 and default.jitter == 5
    assert describe_schedule(scheduler.settings("rare")) == "cron */5 * * * *"
    scheduler.scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.add_jobs()}
        assert set(jobs) == {"often", "rare", "default"}
        for job in jobs.values():
            assert job.max_instances == 1 and job.coalesce is True and job.misfire_grace_time is None
    finally:
        scheduler.scheduler.shutdown(wait=False)


def test_a_cron_schedule_fires_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": datetime(2025, 1, 6, 10, 1, 30, tzinfo=UTC)}

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return clock["now"].astimezone(tz)

    import apscheduler.schedulers.base as base

    import popflow.scheduler

    monkeypatch.setattr(base, "datetime", FakeDatetime)
    monkeypatch.setattr(popflow.scheduler, "datetime", FakeDatetime)
    app = FakeApp({"cron": {"cron": "*/5 * * * *"}})
    scheduler = PollScheduler(app)  # type: ignore[arg-type]
    scheduler.scheduler.configure(timezone=UTC)
    scheduler.start()  # first poll right away, whatever the cron says
    try:
        app.wait_polls("cron", 1)
        wait_until(lambda: scheduler.next_run_times()["cron"] == datetime(2025, 1, 6, 10, 5, tzinfo=UTC),
                   timeout=5, what="the next cron time")
        clock["now"] = datetime(2025, 1, 6, 10, 5, 0, 100, tzinfo=UTC)
        scheduler.scheduler.wakeup()
        app.wait_polls("cron", 2)
        wait_until(lambda: scheduler.next_run_times()["cron"] == datetime(2025, 1, 6, 10, 10, tzinfo=UTC),
                   timeout=5, what="the cron time after")
    finally:
        scheduler.stop()
    assert app.polls == ["cron", "cron"]


def test_a_poll_that_raises_is_retried_and_others_keep_polling(caplog: pytest.LogCaptureFixture) -> None:
    app = FakeApp({"bad": {"every": "1s"}, "good": {"every": "1s"}}, fail={"bad"})
    scheduler = PollScheduler(app)  # type: ignore[arg-type]
    scheduler.start()
    try:
        app.wait_polls("bad", 2, timeout=10)
        app.wait_polls("good", 2, timeout=10)
    finally:
        scheduler.stop()
    assert "poll of bad raised" in caplog.text
    assert scheduler.reports["good"].clean


class GatedApp(FakeApp):
    """A poll that runs until the test releases it, then reports a failure (as a refused login does)."""

    def __init__(self, sources: dict[str, dict[str, Any]]) -> None:
        super().__init__(sources)
        self.entered = threading.Event()
        self.release = threading.Event()

    def poll(self, name: str) -> PollReport:
        """Wait for the release, then fail."""
        super().poll(name)
        self.entered.set()
        assert self.release.wait(30)
        return PollReport(name, error="server said no")


def test_stop_waits_for_a_running_poll_that_fails_without_deadlocking() -> None:
    # APScheduler's shutdown(wait=True) holds its job-store lock while it waits, and a failed poll
    # asks the scheduler for its next run time: stop() must not wait inside shutdown().
    app = GatedApp({"box": {"every": "1h"}})
    scheduler = PollScheduler(app)  # type: ignore[arg-type]
    scheduler.start()
    assert app.entered.wait(5)
    stopper = threading.Thread(target=scheduler.stop, daemon=True)
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # stop() waits for the poll in hand
    app.release.set()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() deadlocked with the poll that was ending"
    assert scheduler.reports["box"].error == "server said no"


def test_stop_sets_the_stop_event_and_later_ticks_do_nothing() -> None:
    app = FakeApp({"box": {"every": "1s"}})
    scheduler = PollScheduler(app)  # type: ignore[arg-type]
    scheduler.start()
    app.wait_polls("box", 1)
    scheduler.stop()
    assert app.context.stop.is_set() and not scheduler.scheduler.running
    assert scheduler.poll_once("box") is None
    assert app.polls.count("box") == 1 or app.polls.count("box") == 2  # a tick may have been in flight
