"""Replay claims and concurrent delivery records in the state store, on SQLite, PostgreSQL and MariaDB.

A dead letter or quarantine entry is claimed by one replay at a time (a stale claim, or one whose
process is gone, can be taken over); and recording a delivery another process recorded a moment
earlier is not an IntegrityError.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from popflow.processes import new_owner, this_host
from popflow.state import StateStore

pytestmark = pytest.mark.timeout(60)


def _add(store: StateStore, kind: str) -> int:
    if kind == "dead-letter":
        return store.add_dead_letter(source="src", uidl="u1", sink="hook", stage="deliver", error="503",
                                     attempts=1, sha256="ab" * 32, size=10, subject="hi")
    return store.add_quarantined(source="src", uidl="u1", verdicts=[{"infected": True}], sha256="ab" * 32,
                                 size=10, subject="hi")


def _ops(store: StateStore, kind: str) -> tuple[Any, Any, Any]:
    if kind == "dead-letter":
        return store.claim_dead_letter, store.release_dead_letter_claim, store.mark_dead_letter_replayed
    return store.claim_quarantined, store.release_quarantine_claim, store.mark_released


@pytest.mark.parametrize("kind", ["dead-letter", "quarantine"])
def test_an_entry_is_claimed_by_one_replay_at_a_time(store_url: str, kind: str) -> None:
    store = StateStore(store_url)
    try:
        entry = _add(store, kind)
        claim, unclaim, done = _ops(store, kind)
        first, second = new_owner(), new_owner()
        assert claim(entry, first)
        assert not claim(entry, second)
        unclaim(entry, second)  # not its claim: changes nothing
        assert not claim(entry, second)
        assert claim(entry, second, stale_after=0)  # an abandoned claim is taken over
        unclaim(entry, second)
        assert claim(entry, f"{this_host()}:999999999:gone")  # a claimant that then crashed...
        assert claim(entry, first)  # ...is taken over at once
        done(entry)
        assert not claim(entry, second)  # replayed / released: nothing left to claim
    finally:
        store.close()


def test_recording_a_delivery_another_process_just_recorded_is_no_error(store_url: str) -> None:
    mine, theirs = StateStore(store_url), StateStore(store_url)
    try:
        def insert_theirs_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            # Between our check for the row and our INSERT, the other process records it and commits.
            if statement.lstrip().upper().startswith("INSERT INTO POPFLOW_DELIVERIES") and not raced:
                raced.append(True)
                theirs.record_deliveries([("src", "u1", "hook"), ("src", "u2", "hook")])

        raced: list[bool] = []
        event.listen(mine.engine, "before_cursor_execute", insert_theirs_first)
        mine.record_deliveries([("src", "u1", "hook")])
        assert raced
        raced.clear()
        mine.record_handled([], [("src", "u2", "hook"), ("src", "u3", "hook")])
        assert raced
        assert mine.deliveries_pending("src", ["u1", "u2", "u3"]) == {"u1": {"hook"}, "u2": {"hook"},
                                                                     "u3": {"hook"}}
    finally:
        mine.close()
        theirs.close()
