"""Two ``popflow dead-letters replay`` processes started together: each dead letter is POSTed once.

Five messages become dead letters for a webhook sink (the receiver answers 500; ``retries: 0``; one
poll per message, since a sink that used up its retries defers the rest of its poll). Then the
receiver answers 200, slowly, and two real replay processes start at the same moment. Each entry is
claimed by one of them: every message reaches the receiver exactly once, no traceback, both exit 0.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from popflow.testing import POP3TestServer
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.killing import popflow_command
from tests.support.pipeline import make_app, sample_message, write_config

pytestmark = pytest.mark.timeout(90)

COUNT = 5


def test_two_replays_at_once_post_each_dead_letter_once_and_exit_cleanly(tmp_path: Path) -> None:
    with HttpReceiver(Reply(500)) as receiver:
        with POP3TestServer([sample_message(i) for i in range(COUNT)]) as server:
            config = write_config(tmp_path, server, sinks={"hook": {"type": "webhook", "url": receiver.url,
                                                                    "retries": 0, "backoff": "10ms"}},
                                  routes=[{"sinks": ["hook"]}])
            app = make_app(config)
            try:
                for _ in range(COUNT):
                    app.poll("test")
                assert len(app.state.dead_letters()) == COUNT and server.messages() == []
            finally:
                app.close()
        receiver.default = Reply(200, delay=0.1)  # slow enough for the two replays to overlap
        receiver.requests.clear()
        command = popflow_command(config, "dead-letters", "replay")
        replays = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
        outputs = [replay.communicate(timeout=60)[0] for replay in replays]
    posts = Counter(request.headers["idempotency-key"] for request in receiver.requests)
    assert len(posts) == COUNT and max(posts.values()) == 1, f"{sum(posts.values())} POSTs for {len(posts)}"
    for replay, output in zip(replays, outputs, strict=True):
        assert "Traceback" not in output and "IntegrityError" not in output, output
        assert replay.returncode == 0, output
    replayed = [int(output.split("replayed ", 1)[1].split()[0]) for output in outputs]
    assert sum(replayed) == COUNT, outputs  # each entry replayed by exactly one of the two
    app = make_app(config)
    try:
        rows = app.state.dead_letters(status=None)
        assert [row["status"] for row in rows] == ["replayed"] * COUNT
        assert all(row["claimed_by"] is None and row["claimed_at"] is None for row in rows)
    finally:
        app.close()
