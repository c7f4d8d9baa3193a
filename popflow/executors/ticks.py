"""The schedule's ticks in the state store: one poll task per source per tick, whatever runs.

``popflow_schedule`` holds one row per source: the last tick enqueued for it (its time in
milliseconds since the epoch), who enqueued it, and how far its poll task got. Every step is a
compare-and-set that only one process can win:

* **claim** (a scheduler): ``UPDATE ... SET tick = T WHERE tick < T AND (the last tick finished,
  or it was enqueued longer than ``grace`` ago and no live lease holds the source)``. Two
  schedulers computing the same tick T both try; exactly one row changes, so exactly one enqueues.
  A tick whose task is still queued or running is not followed by another (no pile-up in the queue
  when workers fall behind), unless that task is presumed lost — its worker died (no live lease)
  or the broker lost the message — for longer than ``grace``;
* **start** (a worker): ``UPDATE ... SET started_at WHERE tick = T AND finished_at IS NULL``. A
  task redelivered after its poll finished (a worker that died between the poll and the ack), or
  one superseded by a newer tick, finds nothing to start and is acknowledged without polling;
* **finish** (a worker): ``UPDATE ... SET finished_at, status WHERE tick = T``.

The poll itself is exactly-once through the ledger; these rows only keep the queue free of
duplicates and make a redelivered task a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from popflow.shared_tables import schedule
from popflow.state import StateStore
from popflow.state_tables import locks
from popflow.timestamps import now

log = logging.getLogger(__name__)

CLAIM_BATCH = 500
"""At most this many claims in one transaction."""


class TickBook:
    """Claims, starts and finishes ticks in ``popflow_schedule``."""

    def __init__(self, state: StateStore, owner: str, grace: float) -> None:
        self.state = state
        self.owner = owner
        self.grace = grace

    def _ensure_rows(self, names: Iterable[str]) -> None:
        """Give every source a row (tick 0, finished), so claims are plain UPDATEs."""
        wanted = sorted(set(names))
        if not wanted:
            return
        with self.state.engine.connect() as connection:
            have: set[str] = set()
            for start in range(0, len(wanted), CLAIM_BATCH):
                chunk = wanted[start:start + CLAIM_BATCH]
                have.update(connection.execute(select(schedule.c.source).where(schedule.c.source.in_(chunk))).scalars())
        stamp = now()
        for name in wanted:
            if name in have:
                continue
            try:
                with self.state.transaction() as connection:
                    connection.execute(insert(schedule).values(source=name, tick=0, enqueued_at=stamp,
                                                               enqueued_by=self.owner, finished_at=stamp, status="new"))
            except IntegrityError:
                pass  # another scheduler made it meanwhile

    def claim(self, due: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Claim ``(source, tick)`` pairs; returns those this process won (and must enqueue)."""
        wanted = sorted(due)  # one lock order for every scheduler: no deadlock between two
        self._ensure_rows(name for name, _tick in wanted)
        won: list[tuple[str, int]] = []
        for start in range(0, len(wanted), CLAIM_BATCH):
            stamp = now()
            live_lease = exists().where(locks.c.name == schedule.c.source, locks.c.expires_at > stamp)
            lost = and_(schedule.c.enqueued_at < stamp - timedelta(seconds=self.grace), ~live_lease)
            with self.state.transaction() as connection:
                for name, tick in wanted[start:start + CLAIM_BATCH]:
                    result = connection.execute(
                        update(schedule)
                        .where(schedule.c.source == name, schedule.c.tick < tick,
                               or_(schedule.c.finished_at.is_not(None), lost))
                        .values(tick=tick, enqueued_at=stamp, enqueued_by=self.owner, started_at=None,
                                finished_at=None, status="queued"))
                    if result.rowcount == 1:
                        won.append((name, tick))
        return won

    def start(self, source: str, tick: int) -> bool:
        """Mark a tick's poll as started; False when it already finished or a newer tick replaced it."""
        with self.state.transaction() as connection:
            result = connection.execute(
                update(schedule).where(schedule.c.source == source, schedule.c.tick == tick,
                                       schedule.c.finished_at.is_(None))
                .values(started_at=now(), status="running"))
        return bool(result.rowcount == 1)

    def finish(self, source: str, tick: int, status: str) -> None:
        """Record how a tick's poll ended (``ok``, ``partial``, ``failed``, ``gone``)."""
        with self.state.transaction() as connection:
            connection.execute(update(schedule).where(schedule.c.source == source, schedule.c.tick == tick)
                               .values(finished_at=now(), status=status))
