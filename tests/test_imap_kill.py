"""``popflow poll`` over IMAP SIGKILLed mid-batch, again and again: every message ends up exactly once.

A private Dovecot holds 200 messages (topped up while kills are to come); ``popflow poll`` (a real
subprocess, its own process group)
drains them over implicit TLS with ``after: delete`` into a Maildir folder sink and a SQLite
database sink, in batches of 10 (``UID FETCH`` of 10, then the sinks, the ledger, ``UID STORE
\\Deleted`` + ``UID EXPUNGE``). Each run is SIGKILLed (the whole process group) at a seeded random
moment after its first delivery began. After every kill: no message is in a sink twice, and none
left the server that is not in both sinks. A final run without a kill must end with the mailbox
empty and every message in each sink exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import imap as imap_support
from tests.support.dovecot import DovecotServer, dovecot, dovecot_server  # noqa: F401
from tests.support.imap import files, imap_source
from tests.support.killing import (
    db_ids,
    maildir_ids,
    message_id,
    popflow_command,
    server_ids,
    wait_for_text,
    write_yaml_config,
)
from tests.support.pipeline import sample_message

imap_dovecot = imap_support.imap_dovecot
pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("POPFLOW_KILL_SEED", "20261203"))
MESSAGES = 200
KILLS = 8
MAX_KILLS = 4 * KILLS
"""Past KILLS, keep killing (up to this) until one kill landed between a delivery and its expunge."""
REFILL_BELOW, REFILL = 60, 100
KILL_DELAY = (0.0, 0.4)
WORK_MARK = "at schema revision"
"""Logged (at -vv) by the database sink when it opens: the first batch is about to be delivered."""


def imap_sessions_open(log_text: str) -> int:
    """IMAP sessions Dovecot shows as logged in and not yet disconnected."""
    lines = log_text.splitlines()
    logins = sum(1 for line in lines if "imap-login:" in line and "Login: " in line)
    ends = sum(1 for line in lines if "imap(" in line and ("Disconnected" in line or "Logged out" in line))
    return logins - ends


def wait_server_done(server: DovecotServer, baseline: int, timeout: float = 20.0) -> None:
    """A killed client's IMAP session may still be expunging: wait until Dovecot has ended it
    (``baseline``: sessions open before this test, e.g. another test's still closing)."""
    deadline = time.monotonic() + timeout
    while imap_sessions_open(server.log()) > baseline:
        assert time.monotonic() < deadline, f"IMAP sessions still open:\n{server.log()[-2000:]}"
        time.sleep(0.02)


def test_sigkill_mid_batch_delivers_every_message_exactly_once(tmp_path: Path,
                                                               imap_dovecot: DovecotServer) -> None:
    rng = random.Random(SEED)
    all_ids: set[str] = set()

    def deliver(count: int) -> None:
        for index in range(len(all_ids), len(all_ids) + count):
            raw = sample_message(index)
            all_ids.add(message_id(raw))
            imap_dovecot.deliver(raw)

    deliver(MESSAGES)
    config = write_yaml_config(tmp_path, {
        "state": "sqlite:///state.db",
        "data_dir": "./data",
        "batch_size": 10,
        "sources": {"imap": imap_source(imap_dovecot, fetch_batch=10)},
        "sinks": {"archive": {"type": "folder", "path": "./mail", "layout": "maildir", "backoff": "10ms"},
                  "db": {"type": "database", "url": "sqlite:///mail.db", "backoff": "10ms"}},
        "routes": [{"sinks": ["archive", "db"]}],
    })
    kills, history, before_expunge = 0, [], 0
    baseline = imap_sessions_open(imap_dovecot.log())
    for run in range(MAX_KILLS + 10):
        log_path = tmp_path / f"poll-{run}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(popflow_command(config, "poll", verbose=True), stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        killing = kills < KILLS or (not before_expunge and kills < MAX_KILLS)
        if killing and wait_for_text(log_path, WORK_MARK, process, timeout=60):
            time.sleep(rng.uniform(*KILL_DELAY))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                kills += 1
        code = process.wait(120)
        wait_server_done(imap_dovecot, baseline)
        in_maildir, in_db, on_server = maildir_ids(tmp_path / "mail"), db_ids(tmp_path / "mail.db"), \
            server_ids(imap_dovecot)
        history.append(f"{'K' if code == -signal.SIGKILL else code}/{sum(on_server.values())}")
        assert max(in_maildir.values(), default=1) == 1, "a message is in the Maildir twice"
        assert max(in_db.values(), default=1) == 1, "a message is in the database twice"
        lost = (all_ids - set(on_server)) - (set(in_maildir) & set(in_db))
        assert not lost, f"expunged but not in both sinks: {sorted(lost)[:5]}"
        if code == -signal.SIGKILL and (set(in_maildir) | set(in_db)) & set(on_server):
            before_expunge += 1  # killed between a sink's commit and the UID EXPUNGE: the hard window
        if code == 0 and not killing:
            break
        assert code in (0, -signal.SIGKILL), log_path.read_text()[-3000:]
        if killing and sum(on_server.values()) < REFILL_BELOW:  # keep work there while we kill
            deliver(REFILL)
    print(f"\nIMAP kill test (seed {SEED}): {kills} SIGKILLs; runs (K killed / left on server): {' '.join(history)}")
    print(f"kills that left delivered messages on the server (redelivery then must not happen): {before_expunge}")
    assert kills >= KILLS // 2, f"too few kills landed mid-run: {history}"
    assert before_expunge >= 1, f"no kill landed between delivery and expunge: {history}"
    assert files(imap_dovecot) == []
    assert maildir_ids(tmp_path / "mail") == {key: 1 for key in all_ids}
    assert db_ids(tmp_path / "mail.db") == {key: 1 for key in all_ids}
    assert not list((tmp_path / "data").rglob("spool-*"))
