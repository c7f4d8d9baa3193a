"""Careless configs and hostile disks give one clear line and an exit status, never a traceback.

Every case runs the real CLI in a subprocess (stderr is a pipe, not a terminal, as under cron).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from popflow.testing import POP3TestServer
from tests.support.pipeline import sample_message, write_config

pytestmark = pytest.mark.timeout(120)

SOURCE = "{host: pop.example.com, username: u, password: p}"


def popflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``popflow`` command."""
    return subprocess.run([sys.executable, "-m", "popflow", *args], capture_output=True, text=True,
                          timeout=90, cwd=cwd)


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``popflow check`` on a config holding ``text``."""
    (tmp_path / "popflow.yaml").write_text(text, encoding="utf-8")
    return popflow("check", "-c", str(tmp_path / "popflow.yaml"), cwd=tmp_path)


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr  # not a terminal: no colour codes
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_duplicate_top_level_key_is_an_error(tmp_path: Path) -> None:
    result = check(tmp_path, f"sources:\n  support: {SOURCE}\nsinks: {{}}\nsources:\n  sales: {SOURCE}\n")
    assert_config_error(result, "duplicate key 'sources'", "line 4", "first given on line 1")


def test_duplicate_nested_key_is_an_error(tmp_path: Path) -> None:
    result = check(tmp_path, "sources:\n  support:\n    host: a.example.com\n    username: u\n"
                             "    password: p\n    host: b.example.com\n")
    assert_config_error(result, "duplicate key 'host'", "line 6", "first given on line 3")


def test_duplicate_source_name_is_an_error(tmp_path: Path) -> None:
    result = check(tmp_path, f"sources:\n  support: {SOURCE}\n  support: {SOURCE}\n")
    assert_config_error(result, "duplicate key 'support'", "line 3")


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    result = check(tmp_path, "sources:\n  a: &a {host: pop.example.com, username: u, password: p}\n"
                             "  b:\n    <<: *a\n    host: other.example.com\n")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("state", ["not a url", "nosuchdb://x/y"])
def test_bad_state_url_exits_2_naming_state(tmp_path: Path, state: str) -> None:
    result = check(tmp_path, f"state: {state}\n")
    assert_config_error(result, ": state: ")
    assert "not a database URL" in result.stderr or "unknown database type" in result.stderr


@pytest.mark.parametrize(("option", "key", "minimum"), [
    ("every: 1ms", "sources.a.every", "at least 1s"),
    ("every: 0.5", "sources.a.every", "at least 1s"),
    ("timeout: 0.0001", "sources.a.timeout", "at least 100ms"),
])
def test_too_small_durations_are_rejected(tmp_path: Path, option: str, key: str, minimum: str) -> None:
    result = check(tmp_path, f"sources:\n  a: {{host: pop.example.com, username: u, password: p, {option}}}\n")
    assert_config_error(result, key, minimum)


def test_sink_timeouts_have_a_minimum(tmp_path: Path) -> None:
    result = check(tmp_path, "sinks:\n  hook: {type: webhook, url: 'https://example.com/h', secret: s, "
                             "timeout: 1ms}\n")
    assert_config_error(result, "sinks.hook.timeout", "at least 100ms")


def test_escape_codes_from_the_config_are_shown_escaped(tmp_path: Path) -> None:
    # A key holding ESC [2J (clear screen) and a bidi override: echoed back as escapes, not raw.
    result = check(tmp_path, 'sources:\n  "a\\e[2Jb\\u202e": {host: h, username: u, password: p, bogus: 1}\n')
    assert_config_error(result, "sources.a\\x1b[2Jb\\u202e.bogus: unknown key")
    assert "\u202e" not in result.stderr


@contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False, prepare: tuple[str, ...] = ()) -> Iterator[Path]:
    """A small tmpfs at ``path`` (folders ``prepare`` made inside), optionally remounted read-only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for folder in prepare:
            (path / folder).mkdir(parents=True)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro, POP3TestServer([sample_message(0)]) as server:
        config = write_config(tmp_path, server, extra={"data_dir": str(ro / "data")})
        result = popflow("poll", "-c", str(config), cwd=tmp_path)
        assert len(server.messages()) == 1  # nothing fetched, nothing lost
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: cannot create data_dir {ro / 'data'}: Read-only file system" in result.stderr.splitlines()


def test_full_data_dir_is_reported_with_its_path(tmp_path: Path) -> None:
    # The sink fails, so the message must be kept as a dead letter: data_dir is too small for it.
    (tmp_path / "blocker").write_text("a file where the sink wants a folder\n")
    mail = [sample_message(0, attachment=os.urandom(300_000))]
    with tmpfs(tmp_path / "full", "128k") as full, POP3TestServer(mail) as server:
        config = write_config(tmp_path, server, extra={"data_dir": str(full / "data")},
                              sinks={"bad": {"type": "folder", "path": "./blocker/mail", "retries": 0}},
                              routes=[{"sinks": ["bad"]}])
        result = popflow("poll", "-c", str(config), cwd=tmp_path)
        assert len(server.messages()) == 1  # not kept anywhere, so not deleted
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("test: "))
    assert f"cannot keep a copy of the message under {full / 'data' / 'messages'}" in line
    assert line.endswith("No space left on device")


def test_read_only_sink_folder_error_is_not_masked_by_cleanup(tmp_path: Path) -> None:
    # Writing into a read-only Maildir fails with EROFS; removing the temp file that was never
    # created fails with EROFS too. The sink's own error must be the one reported and kept.
    with tmpfs(tmp_path / "ro", "1m", read_only=True, prepare=("mail/tmp", "mail/new", "mail/cur")) as ro, \
            POP3TestServer([sample_message(0)]) as server:
        config = write_config(tmp_path, server, sinks={
            "archive": {"type": "folder", "path": str(ro / "mail"), "retries": 1, "backoff": "10ms"}})
        result = popflow("poll", "-c", str(config), cwd=tmp_path)
        listed = popflow("dead-letters", "show", "1", "-c", str(config), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert "unexpected error" not in result.stderr, result.stderr
    assert f"folder sink 'archive': cannot write {ro / 'mail' / 'tmp'}" in result.stderr
    assert f"folder sink 'archive': cannot write {ro / 'mail' / 'tmp'}" in listed.stdout.replace("\n", ""), \
        listed.stdout
