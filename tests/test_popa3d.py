"""popflow against a real popa3d 1.0.3, whose UIDLs are a hash of a few headers.

Messages with the same From/To/Subject and no Date/Message-ID share one UIDL, so one listing names
one UIDL for several different messages. popflow must still deliver each of them exactly once,
in delete mode and in keep mode, and a poll must not fail because of it (README: "one UIDL listed
for several messages ... never costs a message").
"""

from __future__ import annotations

import poplib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pipeline import maildir_files, sample_message
from tests.support.popa3d import Popa3dServer

pytestmark = pytest.mark.timeout(180)

LOOKALIKE_POSITIONS = [2, 7, 13, 21, 22, 30, 41, 49]
"""Where in the 50-message mailbox the 8 lookalikes sit (0-based): spread out, two adjacent."""


def lookalike(index: int) -> bytes:
    """Same From/To/Subject as every other lookalike, no Date, no Message-ID, its own body."""
    return (b"From: Disk Monitor <monitor@example.com>\r\n"
            b"To: ops@example.com\r\n"
            b"Subject: disk almost full\r\n"
            b"\r\n"
            b"host db-%d: /var at %d%% (alert %d of 8)\r\n" % (index, 90 + index, index + 1))


def mailbox() -> list[bytes]:
    """50 messages: 42 distinct ones (each with a Message-ID) and the 8 lookalikes among them."""
    distinct = iter(sample_message(index) for index in range(42))
    lookalikes = iter(lookalike(index) for index in range(8))
    messages = [next(lookalikes) if position in LOOKALIKE_POSITIONS else next(distinct) for position in range(50)]
    assert len(set(messages)) == 50
    assert not any(re.search(rb"^>*From ", m, re.M) for m in messages)  # served exactly as given
    return messages


def write_config(tmp_path: Path, server: Popa3dServer, **source: Any) -> Path:
    """A popflow.yaml polling ``server`` (plain POP3, USER/PASS) into a Maildir folder sink."""
    options = {"type": "pop3", "host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
               "auth": "user", "username": server.username, "password": server.password, "timeout": "20s"}
    options.update(source)
    data = {
        "state": "sqlite:///state.db",
        "data_dir": "./data",
        "sources": {"popa3d": options},
        "sinks": {"archive": {"type": "folder", "path": "./mail", "layout": "maildir", "backoff": "10ms"}},
        "routes": [{"sinks": ["archive"]}],
    }
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def poll(config: Path) -> subprocess.CompletedProcess[str]:
    """``popflow poll`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "popflow", "-v", "poll", "-c", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=config.parent)


def delivered(tmp_path: Path) -> list[bytes]:
    return [path.read_bytes() for path in maildir_files(tmp_path / "mail")]


def check_exactly_once(got: list[bytes], expected: list[bytes], output: str,
                       lookalike_positions: list[int] = LOOKALIKE_POSITIONS) -> None:
    """Every expected message delivered once, nothing else: a readable report if not."""
    have, want = Counter(got), Counter(expected)
    missing = [expected.index(m) for m in want if have[m] < want[m]]
    doubled = [expected.index(m) for m in want if have[m] > want[m]]
    strangers = sum(count for m, count in have.items() if m not in want)
    lookalikes = [i for i in missing if i in lookalike_positions]
    assert not (missing or doubled or strangers), (
        f"{len(got)} delivered for {len(expected)} messages: missing positions {missing} "
        f"({len(lookalikes)} of them lookalikes sharing one UIDL), delivered twice {doubled}, "
        f"{strangers} unknown\n--- popflow output ---\n{output}")


def check_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 0, f"popflow poll exited {result.returncode}\n{output}"
    assert re.search(r"errors=0\b", output), output


def test_popa3d_lists_one_uidl_for_the_eight_lookalikes(popa3d: Popa3dServer) -> None:
    messages = mailbox()
    popa3d.fill(messages)
    client = poplib.POP3(popa3d.host, popa3d.port, timeout=20)
    try:
        client.user(popa3d.username)
        client.pass_(popa3d.password)
        listing = [line.decode().split() for line in client.uidl()[1]]
        uidls = {int(number): uidl for number, uidl in listing}
        assert sorted(uidls) == list(range(1, 51))
        counts = Counter(uidls.values())
        (shared, times), *rest = counts.most_common()
        assert times == 8, counts
        assert all(count == 1 for _, count in rest)  # the 42 others are unique
        assert sorted(n - 1 for n, u in uidls.items() if u == shared) == LOOKALIKE_POSITIONS
        for number in range(1, 51):  # one UIDL, eight different messages: popa3d serves each as stored
            lines = client.retr(number)[1]
            assert b"".join(line + b"\r\n" for line in lines) == messages[number - 1]
    finally:
        client.quit()
    assert popa3d.remaining() == 50


def test_sanity_ten_distinct_messages_delete_mode(popa3d: Popa3dServer, tmp_path: Path) -> None:
    """Proves the fixture: ordinary mail through popa3d is delivered once and deleted."""
    messages = [sample_message(index) for index in range(10)]
    popa3d.fill(messages)
    config = write_config(tmp_path, popa3d)
    first = poll(config)
    check_exactly_once(delivered(tmp_path), messages, first.stdout + first.stderr, lookalike_positions=[])
    check_clean(first)
    assert popa3d.remaining() == 0
    second = poll(config)
    check_clean(second)
    assert len(delivered(tmp_path)) == 10


def test_duplicate_uidls_delete_mode_every_message_once(popa3d: Popa3dServer, tmp_path: Path) -> None:
    messages = mailbox()
    popa3d.fill(messages)
    config = write_config(tmp_path, popa3d)
    first = poll(config)
    check_exactly_once(delivered(tmp_path), messages, first.stdout + first.stderr)
    check_clean(first)
    assert popa3d.remaining() == 0, f"{popa3d.remaining()} left on the server\n{first.stdout + first.stderr}"
    second = poll(config)
    check_clean(second)
    check_exactly_once(delivered(tmp_path), messages, second.stdout + second.stderr)


def test_duplicate_uidls_keep_mode_every_message_once(popa3d: Popa3dServer, tmp_path: Path) -> None:
    messages = mailbox()
    popa3d.fill(messages)
    stored = popa3d.stored()
    config = write_config(tmp_path, popa3d, keep_on_server=True)
    outputs = []
    for _ in range(2):
        result = poll(config)
        outputs.append(result.stdout + result.stderr)
        check_exactly_once(delivered(tmp_path), messages, "\n".join(outputs))
        check_clean(result)
    assert popa3d.remaining() == 50
    assert popa3d.stored() == stored
