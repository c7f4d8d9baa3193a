"""Dead letters and quarantined messages in the state store: list, claim, mark, purge.

Both lists share one shape (an id, the SHA-256 of the raw bytes kept in the message store, a
status and a claim), so one set of private helpers serves both. A claim is what lets two
``popflow dead-letters replay`` (or ``quarantine release``) runs, on any machines, never work on
one entry at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, Table, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from popflow.processes import owner_is_dead
from popflow.state_tables import dead_letters, quarantine
from popflow.timestamps import now

CLAIM_STALE_AFTER = 3600.0
"""Seconds after which a replay's or release's claim on an entry is taken as abandoned."""


class HeldEntries:
    """The dead-letter and quarantine part of :class:`~popflow.state.StateStore`."""

    engine: Engine

    def transaction(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    # -- dead letters ----------------------------------------------------------------------
    def add_dead_letter(self, *, source: str, uidl: str, sink: str | None, stage: str, error: str,
                        attempts: int, sha256: str, size: int, subject: str | None) -> int:
        """List a dead letter; its raw bytes are already in the message store."""
        with self.transaction() as connection:
            result = connection.execute(insert(dead_letters).values(
                source=source, uidl=uidl, sink=sink, stage=stage, error=error, attempts=attempts,
                sha256=sha256, size=size, subject=subject, created_at=now(), status="pending"))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def dead_letters(self, ids: Iterable[int] | None = None, status: str | None = "pending") -> list[dict[str, Any]]:
        """Dead letters, oldest first; all pending ones when ``ids`` is None."""
        return self._entries(dead_letters, ids, status)

    def mark_dead_letter_replayed(self, dead_letter_id: int) -> None:
        """Mark a dead letter as delivered by a replay (and no longer claimed)."""
        self._mark(dead_letters, dead_letter_id, status="replayed", replayed_at=now(), claimed_at=None,
                   claimed_by=None)

    def claim_dead_letter(self, dead_letter_id: int, owner: str, stale_after: float = CLAIM_STALE_AFTER) -> bool:
        """Claim a pending dead letter for one replay; False when another replay has it (or it is not pending)."""
        return self._claim(dead_letters, dead_letter_id, "pending", owner, stale_after)

    def release_dead_letter_claim(self, dead_letter_id: int, owner: str) -> None:
        """Give a claim back (the replay is over, whatever its outcome)."""
        self._unclaim(dead_letters, dead_letter_id, owner)

    def purge_dead_letter(self, dead_letter_id: int) -> str | None:
        """Remove a dead letter; returns its sha256 (so the caller can drop unreferenced raw files)."""
        return self._purge(dead_letters, dead_letter_id)

    # -- quarantine --------------------------------------------------------------------------
    def add_quarantined(self, *, source: str, uidl: str, verdicts: list[dict[str, Any]], sha256: str,
                        size: int, subject: str | None) -> int:
        """List a quarantined message; its raw bytes are already in the message store."""
        with self.transaction() as connection:
            result = connection.execute(insert(quarantine).values(
                source=source, uidl=uidl, verdicts=json.loads(json.dumps(verdicts)), sha256=sha256,
                size=size, subject=subject, created_at=now(), status="held"))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def quarantined(self, ids: Iterable[int] | None = None, status: str | None = "held") -> list[dict[str, Any]]:
        """Quarantine entries, oldest first; all held ones when ``ids`` is None."""
        return self._entries(quarantine, ids, status)

    def mark_released(self, quarantine_id: int) -> None:
        """Mark a quarantine entry as released and delivered (and no longer claimed)."""
        self._mark(quarantine, quarantine_id, status="released", released_at=now(), claimed_at=None, claimed_by=None)

    def claim_quarantined(self, quarantine_id: int, owner: str, stale_after: float = CLAIM_STALE_AFTER) -> bool:
        """Claim a held quarantine entry for one release; False when another release has it (or it is not held)."""
        return self._claim(quarantine, quarantine_id, "held", owner, stale_after)

    def release_quarantine_claim(self, quarantine_id: int, owner: str) -> None:
        """Give a claim back (the release is over, whatever its outcome)."""
        self._unclaim(quarantine, quarantine_id, owner)

    def purge_quarantined(self, quarantine_id: int) -> str | None:
        """Remove a quarantine entry; returns its sha256."""
        return self._purge(quarantine, quarantine_id)

    # Dead letters and quarantine entries share their shape: id, sha256 of the stored bytes, status.
    def _entries(self, table: Table, ids: Iterable[int] | None, status: str | None) -> list[dict[str, Any]]:
        query = select(table).order_by(table.c.id)
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        elif status is not None:
            query = query.where(table.c.status == status)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _claim(self, table: Table, entry_id: int, status: str, owner: str, stale_after: float) -> bool:
        """One UPDATE that only one process can win: the entry must be in ``status`` and unclaimed,
        or claimed longer ago than ``stale_after`` or by a process of this host that is gone."""
        stamp = now()
        claimable = or_(table.c.claimed_at.is_(None), table.c.claimed_at < stamp - timedelta(seconds=stale_after))
        with self.transaction() as connection:
            won = connection.execute(update(table).where(table.c.id == entry_id, table.c.status == status, claimable)
                                     .values(claimed_at=stamp, claimed_by=owner)).rowcount == 1
            if won:
                return True
            row = connection.execute(select(table.c.claimed_by).where(table.c.id == entry_id,
                                                                      table.c.status == status)).first()
            if row is None or not owner_is_dead(row.claimed_by):
                return False
            # Its claimant crashed: take the claim over, by an UPDATE only one contender can win.
            return bool(connection.execute(
                update(table).where(table.c.id == entry_id, table.c.status == status,
                                    table.c.claimed_by == row.claimed_by)
                .values(claimed_at=stamp, claimed_by=owner)).rowcount == 1)

    def _unclaim(self, table: Table, entry_id: int, owner: str) -> None:
        with self.transaction() as connection:
            connection.execute(update(table).where(table.c.id == entry_id, table.c.claimed_by == owner)
                               .values(claimed_at=None, claimed_by=None))

    def _mark(self, table: Table, entry_id: int, **values: Any) -> None:
        with self.transaction() as connection:
            connection.execute(update(table).where(table.c.id == entry_id).values(**values))

    def _purge(self, table: Table, entry_id: int) -> str | None:
        with self.transaction() as connection:
            row = connection.execute(select(table.c.sha256).where(table.c.id == entry_id)).first()
            if row is None:
                return None
            connection.execute(delete(table).where(table.c.id == entry_id))
            return str(row.sha256)

    def sha256_referenced(self, sha256: str) -> bool:
        """Whether any dead letter or quarantine entry still needs these raw bytes."""
        with self.engine.connect() as connection:
            for table in (dead_letters, quarantine):
                if connection.execute(select(table.c.id).where(table.c.sha256 == sha256).limit(1)).first():
                    return True
        return False
