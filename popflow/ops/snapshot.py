"""What the state store says about each source: the facts behind ``popflow status`` and the status page.

Everything is derived from the ``popflow_runs`` table (one row per poll, written by
:class:`popflow.poller.Poller`) and the dead-letter and quarantine lists, so it works from any
machine that reaches the state database, while ``popflow run`` runs or not. A poll *succeeded*
when the source answered (status ``ok`` or ``partial``: a ``partial`` poll had a delivery deferred
or dead-lettered, which the dead-letter count reports); it *failed* when it could not finish.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from popflow.state import StateStore
from popflow.state_tables import dead_letters, quarantine, runs
from popflow.timestamps import as_aware

SUCCEEDED = ("ok", "partial")
RECENT = 50
"""Runs read per source; only a source failing longer than this needs a second, counting query."""


@dataclass
class SourceStatus:
    """One source as ``popflow status`` reports it."""

    name: str
    status: str = "never"
    """``ok``, ``partial``, ``failed``, or ``never`` (no poll finished yet)."""
    enabled: bool = True
    last_poll: datetime | None = None
    last_success: datetime | None = None
    consecutive_failures: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def up(self) -> bool:
        """Whether the last poll succeeded (``popflow_source_up``)."""
        return self.status in SUCCEEDED

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, times as ISO 8601."""
        data = asdict(self)
        for key in ("last_poll", "last_success"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


@dataclass
class RunRow:
    """One poll from ``popflow_runs``."""

    id: int
    source: str
    started_at: datetime | None
    finished_at: datetime | None
    status: str | None
    counts: dict[str, Any]
    error: str | None


def source_status(state: StateStore, name: str, enabled: bool = True) -> SourceStatus:
    """The status of one source from its most recent finished polls."""
    result = SourceStatus(name, enabled=enabled)
    with state.engine.connect() as connection:
        rows = connection.execute(
            select(runs.c.id, runs.c.status, runs.c.finished_at, runs.c.counts, runs.c.error)
            .where(runs.c.source == name, runs.c.finished_at.is_not(None))
            .order_by(runs.c.id.desc()).limit(RECENT)).all()
        if not rows:
            return result
        last = rows[0]
        result.status, result.last_poll = last.status or "failed", as_aware(last.finished_at)
        result.counts, result.error = dict(last.counts or {}), last.error
        success = next((row for row in rows if row.status in SUCCEEDED), None)
        if success is not None:
            result.last_success = as_aware(success.finished_at)
            result.consecutive_failures = rows.index(success)
            return result
        # Failing for more than RECENT polls: count them, and find the last success, if any.
        last_ok = connection.execute(
            select(func.max(runs.c.id)).where(runs.c.source == name, runs.c.status.in_(SUCCEEDED))).scalar()
        if last_ok is not None:
            result.last_success = as_aware(connection.execute(
                select(runs.c.finished_at).where(runs.c.id == last_ok)).scalar())
        result.consecutive_failures = int(connection.execute(
            select(func.count()).select_from(runs)
            .where(runs.c.source == name, runs.c.finished_at.is_not(None), runs.c.id > (last_ok or 0))).scalar() or 0)
    return result


def pending_totals(state: StateStore) -> tuple[int, int]:
    """(pending dead letters, held quarantine entries)."""
    with state.engine.connect() as connection:
        pending = connection.execute(select(func.count()).select_from(dead_letters)
                                     .where(dead_letters.c.status == "pending")).scalar()
        held = connection.execute(select(func.count()).select_from(quarantine)
                                  .where(quarantine.c.status == "held")).scalar()
    return int(pending or 0), int(held or 0)


def recent_runs(state: StateStore, limit: int = 20) -> list[RunRow]:
    """The latest polls of every source, newest first."""
    with state.engine.connect() as connection:
        rows = connection.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).all()
    return [RunRow(row.id, row.source, as_aware(row.started_at), as_aware(row.finished_at), row.status,
                   dict(row.counts or {}), row.error) for row in rows]
