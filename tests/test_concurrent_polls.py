"""Two popflow processes on one config and state, against a server without a maildrop lock.

popflow's POP3 test server runs with ``maildrop_lock=False``, so the server would happily serve
both sessions (as some real servers do). The source lease in the state store must make the second
process refuse: ``popflow poll`` exits 1 saying who polls the source, ``popflow run`` logs it and
polls the source on a later tick. Every message reaches the webhook receiver exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from popflow.testing import POP3TestServer
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.killing import READY_MARK, kill_after, popflow_command, start_poll, wait_for_text
from tests.support.pipeline import sample_message, write_config

pytestmark = pytest.mark.timeout(120)

COUNT = 40
SLOW = Reply(delay=0.2)
"""Every POST takes a while, so the first poll (one batch) is still delivering when the second lists,
even when a loaded machine takes seconds to start the second process (40 x 0.2 s)."""
BUSY = "is being polled by another popflow process"


def _setup(tmp_path: Path, server: POP3TestServer, receiver: HttpReceiver, **source: object) -> Path:
    return write_config(tmp_path, server, source=dict(source),
                        sinks={"hook": {"type": "webhook", "url": receiver.url, "backoff": "10ms"}},
                        routes=[{"sinks": ["hook"]}])


def _posts(receiver: HttpReceiver) -> Counter[str]:
    """POSTs per message (its Idempotency-Key), so a duplicate shows as a count of 2."""
    return Counter(request.headers["idempotency-key"] for request in receiver.requests)


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_poll_of_a_source_being_polled_refuses_and_nothing_is_posted_twice(tmp_path: Path) -> None:
    with HttpReceiver(SLOW) as receiver, \
            POP3TestServer([sample_message(i) for i in range(COUNT)], maildrop_lock=False) as server:
        config = _setup(tmp_path, server, receiver)
        log = tmp_path / "first.log"
        first = start_poll(config, log)
        try:
            assert wait_for_text(log, READY_MARK, first), log.read_text()
            assert first.poll() is None  # the first poll is in its POP3 session (40 POSTs of 0.2 s to go)
            second = subprocess.run(popflow_command(config, "poll"), cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            finished = kill_after(first, 60, log)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        posts = _posts(receiver)
        assert len(posts) == COUNT and max(posts.values()) == 1, f"{sum(posts.values())} POSTs for {len(posts)}"
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        assert f"source 'test' {BUSY}" in output and "since" in output, output
        assert "Traceback" not in output
        assert finished.code == 0, finished.log[-3000:]
    assert server.messages() == []


def test_run_logs_a_source_another_process_polls_and_polls_it_on_a_later_tick(
        tmp_path: Path) -> None:
    with HttpReceiver(SLOW) as receiver, \
            POP3TestServer([sample_message(i) for i in range(COUNT)], maildrop_lock=False) as server:
        config = _setup(tmp_path, server, receiver, every="1s")
        poll_log = tmp_path / "poll.log"
        poll = start_poll(config, poll_log)
        run_log = tmp_path / "run.log"
        run: subprocess.Popen[bytes] | None = None
        try:
            assert wait_for_text(poll_log, READY_MARK, poll), poll_log.read_text()
            with run_log.open("wb") as out:
                run = subprocess.Popen(popflow_command(config, "run"), cwd=tmp_path,
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            assert wait_for_text(run_log, BUSY, run), run_log.read_text()
            assert kill_after(poll, 60, poll_log).code == 0, poll_log.read_text()[-3000:]
            server.add(sample_message(COUNT))  # new mail: the run's next poll of the source takes it
            _wait_until(lambda: len(_posts(receiver)) == COUNT + 1, "the run to deliver the new message")
            run.send_signal(signal.SIGTERM)
            assert run.wait(20) == 0
        finally:
            for process in (poll, run):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        text = run_log.read_text()
        assert "Traceback" not in text, text[-3000:]
    posts = _posts(receiver)
    assert len(posts) == COUNT + 1 and max(posts.values()) == 1, f"{sum(posts.values())} POSTs for {len(posts)}"
    assert server.messages() == []
