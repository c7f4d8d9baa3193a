"""Source leases in the state store: two popflow processes never poll one source at once.

A POP3 server's maildrop lock is not enough: some servers have none, and then two processes on one
config (``popflow run`` and a manual ``popflow poll``, or two ``run``) would both fetch and deliver
every message. So each poll first takes a lease on its source in ``popflow_locks``:

* **acquire** is one ``INSERT`` of ``(name, owner, acquired_at, expires_at)``; the primary key on
  ``name`` lets exactly one process win. When a row is there, it is taken over only if its lease
  has expired or its owner ran on this host and its pid is gone (a crashed process), by an
  ``UPDATE ... WHERE owner = <the old owner>`` that only one contender can win;
* a daemon thread **renews** the lease (``expires_at``) while the poll runs, so a poll that takes
  hours keeps it, and a process that dies stops renewing and loses it within one lease;
* **release** deletes the row, only if it is still ours.

Owners are ``host:pid:random`` (:mod:`popflow.processes`). Times come from the clock of the process
writing them; hosts sharing a state store should keep their clocks in sync (the lease, 60 s by
default, absorbs small differences). MariaDB keeps whole seconds, which the comparisons allow for.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from popflow.processes import Owner, new_owner
from popflow.state import StateStore
from popflow.state_tables import locks
from popflow.timestamps import as_aware, now

log = logging.getLogger(__name__)

LEASE = 60.0
"""Seconds a lease lasts unless renewed."""
RENEW_EVERY = 20.0
"""Seconds between renewals while the poll runs."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as read from the state store."""

    owner: str
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        """``host:pid since 2026-01-02 10:00:00 UTC``."""
        parsed = Owner.parse(self.owner)
        who = parsed.shown() if parsed else self.owner
        return f"{who} since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


class LockBusy(Exception):
    """The lease is held by another live process."""

    def __init__(self, name: str, holder: Holder | None) -> None:
        self.name = name
        self.holder = holder
        super().__init__(f"{name!r} is held by {holder.describe() if holder else 'another process'}")


class Lease:
    """One lease on ``name`` in the state store, taken with :meth:`acquire` (or ``with``)."""

    def __init__(self, state: StateStore, name: str, *, lease: float = LEASE, renew_every: float = RENEW_EVERY,
                 owner: str | None = None) -> None:
        self.state = state
        self.name = name
        self.lease = lease
        self.renew_every = renew_every
        self.owner = owner or new_owner()
        self.lost = threading.Event()
        """Set when a renewal found the lease taken over (this process was presumed dead)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire -----------------------------------------------------------------------------------
    def acquire(self) -> Lease:
        """Take the lease and start renewing it; raises :class:`LockBusy` when a live process holds it."""
        for _attempt in range(5):  # a row that vanishes or changes between our reads: try again
            if self._insert():
                break
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile
            if not self._may_take_over(holder):
                raise LockBusy(self.name, holder)
            if self._take_over(holder):
                log.info("lease %s: took over from %s (%s)", self.name, holder.describe(),
                         "its process is gone" if holder.expires_at > now() else "expired")
                break
        else:
            raise LockBusy(self.name, self.holder())
        self._start_renewing()
        return self

    def _insert(self) -> bool:
        stamp = now()
        try:
            with self.state.transaction() as connection:
                connection.execute(insert(locks).values(name=self.name, owner=self.owner, acquired_at=stamp,
                                                        expires_at=stamp + timedelta(seconds=self.lease)))
        except IntegrityError:
            return False
        return True

    def holder(self) -> Holder | None:
        """Who holds the lease now (None when no one does)."""
        with self.state.engine.connect() as connection:
            row = connection.execute(select(locks).where(locks.c.name == self.name)).first()
        if row is None:
            return None
        return Holder(row.owner, as_aware(row.acquired_at) or now(), as_aware(row.expires_at) or now())

    @staticmethod
    def _may_take_over(holder: Holder) -> bool:
        owner = Owner.parse(holder.owner)
        return holder.expires_at < now() or (owner is not None and owner.dead)

    def _take_over(self, holder: Holder) -> bool:
        stamp = now()
        # Only the contender whose UPDATE still finds the old owner wins; a renewal by a live owner
        # (expired but not dead) made expires_at current again, so the row no longer matches.
        condition = [locks.c.name == self.name, locks.c.owner == holder.owner]
        parsed = Owner.parse(holder.owner)
        if parsed is None or not parsed.dead:
            condition.append(locks.c.expires_at < stamp)
        with self.state.transaction() as connection:
            result = connection.execute(update(locks).where(*condition).values(
                owner=self.owner, acquired_at=stamp, expires_at=stamp + timedelta(seconds=self.lease)))
        return bool(result.rowcount == 1)

    # -- renew and release -------------------------------------------------------------------------
    def _start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                if not self.renew():
                    self.lost.set()
                    log.error("lease %s: taken over by another process; this process's poll of it is no "
                              "longer exclusive", self.name)
                    return
            except SQLAlchemyError as exc:  # the store is briefly unreachable: try again next time
                log.warning("lease %s: cannot renew: %s", self.name, " ".join(str(exc).split())[:200])

    def renew(self) -> bool:
        """Push the expiry one lease ahead; False when the lease is no longer ours."""
        with self.state.transaction() as connection:
            result = connection.execute(update(locks).where(locks.c.name == self.name, locks.c.owner == self.owner)
                                        .values(expires_at=now() + timedelta(seconds=self.lease)))
        return bool(result.rowcount == 1)

    def release(self) -> None:
        """Stop renewing and give the lease back (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None
        try:
            with self.state.transaction() as connection:
                connection.execute(delete(locks).where(locks.c.name == self.name, locks.c.owner == self.owner))
        except SQLAlchemyError as exc:  # it expires on its own within one lease
            log.warning("lease %s: cannot release: %s", self.name, " ".join(str(exc).split())[:200])

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
