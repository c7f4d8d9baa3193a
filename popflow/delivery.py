"""Delivering a batch of messages to their sinks: group commit, retries with backoff, dead letters.

The fast path writes every message of a batch to each sink and commits each sink once. When a
write or a commit fails, that sink's uncommitted messages take the slow path: one message at a
time, write + commit, retried with exponential backoff and jitter (honouring ``retry_after``), and
a dead letter when the retries run out. After a sink has used up its retries on one message, it
is considered down for the rest of the poll: its remaining messages are deferred (left on the
server, tried again next poll) instead of each waiting out the backoff and piling up dead letters.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from popflow.config import SinkSettings
from popflow.errors import DeadLetterError, RetryableError, describe_error
from popflow.logs import log_fields
from popflow.message import Message
from popflow.outcome import Outcome
from popflow.pipeline import Pipeline, notify_delivered, notify_failed
from popflow.plugins import PopflowPluginManager
from popflow.raw import RawMessage
from popflow.sinks.base import Sink

log = logging.getLogger(__name__)


class SinkRunner:
    """One sink instance plus what the framework owns around it: open state, retries, the breaker."""

    def __init__(self, name: str, sink: Sink, settings: SinkSettings) -> None:
        self.name = name
        self.sink = sink
        self.settings = settings
        self.opened = False
        self.down = False
        self.attempts = 0

    def ensure_open(self) -> None:
        """Open the sink on first use (and again after a failed open)."""
        if not self.opened:
            self.sink.open()
            self.opened = True

    def safe_rollback(self) -> None:
        """Roll back uncommitted writes; a failing rollback is logged, not raised."""
        try:
            if self.opened:
                self.sink.rollback()
        except Exception as exc:
            log.debug("rollback of sink %s failed: %s", self.name, exc)

    def close(self) -> None:
        """Close the sink if it was opened."""
        if self.opened:
            try:
                self.sink.close()
            except Exception as exc:
                log.warning("closing sink %s failed: %s", self.name, describe_error(exc))
            self.opened = False

    def backoff_delay(self, attempt: int, error: BaseException) -> float:
        """Exponential backoff with ±50% jitter, capped; ``retry_after`` from the sink wins when given."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(max(retry_after, 0.0), max(self.settings.backoff_max, retry_after)))
        base = min(self.settings.backoff * (2 ** (attempt - 1)), self.settings.backoff_max)
        return base * random.uniform(0.5, 1.5)


@dataclass
class Item:
    """One message in a delivery batch."""

    uidl: str
    raw: RawMessage
    message: Message
    routed: list[str]
    delivered: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def outcome(self) -> Outcome:
        """Combine the per-sink results into the message's outcome."""
        if self.deferred:
            kind = "deferred"
            reason = "; ".join(f"{sink}: {self.errors.get(sink, 'sink down')}" for sink in self.deferred)
        elif self.dead_lettered and not self.delivered:
            kind, reason = "dead_letter", "; ".join(f"{s}: {self.errors.get(s, '')}" for s in self.dead_lettered)
        else:
            kind, reason = "delivered", ""
        return Outcome(kind, reason, self.message, routed=self.routed,  # type: ignore[arg-type]
                       delivered=self.delivered, dead_lettered=self.dead_lettered)


