"""IMAP IDLE in ``popflow run``'s scheduler against a real Dovecot: new mail is delivered at once.

The source polls every hour, so a message delivered within seconds of being dropped into the
Maildir can only have been fetched because the IDLE watcher saw ``* N EXISTS`` and woke the poll.
A proxy in front of Dovecot's plain IMAP port counts the IDLE and DONE commands the watcher sends.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from popflow.scheduler import PollScheduler
from tests.support import imap as imap_support
from tests.support.dovecot import DovecotServer, dovecot, dovecot_server  # noqa: F401
from tests.support.imap import write_imap_config
from tests.support.imap_proxy import ImapProxy
from tests.support.killing import maildir_ids
from tests.support.pipeline import make_app, sample_message

imap_dovecot = imap_support.imap_dovecot
pytestmark = pytest.mark.timeout(120)

PROMPT = 15.0
"""Seconds within which IDLE must deliver (the regular poll is an hour away)."""


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def proxy(imap_dovecot: DovecotServer) -> Iterator[ImapProxy]:
    with ImapProxy(imap_dovecot.host, imap_dovecot.imap_port) as running:
        yield running


def start_run(tmp_path: Path, server: DovecotServer, proxy: ImapProxy, **options: Any) -> PollScheduler:
    """What ``popflow run`` starts: the scheduler (first poll at once, then hourly) and the watchers."""
    config = write_imap_config(tmp_path, server, port=proxy.port, tls="none", allow_insecure=True,
                               ca_file=None, idle=True, every="1h", **options)
    scheduler = PollScheduler(make_app(config))
    scheduler.start()
    wait_for(lambda: "imap" in scheduler.reports, 30, "the first poll")
    assert scheduler.reports["imap"].clean, scheduler.reports["imap"].line()
    wait_for(lambda: proxy.commands(b"IDLE") >= 1, 30, "the watcher's first IDLE")
    return scheduler


def delivered_within(tmp_path: Path, index: int, server: DovecotServer) -> float:
    """Drop message ``index`` into the Maildir; seconds until it is in the sink."""
    started = time.monotonic()
    server.deliver(sample_message(index))
    wait_for(lambda: maildir_ids(tmp_path / "mail")[f"<msg-{index}@example.org>"], PROMPT,
             f"message {index} to be delivered")
    return time.monotonic() - started


def kick(server: DovecotServer) -> str:
    """``doveadm kick USER`` on this private instance: Dovecot ends the user's IMAP sessions."""
    result = subprocess.run(["doveadm", "-c", str(server.root / "etc" / "dovecot.conf"), "kick", server.username],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_new_mail_is_delivered_at_once_not_on_the_hourly_poll(tmp_path: Path, imap_dovecot: DovecotServer,
                                                             proxy: ImapProxy) -> None:
    scheduler = start_run(tmp_path, imap_dovecot, proxy)
    try:
        for index in range(3):
            assert delivered_within(tmp_path, index, imap_dovecot) < PROMPT
        next_poll = scheduler.next_run_times()["imap"]
        assert next_poll is not None and (next_poll - next_poll.now(next_poll.tzinfo)).total_seconds() > 3000
    finally:
        scheduler.stop()
    assert maildir_ids(tmp_path / "mail") == {f"<msg-{i}@example.org>": 1 for i in range(3)}
    assert imap_support.files(imap_dovecot) == []


def test_idle_is_reissued_after_idle_renew(tmp_path: Path, imap_dovecot: DovecotServer, proxy: ImapProxy) -> None:
    scheduler = start_run(tmp_path, imap_dovecot, proxy, idle_renew="1s")
    try:
        connections = proxy.connections
        wait_for(lambda: proxy.commands(b"IDLE") >= 4, 20, "three renewed IDLEs")
        assert proxy.commands(b"DONE") >= 3  # each IDLE ended properly before the next
        assert proxy.connections == connections  # renewed on the same connection, no reconnect
        assert delivered_within(tmp_path, 1, imap_dovecot) < PROMPT
    finally:
        scheduler.stop()


def test_idle_reconnects_after_the_server_kicks_it(tmp_path: Path, imap_dovecot: DovecotServer,
                                                  proxy: ImapProxy) -> None:
    scheduler = start_run(tmp_path, imap_dovecot, proxy)
    try:
        logins, idles = proxy.commands(b"CAPABILITY"), proxy.commands(b"IDLE")
        assert imap_dovecot.username in kick(imap_dovecot)
        wait_for(lambda: proxy.commands(b"IDLE") > idles, 30, "a new IDLE after the kick")
        assert proxy.commands(b"CAPABILITY") > logins  # a new session, not the old one
        assert delivered_within(tmp_path, 5, imap_dovecot) < PROMPT
    finally:
        scheduler.stop()
    assert maildir_ids(tmp_path / "mail") == {"<msg-5@example.org>": 1}


def test_every_folder_of_the_source_is_watched(tmp_path: Path, imap_dovecot: DovecotServer, proxy: ImapProxy) -> None:
    imap_support.make_folder(imap_dovecot, "Orders")
    scheduler = start_run(tmp_path, imap_dovecot, proxy, folder=["INBOX", "Orders"])
    try:
        wait_for(lambda: proxy.commands(b"IDLE") >= 2, 30, "an IDLE on each folder")
        started = time.monotonic()
        imap_support.deliver_to(imap_dovecot, "Orders", sample_message(8))
        wait_for(lambda: maildir_ids(tmp_path / "mail")["<msg-8@example.org>"], PROMPT, "the Orders message")
        assert time.monotonic() - started < PROMPT
    finally:
        scheduler.stop()
    assert imap_support.files(imap_dovecot, "Orders") == []
