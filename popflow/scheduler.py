"""``popflow run``'s engine: one APScheduler job per enabled source, polling on its schedule.

Thin on purpose: every poll is :meth:`popflow.app.App.poll`; this module only decides *when*.
Guarantees kept here:

* never two polls of one mailbox at once (``max_instances=1``; POP3 locks the maildrop anyway);
* a late or missed tick runs once, not once per missed tick (``coalesce``);
* a little jitter, so many sources with the same interval do not all connect at the same second;
* a failing source is logged and simply polled again on its next tick; the others are untouched;
* stopping sets ``app.context.stop`` first, so a running poll finishes the message in hand and
  sends QUIT (earned DELEs apply), then waits for running polls to return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from popflow.app import App
from popflow.config import SourceSettings
from popflow.login_delays import LoginDelays
from popflow.poller import PollReport
from popflow.sources.base import Source

log = logging.getLogger(__name__)

MAX_JITTER = 5.0
"""Upper bound of the random delay (seconds) added to each interval tick."""


def trigger_for(settings: SourceSettings) -> BaseTrigger:
    """The APScheduler trigger of a source: ``cron:`` (crontab syntax) or ``every:`` (default 60s)."""
    if settings.cron:
        return CronTrigger.from_crontab(settings.cron)
    interval = settings.interval
    # At most 10% of the interval, so a 1s test schedule stays a 1s schedule.
    return IntervalTrigger(seconds=interval, jitter=min(MAX_JITTER, interval * 0.1))


def describe_schedule(settings: SourceSettings) -> str:
    """``every 60s`` or ``cron */5 * * * *``, for logs and ``popflow check``."""
    return f"cron {settings.cron}" if settings.cron else f"every {settings.interval:g}s"


class PollScheduler:
    """Polls the enabled sources of an :class:`App` on their schedules, in background threads."""

    def __init__(self, app: App, sources: Iterable[str] | None = None) -> None:
        self.app = app
        self.sources = list(sources) if sources is not None else app.enabled_sources()
        workers = max(1, min(len(self.sources), 10))
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(workers)})
        self.reports: dict[str, PollReport] = {}
        """The latest report of each source (tests and status displays read it)."""
        self._lock = threading.Lock()
        self.login_delays = LoginDelays(self.scheduler, app.context, trigger_for)
        """Keeps each job no more frequent than its server's LOGIN-DELAY (:mod:`popflow.login_delays`)."""
        self._running: set[str] = set()
        self._in_flight = 0
        """Jobs inside :meth:`poll_once`; :meth:`stop` waits for none, without holding APScheduler's locks."""
        self._idle = threading.Condition()
        self._woken: set[str] = set()
        """Sources woken (:meth:`wake`) while their poll ran: polled again once it ends."""

    def settings(self, name: str) -> SourceSettings:
        """The validated settings of one source."""
        settings: SourceSettings = self.app.source_configs[name][1]
        return settings

    def add_jobs(self, first_run: datetime | None = None) -> list[Job]:
        """One job per source; the first poll runs at ``first_run`` (default: right away)."""
        first = first_run or datetime.now(self.scheduler.timezone)
        jobs = []
        for name in self.sources:
            jobs.append(self.scheduler.add_job(
                self.poll_once, trigger_for(self.settings(name)), args=(name,), id=name, name=f"poll {name}",
                max_instances=1,  # never two polls of one mailbox at once
                coalesce=True,  # after a suspend or a long poll, catch up with one poll, not many
                misfire_grace_time=None,  # a late poll is always better than a skipped one
                next_run_time=first, replace_existing=True,
            ))
        return jobs

    def start(self) -> None:
        """Add the jobs (first polls right away), start the scheduler's thread and the sources' watchers."""
        self.add_jobs()
        self.scheduler.start()
        self.start_watchers()
        log.info("popflow run: polling %s; stop with Ctrl-C or SIGTERM",
                 "; ".join(f"{name} ({describe_schedule(self.settings(name))})" for name in self.sources))

    def start_watchers(self) -> list[threading.Thread]:
        """A thread running :meth:`Source.watch` for each source whose type can watch (IMAP IDLE)."""
        threads = []
        for name in self.sources:
            source_type = self.app.source_configs[name][0]
            if getattr(source_type, "watch", Source.watch) is Source.watch:
                continue
            thread = threading.Thread(target=self._watch, args=(name, self.app.source(name)), name=f"watch {name}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def _watch(self, name: str, source: Source) -> None:
        try:
            source.watch(lambda: self.wake(name))
        except Exception:  # a watcher's bug must not stop the scheduled polls
            log.exception("watching %s failed; it is polled on its schedule", name)

    def wake(self, name: str) -> None:
        """Poll ``name`` now; if its poll is running, once more right after it (new mail may be missed by it)."""
        with self._lock:
            if name in self._running:
                self._woken.add(name)
                return
        job = self.scheduler.get_job(name)
        if job is not None and not self.app.context.stop.is_set():
            job.modify(next_run_time=datetime.now(self.scheduler.timezone))

    def poll_once(self, name: str) -> PollReport | None:
        """The job: one poll of one source. Never raises, so one source cannot disturb another."""
        with self._idle:
            self._in_flight += 1
        try:
            return self._poll_once(name)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _poll_once(self, name: str) -> PollReport | None:
        if self.app.context.stop.is_set():
            return None  # a tick that fired while we were stopping
        with self._lock:
            self._running.add(name)
            self._woken.discard(name)
        try:
            report = self.app.poll(name)  # App.poll logs report.line()
        except Exception:  # App.poll reports mail and server problems itself; this is a bug guard
            log.exception("poll of %s raised; it will be retried on its schedule", name)
            return None
        finally:
            with self._lock:
                self._running.discard(name)
                again = name in self._woken
            if again:
                self.wake(name)
        with self._lock:
            self.reports[name] = report
        self.login_delays.after_poll(name, self.settings(name))
        if report.error:
            log.warning("source %s failed: %s; retrying %s", name, report.error, self._next_run_text(name))
        return report

    def _next_run_text(self, name: str) -> str:
        job = self.scheduler.get_job(name)
        when = getattr(job, "next_run_time", None) if job is not None else None
        return f"at {when:%H:%M:%S}" if when else "on its schedule"

    def stop(self, wait: bool = True) -> None:
        """Ask running polls to finish the message in hand and QUIT, then stop scheduling.

        APScheduler's ``shutdown(wait=True)`` holds its job-store lock while it waits for running
        jobs, and a poll ending calls ``get_job`` (LOGIN-DELAY, the retry message): a deadlock. So
        the scheduler stops without waiting, and this waits for the polls itself.
        """
        self.app.context.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if wait:
            with self._idle:
                self._idle.wait_for(lambda: self._in_flight == 0)

    def next_run_times(self) -> dict[str, Any]:
        """When each source polls next (None once stopped)."""
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}
