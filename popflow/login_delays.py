"""RFC 2449 ``LOGIN-DELAY`` in ``popflow run``: never poll a server sooner than it allows.

A server that announces ``LOGIN-DELAY n`` refuses a login within ``n`` seconds of the previous one
(``-ERR [LOGIN-DELAY]``). A source with ``every: 15s`` on such a server would fail three polls out of
four, so the schedule takes the later of the two:

* ``every:`` — the job is rescheduled to poll every ``n`` seconds (plus :data:`MARGIN`) while the
  server announces ``n`` above the configured interval, and back to ``every:`` once it stops;
* ``cron:`` — a tick sooner than ``n`` seconds after the last login is moved to that moment.

Each change is logged once. The delay comes from the POP3 session (CAPA, before login, so even a
refused login teaches it) through :attr:`popflow.context.RuntimeContext.login_delays`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from popflow.config import SourceSettings
from popflow.context import LoginDelay, RuntimeContext

log = logging.getLogger("popflow.scheduler")

MARGIN = 1.0
"""Seconds added to the server's delay: the scheduler's tick and the server's clock start a little apart."""


class LoginDelays:
    """Adjusts the scheduler's jobs to the LOGIN-DELAY each source's server announced."""

    def __init__(self, scheduler: BaseScheduler, context: RuntimeContext,
                 trigger_for: Callable[[SourceSettings], BaseTrigger]) -> None:
        self.scheduler = scheduler
        self.context = context
        self.trigger_for = trigger_for
        """The source's own trigger (:func:`popflow.scheduler.trigger_for`), restored when the delay ends."""
        self.applied: dict[str, float] = {}
        """Source name → the delay (seconds) the schedule currently honours."""

    def after_poll(self, name: str, settings: SourceSettings) -> None:
        """Called after each poll of ``name``: apply what its server announced, log a change once."""
        if self.context.stop.is_set():
            return  # stopping: shutdown() holds the scheduler's locks while it waits for this poll
        job = self.scheduler.get_job(name)
        if job is None:
            return
        delay = self.context.login_delays.get(name)
        previous = self.applied.get(name)
        if delay is None or (not settings.cron and delay.seconds <= settings.interval):
            if previous is not None:
                del self.applied[name]
                if not settings.cron:
                    job.reschedule(self.trigger_for(settings))
                log.info("source %s: the server no longer asks for %gs between logins; polling on the schedule "
                         "again", name, previous)
            return
        if previous != delay.seconds:
            self.applied[name] = delay.seconds
            if settings.cron:
                log.info("source %s: the server allows a login only every %gs (LOGIN-DELAY); cron ticks sooner "
                         "than that after a login are postponed", name, delay.seconds)
            else:
                seconds = delay.seconds + MARGIN
                job.reschedule(IntervalTrigger(seconds=seconds, jitter=min(5.0, seconds * 0.1)))
                log.info("source %s: the server allows a login only every %gs (LOGIN-DELAY); polling every %gs "
                         "instead of every %gs", name, delay.seconds, seconds, settings.interval)
        self._not_before(name, delay)

    def _not_before(self, name: str, delay: LoginDelay) -> None:
        """Move the job's next run to the first moment the server allows, if it is sooner."""
        job = self.scheduler.get_job(name)
        when = getattr(job, "next_run_time", None)
        allowed = datetime.fromtimestamp(delay.since + delay.seconds + MARGIN, UTC)
        if job is not None and when is not None and when < allowed:
            job.modify(next_run_time=allowed)
