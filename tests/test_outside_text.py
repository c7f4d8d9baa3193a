"""Text from mail and servers is shown escaped: never read as rich markup, no raw control characters.

Every case runs the real ``popflow`` CLI in a subprocess against popflow's own POP3 server (its
greeting and ``-ERR`` texts scripted), and reads stdout and stderr as bytes: a raw ESC, BEL or
CR would repaint the operator's terminal, ``[/]`` used to crash rich, and ``[link=...]`` became a
live hyperlink.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from popflow.testing import FaultScript, POP3TestServer
from tests.support.pipeline import sample_message, write_config

pytestmark = pytest.mark.timeout(120)

HOSTILE_SUBJECT = "[/] [link=http://x]click[/link] \x1b]8;;http://evil\x07evil\x1b]8;;\x07 [bold]x \u202eabc\u2066 end"
HOSTILE_SERVER_TEXT = "\x1b[2J\x1b]8;;http://evil\x07[/] go away [link=http://x]y[/link]\r\x00\x7f\x9b"
RAW_CONTROLS = [b"\x1b", b"\x07", b"\r", b"\x00", b"\x7f", "\x9b".encode(), "\u202e".encode(), "\u2066".encode()]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The real CLI; wide columns so table cells are not cut, bytes so a raw CR stays visible."""
    return subprocess.run([sys.executable, "-m", "popflow", *args], capture_output=True, timeout=60, cwd=cwd,
                          env={**os.environ, "COLUMNS": "400"})


def assert_shown_safely(result: subprocess.CompletedProcess[bytes], statuses: tuple[int, ...] = (0,)) -> str:
    """No crash, no raw control character; returns stdout + stderr as text."""
    for stream in (result.stdout, result.stderr):
        assert b"Traceback" not in stream, result.stderr.decode(errors="replace")
        assert b"MarkupError" not in stream
        for raw in RAW_CONTROLS:
            assert raw not in stream, (raw, stream)
    assert result.returncode in statuses, result.stderr.decode(errors="replace")
    return result.stdout.decode() + result.stderr.decode()


def test_dead_letter_with_hostile_subject_is_listed_and_shown_escaped(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a regular file where the sink expects a folder\n")
    with POP3TestServer([sample_message(1, subject=HOSTILE_SUBJECT)]) as server:
        config = write_config(tmp_path, server, sinks={"bad": {"type": "folder", "path": "./blocker/mail",
                                                               "retries": 0}}, routes=[{"sinks": ["bad"]}])
        poll = run("poll", "-c", str(config), cwd=tmp_path)
    assert poll.returncode == 1  # the message became a dead letter
    listed = assert_shown_safely(run("dead-letters", "list", "-c", str(config), cwd=tmp_path))
    shown = assert_shown_safely(run("dead-letters", "show", "1", "-c", str(config), cwd=tmp_path))
    # The markup is printed literally, the controls as visible escapes (the encoded-word round
    # trip through the message's header may add a space before the bidi part).
    assert r"subject: [/] [link=http://x]click[/link] \x1b]8;;http://evil\x07evil\x1b]8;;\x07 [bold]x" in shown
    assert r"\u202eabc\u2066 end" in shown
    assert "[/] [link=http://x]click[/link]" in listed and r"\x1b]8;;http://evil\x07" in listed


def test_hostile_greeting_does_not_crash_poll_or_check(tmp_path: Path) -> None:
    with POP3TestServer([sample_message(1)], greeting=f"-ERR {HOSTILE_SERVER_TEXT}") as server:
        config = write_config(tmp_path, server)
        output = assert_shown_safely(run("-vv", "poll", "-c", str(config), cwd=tmp_path), (1,))
        assert r"\x1b[2J\x1b]8;;http://evil\x07[/] go away [link=http://x]y[/link]" in output
        output = assert_shown_safely(run("check", "--connect", "-c", str(config), cwd=tmp_path), (1,))
        assert "[/] go away [link=http://x]y[/link]" in output


def test_hostile_err_texts_do_not_crash_poll_or_check(tmp_path: Path) -> None:
    # A login refused with a hostile text (check --connect and the failed poll), then, on the
    # next poll, a RETR refused with one (a warning log line) while the other message is fetched.
    faults = (FaultScript()
              .on("LOGIN", err=f"-ERR [AUTH] {HOSTILE_SERVER_TEXT}", times=2)
              .on("RETR", 1, err=f"-ERR {HOSTILE_SERVER_TEXT}"))
    with POP3TestServer([sample_message(1), sample_message(2)], faults=faults) as server:
        config = write_config(tmp_path, server)
        output = assert_shown_safely(run("check", "--connect", "-c", str(config), cwd=tmp_path), (1,))
        assert "[/] go away" in output
        output = assert_shown_safely(run("-vv", "poll", "-c", str(config), cwd=tmp_path), (1,))
        assert r"\x1b[2J" in output and "refused" in output
        output = assert_shown_safely(run("-vv", "poll", "-c", str(config), cwd=tmp_path), (0, 1))
        assert r"\x1b[2J" in output and "could not be retrieved" in output
