"""``popflow run`` with ``executor: celery``: schedule every source and enqueue its poll tasks.

The scheduler polls nothing itself. For each enabled source it computes the ticks of its
schedule, claims each due tick in the state store (:class:`~popflow.executors.ticks.TickBook`)
and enqueues one poll task per tick it won. Ticks are the same in every scheduler process, so
several schedulers may run for availability and each tick is still enqueued once:

* ``every: N``: ticks at ``k·N + offset`` seconds since the epoch, where ``offset`` (in
  ``[0, N)``) comes from a hash of the source's name — many sources with the same interval are
  spread over it instead of all connecting in the same second, and every scheduler agrees;
* ``cron:``: the cron expression's fire times (in the scheduler's time zone; run every scheduler
  in the same one).

The first tick of an ``every:`` source is the latest one already due, so a scheduler that starts
polls right away (unless another scheduler already enqueued that tick).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.exc import SQLAlchemyError

from popflow.app import App
from popflow.config import SourceSettings
from popflow.executors.celery_app import enqueue, make_celery
from popflow.executors.task import tick_grace
from popflow.executors.ticks import TickBook
from popflow.processes import new_owner

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("popflow.run")

REFRESH_EVERY = 10.0
"""Seconds between looks at the source registry for added, changed or removed sources."""


def interval_offset(name: str, interval: float) -> float:
    """The source's place in its interval, the same in every process: ``[0, interval)`` seconds."""
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return digest / 2**64 * interval


class Ticks:
    """The tick times of one source's schedule (seconds since the epoch)."""

    def __init__(self, name: str, settings: SourceSettings) -> None:
        self.cron = CronTrigger.from_crontab(settings.cron) if settings.cron else None
        self.interval = settings.interval
        self.offset = interval_offset(name, self.interval)

    def first(self, now: float) -> float:
        """The first tick to enqueue: the latest one due (``every:``), or the next fire time (``cron:``)."""
        if self.cron is None:
            return math.floor((now - self.offset) / self.interval) * self.interval + self.offset
        return self.after(now - 0.001)

    def after(self, tick: float) -> float:
        """The tick following ``tick``."""
        if self.cron is None:
            return tick + self.interval
        previous = datetime.fromtimestamp(tick, self.cron.timezone)
        fire = self.cron.get_next_fire_time(previous, previous)
        if fire is not None and fire.timestamp() <= tick:
            fire = self.cron.get_next_fire_time(fire, datetime.fromtimestamp(tick + 1, self.cron.timezone))
        return fire.timestamp() if fire is not None else math.inf


class Dispatcher:
    """Claims due ticks and enqueues their poll tasks until :attr:`stop` is set."""

    def __init__(self, app: App, names: list[str], celery: Celery | None = None,
                 sources: Callable[[], list[str]] | None = None) -> None:
        self.app = app
        self.settings = app.config.executor
        self.celery = celery or make_celery(self.settings)
        self.book = TickBook(app.state, new_owner(), tick_grace(self.settings))
        self.stop = threading.Event()
        self._sources = sources
        self._heap: list[tuple[float, str, float]] = []  # (when to look, source, tick)
        self._ticks: dict[str, Ticks] = {}
        self.enqueued = 0
        self.add_sources(names)

    def add_sources(self, names: list[str]) -> None:
        """Schedule these sources (first tick: see :meth:`Ticks.first`); forget the ones not named."""
        wall = time.time()
        for name in set(self._ticks) - set(names):
            del self._ticks[name]  # its heap entry is dropped when it comes up
        for name in names:
            ticks = Ticks(name, self.app.source_configs[name][1])
            if name not in self._ticks:
                first = ticks.first(wall)
                heapq.heappush(self._heap, (first, name, first))
            self._ticks[name] = ticks

    def due(self, wall: float) -> list[tuple[str, float]]:
        """Pop every (source, tick) due at ``wall`` and push each one's next tick."""
        found = []
        while self._heap and self._heap[0][0] <= wall:
            _when, name, tick = heapq.heappop(self._heap)
            ticks = self._ticks.get(name)
            if ticks is None:
                continue  # removed from the registry
            found.append((name, tick))
            if tick < _when:
                continue  # a retried tick: its successor is already scheduled
            upcoming = ticks.after(tick)
            while upcoming <= wall:  # a scheduler that was suspended catches up with one tick, not many
                upcoming = ticks.after(upcoming)
            heapq.heappush(self._heap, (upcoming, name, upcoming))
        return found

    def dispatch(self, due: list[tuple[str, float]]) -> int:
        """Claim the due ticks and enqueue the ones won; returns how many were enqueued."""
        pairs = [(name, round(tick * 1000)) for name, tick in due]
        won = self.book.claim(pairs)
        for name, tick in won:
            try:
                enqueue(self.celery, self.settings, name, tick)
            except Exception as exc:  # the broker is down: the tick is presumed lost after the grace
                log.error("cannot enqueue the poll of %s: %s", name, " ".join(str(exc).split())[:200])
                continue
            self.enqueued += 1
        if won:
            log.debug("enqueued %d poll(s): %s", len(won), ", ".join(name for name, _ in won[:10]))
        return len(won)

    def run(self) -> None:
        """Loop until :attr:`stop`: wake at the next due tick (at least every second)."""
        next_refresh = time.monotonic() + REFRESH_EVERY
        while not self.stop.is_set():
            wall = time.time()
            due = self.due(wall)
            if due:
                try:
                    self.dispatch(due)
                except SQLAlchemyError as exc:  # the state store is away: try these ticks again shortly
                    log.warning("cannot claim ticks in the state store: %s", " ".join(str(exc).split())[:200])
                    for name, tick in due:
                        heapq.heappush(self._heap, (wall + 1.0, name, tick))
            if self._sources is not None and time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + REFRESH_EVERY
                try:
                    self.add_sources(self._sources())
                except Exception as exc:
                    log.warning("cannot reload the source registry: %s", " ".join(str(exc).split())[:200])
            wait = min(1.0, max(0.0, self._heap[0][0] - time.time())) if self._heap else 1.0
            self.stop.wait(wait)