class Deliverer:
    """Delivers batches for one poll of one source."""

    def __init__(self, runners: dict[str, SinkRunner], pipeline: Pipeline, pm: PopflowPluginManager,
                 stop: threading.Event) -> None:
        self.runners = runners
        self.pipeline = pipeline
        self.pm = pm
        self.stop = stop

    def deliver_batch(self, items: list[Item], already: dict[str, set[str]]) -> None:
        """Deliver every item to each routed sink it does not have yet; results land on the items."""
        pending: dict[str, list[Item]] = defaultdict(list)
        slow: dict[str, list[tuple[Item, BaseException | None]]] = defaultdict(list)
        for item in items:
            have = already.get(item.uidl, set())
            for sink_name in item.routed:
                if sink_name in have:
                    item.delivered.append(sink_name)
                    continue
                runner = self.runners[sink_name]
                if runner.down:
                    item.deferred.append(sink_name)
                    continue
                if sink_name in slow:
                    slow[sink_name].append((item, None))
                    continue
                try:
                    runner.ensure_open()
                    runner.sink.write(item.message)
                    pending[sink_name].append(item)
                except Exception as exc:
                    log.info("sink %s: write of %s failed (%s); retrying one by one", sink_name, item.uidl,
                             describe_error(exc))
                    slow[sink_name] = self._after_fast_failure(runner, pending.pop(sink_name, []))
                    slow[sink_name].append((item, exc))
        for sink_name, batch in pending.items():
            runner = self.runners[sink_name]
            try:
                runner.sink.commit()
            except Exception as exc:
                log.info("sink %s: commit of %d message(s) failed (%s); retrying one by one", sink_name,
                         len(batch), describe_error(exc))
                runner.safe_rollback()
                slow[sink_name] = [(item, None) for item in batch] + slow.get(sink_name, [])
                continue
            for item in batch:
                self._delivered(item, sink_name)
        for sink_name, retry in slow.items():
            for item, first_error in retry:
                with log_fields(sink=sink_name, uidl=item.uidl):  # the retry warnings, in JSON logs
                    self._deliver_one(self.runners[sink_name], item, first_error)

    def _after_fast_failure(self, runner: SinkRunner, written: list[Item]) -> list[tuple[Item, BaseException | None]]:
        """A write failed mid-batch: keep what the sink already has, redo what a rollback loses."""
        if runner.sink.durable_writes:
            # Each earlier write is already visible (e.g. POSTed): never send it twice.
            try:
                runner.sink.commit()
            except Exception as exc:
                log.debug("sink %s: commit after a failed write: %s", runner.name, exc)
            for item in written:
                self._delivered(item, runner.name)
            return []
        runner.safe_rollback()
        return [(item, None) for item in written]

    def _delivered(self, item: Item, sink_name: str) -> None:
        item.delivered.append(sink_name)
        notify_delivered(self.pm, item.message, sink_name)

    def _deliver_one(self, runner: SinkRunner, item: Item, first_error: BaseException | None = None) -> None:
        """Write + commit one message with retries; then dead letter (and mark the sink down).

        ``first_error`` is the failure of the batch's attempt, which counts as attempt 1.
        """
        if runner.down:
            item.deferred.append(runner.name)
            return
        attempt = 0
        if first_error is not None:
            attempt = 1
            if isinstance(first_error, DeadLetterError) or runner.settings.retries == 0:
                self._dead_letter(runner, item, first_error, attempt)
                if not isinstance(first_error, DeadLetterError):
                    runner.down = True
                return
            if self.stop.wait(runner.backoff_delay(1, first_error)):
                item.deferred.append(runner.name)
                item.errors[runner.name] = f"stopped while retrying: {describe_error(first_error)}"
                return
        while True:
            attempt += 1
            try:
                runner.ensure_open()
                runner.sink.write(item.message)
                runner.sink.commit()
                self._delivered(item, runner.name)
                return
            except DeadLetterError as exc:
                runner.safe_rollback()
                self._dead_letter(runner, item, exc, attempt)
                return
            except Exception as exc:
                runner.safe_rollback()
                error_text = describe_error(exc)
                if attempt > runner.settings.retries:
                    self._dead_letter(runner, item, exc, attempt)
                    runner.down = True
                    log.error("sink %s is down for the rest of this poll; its other messages are deferred",
                              runner.name)
                    return
                delay = runner.backoff_delay(attempt, exc)
                kind = "retryable" if isinstance(exc, RetryableError) else "unexpected"
                log.warning("sink %s: %s error delivering %s (attempt %d/%d): %s; retrying in %.2fs",
                            runner.name, kind, item.uidl, attempt, runner.settings.retries + 1, error_text, delay)
                if self.stop.wait(delay):
                    item.deferred.append(runner.name)
                    item.errors[runner.name] = f"stopped while retrying: {error_text}"
                    return

    def _dead_letter(self, runner: SinkRunner, item: Item, error: BaseException, attempts: int) -> None:
        text = describe_error(error)
        item.dead_lettered.append(runner.name)
        item.errors[runner.name] = text
        notify_failed(self.pm, item.message, f"deliver:{runner.name}", error)
        self.pipeline.dead_letter(item.raw, item.message.source, item.uidl, item.message, sink=runner.name,
                                  stage=f"deliver:{runner.name}", error=text, attempts=attempts)
