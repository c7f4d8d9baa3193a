"""The poll task ``popflow worker`` runs: one poll of one source for one tick.

A task is ``(source, tick)``. It is safe to run twice (a redelivery after a worker died, a tick
enqueued again after its task was presumed lost): it polls only if its tick has not finished, and
the poll holds the source's lease, so two workers never hold one maildrop.
"""

from __future__ import annotations

import logging

from popflow.app import App
from popflow.config import ExecutorSettings
from popflow.executors.ticks import TickBook
from popflow.poller import PollReport
from popflow.processes import new_owner

log = logging.getLogger("popflow.worker")

REFRESH_EVERY = 10.0
"""Seconds a worker trusts its copy of the source registry before looking for changes again."""


def tick_grace(settings: ExecutorSettings) -> float:
    """Seconds after which a tick whose task has not finished, and whose source no live lease holds,
    is presumed lost (its worker died, or the broker lost the message) and the next tick is enqueued."""
    return settings.lease


class PollTask:
    """Runs poll tasks against one :class:`App` (one per worker process, shared by its threads).

    Celery-free: :func:`popflow.executors.celery_app.make_celery` wraps :meth:`run` in the task."""

    def __init__(self, app: App, settings: ExecutorSettings) -> None:
        self.app = app
        self.settings = settings
        self.ticks = TickBook(app.state, new_owner(), tick_grace(settings))

    def run(self, source: str, tick: int) -> str:
        """Poll ``source`` for ``tick`` unless that tick is done; returns what happened, in one word."""
        try:
            # A source added to the registry after this worker started, or changed (a new password).
            self.app.refresh_sources(max_age=0.0 if source not in self.app.source_configs else REFRESH_EVERY)
        except Exception as exc:  # the registry cannot be read: poll with what this worker has
            log.warning("cannot reload the source registry: %s", " ".join(str(exc).split())[:200])
        if source not in self.app.source_configs or not self.app.source_configs[source][1].enabled:
            log.warning("poll %s: no such enabled source here (removed from or disabled in the registry, or a "
                        "config that differs from the scheduler's); task dropped", source)
            self.ticks.finish(source, tick, "gone")
            return "gone"
        if not self.ticks.start(source, tick):
            log.info("poll %s: tick %d already polled or replaced by a newer one; nothing to do", source, tick)
            return "done"
        try:
            report = self.app.poll(source, lease_seconds=self.settings.lease)  # logs the one-line summary
        except Exception:  # App.poll reports mail and server problems itself; this is a bug guard
            log.exception("poll of %s raised; it will be polled again on its next tick", source)
            self.ticks.finish(source, tick, "failed")
            return "failed"
        if report.busy:
            # Another worker holds the mailbox (a long poll, or a dead worker's lease not yet
            # expired): leave the tick to it; the next tick after the lease ends polls again.
            return "busy"
        status = _status(report)
        self.ticks.finish(source, tick, status)
        return status


def _status(report: PollReport) -> str:
    return "ok" if report.clean else ("failed" if report.error else "partial")
