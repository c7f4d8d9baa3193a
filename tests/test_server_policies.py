"""What real servers announce in CAPA and popflow must honour (issue 15), against popflow's own server
scripted as those servers behave (popflow.testing.pop3policy):

* Courier: ``UTF8`` (RFC 6856) — without it, a message with 8-bit headers is served as a generated
  substitute, which popflow would store and, in delete mode, delete the original for;
* Cyrus: ``LOGIN-DELAY n`` (RFC 2449) — a login within ``n`` seconds is refused;
* ``EXPIRE 0`` — a QUIT deletes every retrieved message; ``EXPIRE NEVER`` and mailutils' ``EXPIRENEVER``.
"""

from __future__ import annotations

import logging
import poplib
import time
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner

from popflow.cli import main
from popflow.context import LoginDelay, RuntimeContext
from popflow.login_delays import MARGIN, LoginDelays
from popflow.scheduler import PollScheduler, trigger_for
from popflow.sources.pop3 import Pop3Config
from popflow.sources.pop3_caps import EXPIRE_NEVER, check_policy, parse_capabilities, server_policy
from popflow.testing import POP3TestServer
from popflow.testing.mailbox import to_wire
from popflow.testing.pop3policy import SUBSTITUTE_SUBJECT
from tests.support.pipeline import maildir_files, make_app, sample_message, write_config

pytestmark = pytest.mark.timeout(60)


