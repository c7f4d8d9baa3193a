"""Helpers for crash and fault tests: `popflow` in a subprocess, and counting what each sink holds.

The delivery guarantee is checked by Message-ID, not by file or row count: a message delivered
twice under two names would pass a count and fail here.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)

READY_MARK = "logged in"
"""What the poll subprocess logs (at -vv) once its POP3 session is open: the kill clock starts there."""


def message_id(raw: bytes) -> str:
    """The Message-ID of a raw message (first one in the header block), or ``""``."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    return found.group(1).decode("ascii", "replace") if found else ""


def maildir_ids(path: Path) -> Counter[str]:
    """Message-IDs of every message in a Maildir's ``new/`` and ``cur/`` (``tmp/`` is not delivered)."""
    found: Counter[str] = Counter()
    for sub in ("new", "cur"):
        folder = path / sub
        if folder.is_dir():
            for file in folder.iterdir():
                found[message_id(file.read_bytes())] += 1
    return found


def db_ids(path: Path, table: str = "popflow_messages") -> Counter[str]:
    """Message-IDs of the rows of a SQLite database sink (empty when the table does not exist yet)."""
    if not path.exists():
        return Counter()
    with sqlite3.connect(path, timeout=30) as connection:
        try:
            rows = connection.execute(f"select message_id from {table}").fetchall()
        except sqlite3.OperationalError:
            return Counter()
    return Counter(row[0] or "" for row in rows)


def ledger_states(path: Path) -> Counter[str]:
    """How many ledger rows are in each state (``handled``, ``deleted``, ...)."""
    if not path.exists():
        return Counter()
    with sqlite3.connect(path, timeout=30) as connection:
        try:
            rows = connection.execute("select state, count(*) from popflow_ledger group by state").fetchall()
        except sqlite3.OperationalError:
            return Counter()
    return Counter({state: count for state, count in rows})


def write_yaml_config(tmp_path: Path, data: dict[str, Any], name: str = "popflow.yaml") -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pop3_source(host: str, port: int, username: str, password: str, **options: Any) -> dict[str, Any]:
    """A plain-text POP3 source entry for a loopback test server."""
    entry: dict[str, Any] = {"type": "pop3", "host": host, "port": port, "tls": "none", "allow_insecure": True,
                             "username": username, "password": password, "timeout": "10s"}
    entry.update(options)
    return entry


def popflow_command(config: Path, *args: str, plugins_dir: Path | None = None, verbose: bool = False) -> list[str]:
    """``python -m popflow [--plugins-dir D] [-vv] <args> -c config``, for this interpreter."""
    command = [sys.executable, "-m", "popflow"]
    if plugins_dir is not None:
        command += ["--plugins-dir", str(plugins_dir)]
    if verbose:
        command.append("-vv")
    return [*command, *args, "-c", str(config)]


@dataclass
class Finished:
    """How one subprocess ended: exit code (negative: killed by that signal), seconds, its log."""

    code: int
    seconds: float
    log: str
    killed: bool


def start_poll(config: Path, log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``popflow poll`` with its output (at -vv) going to ``log_path``."""
    out = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed right after the fork
    try:
        return subprocess.Popen(popflow_command(config, "poll", verbose=True, **kwargs), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, cwd=config.parent,
                                env={**os.environ, "COLUMNS": "200"})
    finally:
        out.close()


def wait_for_text(log_path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    """Wait until ``text`` appears in the log (True) or the process ends / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return text in log_path.read_text(errors="replace")
        time.sleep(0.005)
    return False


def kill_after(process: subprocess.Popen[bytes], delay: float, log_path: Path,
               sig: signal.Signals = signal.SIGKILL, timeout: float = 60.0) -> Finished:
    """Send ``sig`` after ``delay`` seconds unless the process ended first; wait for it to end."""
    started = time.monotonic()
    killed = False
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(sig)
        killed = True
    code = process.wait(timeout)
    return Finished(code, time.monotonic() - started, log_path.read_text(errors="replace"), killed)


def dovecot_sessions_open(log_text: str) -> int:
    """POP3 sessions a Dovecot log shows as logged in and not yet disconnected."""
    logins = sum(1 for line in log_text.splitlines() if "pop3-login:" in line and "Login: " in line)
    ends = sum(1 for line in log_text.splitlines() if line.find("pop3(") >= 0 and "Disconnected" in line)
    return logins - ends


def wait_dovecot_idle(server: Any, timeout: float = 20.0) -> None:
    """Wait until a killed client's Dovecot session has ended (it may still be expunging after QUIT)."""
    deadline = time.monotonic() + timeout
    while dovecot_sessions_open(server.log()) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"Dovecot sessions still open after {timeout}s:\n{server.log()[-2000:]}")
        time.sleep(0.02)


def server_ids(server: Any) -> Counter[str]:
    """Message-IDs of the messages on a (private Dovecot) server, read tolerantly of files moving."""
    found: Counter[str] = Counter()
    for sub in ("new", "cur"):
        for file in (server.maildir / sub).iterdir():
            try:
                found[message_id(file.read_bytes())] += 1
            except FileNotFoundError:  # moved new/ → cur/ while we listed: read again below
                return server_ids(server)
    return found
