"""The kill test: `popflow poll` SIGKILLed at random moments, again and again, never loses or doubles mail.

A private Dovecot holds a few hundred messages with unique Message-IDs. `popflow poll` (a real
subprocess, `python -m popflow`) drains them into a Maildir folder sink and a SQLite database
sink, in batches of 10 so that kills land between the sink commits, the ledger commit, DELE and
QUIT. Each poll is killed at a random moment after its POP3 login (seeded, so a failure can be
replayed with the same seed). After every kill the invariants are checked at once:

* no message is in a sink twice;
* every message that left the server is in both sinks (nothing deleted before it was delivered).

When a poll finally exits 0 with the server empty, every message is in each sink exactly once.
While kills are still to come, the mailbox is topped up with another 100 messages whenever it
runs low, so the number of kills that land on real work does not depend on how fast the machine
is. Each kill is classified by what it left behind (:class:`Window`); kills go on past
``MIN_KILLS`` until every window of the order of work has been hit at least once.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dovecot import DovecotServer
from tests.support.killing import (
    READY_MARK,
    db_ids,
    kill_after,
    ledger_states,
    maildir_ids,
    message_id,
    pop3_source,
    server_ids,
    start_poll,
    wait_dovecot_idle,
    wait_for_text,
    write_yaml_config,
)
from tests.support.pipeline import sample_message

pytestmark = pytest.mark.timeout(400)

SEED = int(os.environ.get("POPFLOW_KILL_SEED", "20261126"))
FIRST_WAVE = 300
NEXT_WAVE = 100
REFILL_BELOW = 50
MIN_KILLS = int(os.environ.get("POPFLOW_KILLS", "30"))
MAX_KILLS = 3 * MIN_KILLS
"""Past MIN_KILLS, keep killing (up to this) until every window of the order of work was hit."""
MAX_POLLS = 2 * MAX_KILLS + 20
KILL_DELAY = (0.0, 0.35)
"""Seconds after the first delivery starts; the process start (imports, login, migrations) is not
what is being tested, and on a busy machine it would swallow most kills."""
WORK_MARK = "at schema revision"
"""Logged by the database sink when it opens, i.e. when the first batch is about to be delivered."""
REQUIRED_WINDOWS = ("between_sinks", "sinks_before_ledger", "ledger_before_quit")


@dataclass
class Window:
    """Where in the order of work one kill landed, judged from what it left behind.

    ``no_trace`` (none of these) is a kill during LIST/RETR/parse, a write not yet committed, or
    after the poll's QUIT and ledger update.
    """

    between_sinks: bool = False
    sinks_before_ledger: bool = False
    ledger_before_quit: bool = False
    quit_before_ledger_deleted: bool = False

    def names(self) -> list[str]:
        """The windows this kill left evidence of (several at once is possible)."""
        found = [name for name, hit in vars(self).items() if hit]
        return found or ["no_trace"]


def _config(tmp_path: Path, server: DovecotServer) -> Path:
    return write_yaml_config(tmp_path, {
        "state": "sqlite:///state.db",
        "data_dir": "./data",
        "batch_size": 10,
        "sources": {"dove": pop3_source(server.host, server.port, server.username, server.password)},
        "sinks": {"archive": {"type": "folder", "path": "./mail", "layout": "maildir", "backoff": "10ms"},
                  "db": {"type": "database", "url": "sqlite:///mail.db", "backoff": "10ms"}},
        "routes": [{"sinks": ["archive", "db"]}],
    })


def _deliver_wave(server: DovecotServer, start: int, count: int) -> list[str]:
    ids = []
    for index in range(start, start + count):
        raw = sample_message(index)
        ids.append(message_id(raw))
        server.deliver(raw)
    return ids


def _check_invariants(tmp_path: Path, server: DovecotServer, all_ids: set[str]) -> Window:
    """No duplicate anywhere; nothing gone from the server that is not in both sinks. Returns the window."""
    in_maildir = maildir_ids(tmp_path / "mail")
    in_db = db_ids(tmp_path / "mail.db")
    ledger = ledger_states(tmp_path / "state.db")
    wait_dovecot_idle(server)
    on_server = server_ids(server)
    assert max(in_maildir.values(), default=1) == 1, "a message is in the Maildir twice"
    assert max(in_db.values(), default=1) == 1, "a message is in the database twice"
    assert max(on_server.values(), default=1) == 1
    gone = all_ids - set(on_server)
    lost = gone - (set(in_maildir) & set(in_db))
    assert not lost, f"deleted from the server but not in both sinks: {sorted(lost)[:5]}"
    assert set(in_maildir) <= all_ids
    assert set(in_db) <= all_ids
    handled = ledger["handled"] + ledger["deleted"]
    in_both = len(set(in_maildir) & set(in_db))
    return Window(
        between_sinks=set(in_maildir) != set(in_db),
        sinks_before_ledger=in_both > handled,
        ledger_before_quit=handled > len(gone),
        quit_before_ledger_deleted=len(gone) > ledger["deleted"],
    )


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(dovecot: DovecotServer,
                                                                tmp_path: Path) -> None:
    rng = random.Random(SEED)
    config = _config(tmp_path, dovecot)
    all_ids = set(_deliver_wave(dovecot, 0, FIRST_WAVE))
    windows: Counter[str] = Counter()
    kills = polls = 0
    started = time.monotonic()
    final_log = ""
    history: list[str] = []
    while True:
        polls += 1
        assert polls <= MAX_POLLS, f"no clean poll after {MAX_POLLS} polls ({kills} kills)"
        missing = [name for name in REQUIRED_WINDOWS if not windows[name]]
        killing = kills < MIN_KILLS or bool(missing and kills < MAX_KILLS)
        log_path = tmp_path / f"poll-{polls}.log"
        process = start_poll(config, log_path)
        ready = wait_for_text(log_path, READY_MARK, process) and wait_for_text(log_path, WORK_MARK, process)
        delay = rng.uniform(*KILL_DELAY) if killing and ready else 120.0
        finished = kill_after(process, delay, log_path)
        window = _check_invariants(tmp_path, dovecot, all_ids)
        history.append(f"{'K' if finished.killed else finished.code}{finished.seconds:.2f}/{dovecot.count()}")
        if finished.killed:
            kills += 1
            windows.update(window.names())
        elif finished.code != 0:
            # A poll that ended on its own but not cleanly is a failure: nothing here should go wrong.
            pytest.fail(f"poll {polls} exited {finished.code} without being killed:\n{finished.log[-3000:]}")
        elif not killing:
            assert dovecot.count() == 0, finished.log[-3000:]
            final_log = finished.log
            break
        if killing and dovecot.count() < REFILL_BELOW:  # keep work in the mailbox while we kill
            all_ids |= set(_deliver_wave(dovecot, len(all_ids), NEXT_WAVE))

    in_maildir = maildir_ids(tmp_path / "mail")
    in_db = db_ids(tmp_path / "mail.db")
    assert dovecot.count() == 0
    assert set(in_maildir) == all_ids, "Maildir: lost"
    assert set(in_maildir.values()) == {1}, "Maildir: duplicated"
    assert set(in_db) == all_ids, "database: lost"
    assert set(in_db.values()) == {1}, "database: duplicated"
    assert sum(1 for _ in (tmp_path / "mail" / "tmp").iterdir()) <= kills  # at most one stray per kill
    assert not list((tmp_path / "data" / "spool").glob("spool-*")), "spool files left behind"
    assert "poll dove:" in final_log
    assert "failed:" not in final_log
    elapsed = time.monotonic() - started
    print(f"\nkill test (seed {SEED}): {len(all_ids)} messages, {kills} SIGKILLs survived in {polls} polls, "
          f"{elapsed:.1f}s; lost 0, duplicates 0; windows hit: {dict(windows)}")
    print("polls (K: killed, exit code; seconds after the first delivery / left on server):", " ".join(history))
    # Every step of the order of work must have been interrupted at least once for the test to mean much.
    for name in REQUIRED_WINDOWS:
        assert windows[name] > 0, f"no kill landed in {name}: {dict(windows)}"