def unicode_message(index: int) -> bytes:
    """A message with raw UTF-8 in its headers (RFC 6532), as Courier stores them."""
    return (f"From: Jürgen Groß <jürgen@example.org>\r\nTo: support@example.com\r\n"
            f"Subject: Grüße aus Köln, Nummer {index} — ✓\r\nMessage-ID: <utf8-{index}@example.org>\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"\r\nHallo, schöne Grüße ({index}).\r\n").encode()


def check_connect(config: Path) -> str:
    result = CliRunner().invoke(main, ["check", "-c", str(config), "--connect"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


# -- UTF8 (Courier) ---------------------------------------------------------------------------------
def test_utf8_is_sent_and_the_originals_are_stored_not_substitutes(tmp_path: Path) -> None:
    originals = [unicode_message(i) for i in range(3)] + [sample_message(9)]
    with POP3TestServer(originals, utf8=True) as server:
        # The scripted server does what Courier does to a client that does not send UTF8.
        client = poplib.POP3(server.host, server.port, timeout=5)
        client.user(server.username)
        client.pass_(server.password)
        served = b"\r\n".join(client.retr(1)[1])
        assert SUBSTITUTE_SUBJECT in served and b"message/global" in served
        client.quit()

        config = write_config(tmp_path, server)
        app = make_app(config)
        try:
            report = app.poll("test")
        finally:
            app.close()
        assert report.clean, report.error
        assert server.stats.commands["UTF8"] == 1
        assert server.messages() == []  # delete mode: what was deleted is what was stored
        stored = sorted(path.read_bytes() for path in maildir_files(tmp_path / "mail"))
        assert stored == sorted(to_wire(raw) for raw in originals)
        assert check_connect(config).count("UTF8 on (RFC 6856)") == 1


def test_utf8_is_not_sent_to_a_server_that_does_not_offer_it(tmp_path: Path) -> None:
    with POP3TestServer([sample_message(1)]) as server:
        output = check_connect(write_config(tmp_path, server))
        assert "UTF8" not in output
        assert server.stats.commands["UTF8"] == 0


# -- LOGIN-DELAY (Cyrus) ----------------------------------------------------------------------------
def test_run_polls_no_more_often_than_login_delay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with POP3TestServer([sample_message(1)], login_delay=2) as server:
        app = make_app(write_config(tmp_path, server, source={"every": "1s"}))
        scheduler = PollScheduler(app)
        caplog.set_level(logging.INFO, logger="popflow.scheduler")
        try:
            scheduler.start()
            time.sleep(4.5)  # every: 1s would log in 4-5 times; the delay allows 2 (at 0 s and ~3 s)
        finally:
            scheduler.stop()
            app.close()
        assert server.stats.delayed_logins == 0
        assert server.stats.logins >= 2
        announced = [r for r in caplog.records if "LOGIN-DELAY" in r.getMessage()]
        assert len(announced) == 1, [r.getMessage() for r in announced]
        assert "polling every 3s instead of every 1s" in announced[0].getMessage()


def test_check_shows_login_delay_and_a_refusal_names_it(tmp_path: Path) -> None:
    with POP3TestServer([sample_message(1)], login_delay=60) as server:
        config = write_config(tmp_path, server, source={"every": "15s"})
        assert "LOGIN-DELAY 60s: polls every 60s, not every: 15s" in check_connect(config)
        app = make_app(config)
        try:
            report = app.poll("test")  # within 60 s of check's login
        finally:
            app.close()
        assert server.stats.delayed_logins == 1
        assert report.error is not None and "at least 60s after the last login" in report.error


def test_per_user_login_delay_is_read_after_login(tmp_path: Path) -> None:
    with POP3TestServer([sample_message(1)], capabilities=["LOGIN-DELAY 900 USER"],
                        capabilities_after_login=["LOGIN-DELAY 120"]) as server:
        config = write_config(tmp_path, server)
        app = make_app(config)
        try:
            assert app.poll("test").clean
            delay = app.context.login_delays["test"]
        finally:
            app.close()
        assert delay.seconds == 120
        assert server.stats.commands["CAPA"] == 2


def test_a_cron_tick_within_the_delay_is_postponed() -> None:
    options = Pop3Config.model_validate({"host": "h", "username": "u", "password": "p", "cron": "* * * * *"})
    scheduler = BackgroundScheduler()
    scheduler.start(paused=True)
    try:
        scheduler.add_job(print, trigger_for(options), id="s")
        context = RuntimeContext(data_dir=Path("/nonexistent"))
        now = time.time()
        context.login_delays["s"] = LoginDelay(300, now)
        LoginDelays(scheduler, context, trigger_for).after_poll("s", options)
        job = scheduler.get_job("s")
        assert job is not None and job.next_run_time.timestamp() >= now + 300 + MARGIN - 0.01
    finally:
        scheduler.shutdown(wait=False)


# -- EXPIRE -----------------------------------------------------------------------------------------
def test_keep_on_server_survives_expire_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """EXPIRE 0: QUIT deletes what was retrieved; keep_on_server must still keep the mail."""
    messages = [sample_message(i) for i in range(3)]
    with POP3TestServer(messages, expire="0") as server:
        config = write_config(tmp_path, server, source={"keep_on_server": True})
        caplog.set_level(logging.WARNING)
        for _ in range(2):
            app = make_app(config)
            try:
                assert app.poll("test").clean
            finally:
                app.close()
        assert server.messages() == messages
        assert sorted(p.read_bytes() for p in maildir_files(tmp_path / "mail")) == sorted(map(to_wire, messages))
        assert sum("EXPIRE 0" in r.getMessage() for r in caplog.records) == 1  # warned once per process
        assert "warning: keep_on_server: the server does not allow" in check_connect(config)


def test_delete_mode_under_expire_0_never_loses_a_deferred_message(tmp_path: Path) -> None:
    """A message popflow retrieved but could not hand over must not be expunged by QUIT."""
    plugin = tmp_path / "plugins" / "defer_second.py"
    plugin.parent.mkdir()
    plugin.write_text("from popflow import hookimpl\nfrom popflow.errors import DeferMessage\n\n"
                      "@hookimpl\ndef popflow_transform(message):\n"
                      "    if 'number 1' in (message.subject or ''):\n"
                      "        raise DeferMessage('not today')\n")
    messages = [sample_message(i) for i in range(3)]
    with POP3TestServer(messages, expire="0") as server:
        config = write_config(tmp_path, server, extra={"plugins_dir": [str(plugin.parent)]})
        app = make_app(config)
        try:
            first = app.poll("test")
        finally:
            app.close()
        assert first.error is not None and "EXPIRE 0" in first.error
        assert server.messages() == messages  # nothing expunged: no QUIT
        plugin.write_text("")  # the deferral clears
        app = make_app(config)
        try:
            second = app.poll("test")
        finally:
            app.close()
        assert second.clean, second.error
        assert server.messages() == []
        stored = sorted(p.read_bytes() for p in maildir_files(tmp_path / "mail"))
        assert stored == sorted(map(to_wire, messages))  # each exactly once


@pytest.mark.parametrize(("lines", "expire", "login_delay", "per_user"), [
    ([b"EXPIRE NEVER"], EXPIRE_NEVER, None, False),
    ([b"EXPIRENEVER"], EXPIRE_NEVER, None, False),  # GNU mailutils 3.15
    ([b"EXPIRE 0"], 0, None, False),
    ([b"EXPIRE 30 USER", b"LOGIN-DELAY 60"], 30, 60, True),
    ([b"LOGIN-DELAY 900 USER"], None, 900, True),
    ([b"LOGIN-DELAY soon", b"EXPIRE"], None, None, False),
])
def test_capa_policies_are_parsed(lines: list[bytes], expire: Any, login_delay: int | None, per_user: bool) -> None:
    policy = server_policy(parse_capabilities(b"\r\n".join([b"TOP", b"UIDL", *lines])))
    assert (policy.expire, policy.login_delay, policy.per_user) == (expire, login_delay, per_user)
    if login_delay is None and expire is None:
        assert len(policy.problems) == 2


def test_expire_days_shorter_than_delete_after_is_a_warning() -> None:
    policy = server_policy(parse_capabilities(b"EXPIRE 7\r\n"))
    found = check_policy(policy, every=60, cron=None, keep_on_server=True, delete_after=30 * 86400)
    assert found.warnings and "after 7 day(s)" in found.warnings[0]
    assert not check_policy(policy, every=60, cron=None, keep_on_server=True, delete_after=86400).warnings
