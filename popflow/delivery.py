"""Delivering a batch of messages to their sinks, and recording in the ledger which sinks have them.

The :class:`Deliverer` takes the :class:`~popflow.outcome.Delivery` objects the pipeline made,
asks the ledger which sinks already have each message (an earlier poll that died before DELE),
writes the rest, and returns one :class:`~popflow.outcome.Outcome` per message; :meth:`Deliverer.record`
then writes the outcomes to the ledger — the step after which a message may leave the server.

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
from collections.abc import Mapping, Sequence
from typing import Protocol

from popflow.config import SinkSettings
from popflow.errors import DeadLetterError, RetryableError, describe_error
from popflow.holding import Holding
from popflow.hookcall import notify_delivered, notify_failed
from popflow.logs import log_fields
from popflow.outcome import Delivery, Outcome
from popflow.plugins import PopflowPluginManager
from popflow.sinks.base import Sink
from popflow.state import HandledMessage, StateStore

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


class Listed(Protocol):
    """What the ledger keeps of a listing entry (:class:`popflow.sources.base.Listing` is one)."""

    @property
    def uidl(self) -> str:
        """The message's ledger key."""

    @property
    def size(self) -> int:
        """The size the server listed."""

    @property
    def server_id(self) -> str:
        """The server's own UIDL text."""


class Deliverer:
    """Delivers batches for one poll of one source (or one replay) and records them in the ledger.

    It owns the poll's sink instances (``runners``, closed by :meth:`close`), what the ledger says
    each sink already has, the dead letters of sinks that give up (through ``holding``) and the
    ``popflow_delivered``/``popflow_failed`` notifications.
    """

    def __init__(self, runners: dict[str, SinkRunner], holding: Holding, pm: PopflowPluginManager,
                 state: StateStore, stop: threading.Event) -> None:
        self.runners = runners
        self.holding = holding
        self.pm = pm
        self.state = state
        self.stop = stop

    def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Deliver each message to every routed sink that does not have it yet; one outcome per message.

        A sink the ledger lists for a message (committed in a poll that died before DELE) is not
        written again: a webhook would repeat, a folder would hold a second copy.
        """
        already = self._already(deliveries)
        pending: dict[str, list[Delivery]] = defaultdict(list)
        slow: dict[str, list[tuple[Delivery, BaseException | None]]] = defaultdict(list)
        for item in deliveries:
            have = already.get((item.source, item.uidl), set())
            for sink_name in item.sinks:
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
        return [item.outcome() for item in deliveries]

    def _already(self, deliveries: Sequence[Delivery]) -> dict[tuple[str, str], set[str]]:
        """The sinks the ledger lists for each message, by (source, uidl)."""
        by_source: dict[str, list[str]] = defaultdict(list)
        for item in deliveries:
            by_source[item.source].append(item.uidl)
        found: dict[tuple[str, str], set[str]] = {}
        for source, uidls in by_source.items():
            for uidl, sinks in self.state.deliveries_pending(source, uidls).items():
                found[(source, uidl)] = sinks
        return found

    def record(self, source: str, results: Sequence[tuple[Listed, Outcome]], *, mailbox: str,
               heads: Mapping[str, str]) -> None:
        """Write the outcomes of one batch to the ledger; after it, the handled ones may leave the server.

        A handled message and the sinks that have it are one transaction (a crash leaves both or
        neither). A deferred one stays unhandled, but the sinks that committed it are recorded, so
        the next poll does not write them again. ``heads`` holds the header digests by UIDL.
        """
        handled: list[HandledMessage] = []
        delivered: list[tuple[str, str, str]] = []
        partial: list[tuple[str, str, str]] = []
        for listing, outcome in results:
            message = outcome.message
            triples = [(source, listing.uidl, sink) for sink in outcome.delivered]
            if not outcome.handled:
                partial += triples
                continue
            handled.append(HandledMessage(
                source, listing.uidl, outcome.kind, size=listing.size, sha256=message.sha256 if message else "",
                message_id=message.message_id if message else None, reason=outcome.reason or None,
                server_uidl=listing.server_id, mailbox=mailbox, header_sha256=heads.get(listing.uidl)))
            delivered += triples
        if partial:
            self.state.record_deliveries(partial)
        if handled:
            self.state.record_handled(handled, delivered)

    def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Record which sinks have each message, leaving its ledger row as it is (replays).

        A sink the ledger already lists is a no-op.
        """
        triples = [(item.source, item.uidl, sink) for item in deliveries for sink in item.delivered]
        if triples:
            self.state.record_deliveries(triples)

    def close(self) -> None:
        """Close every sink this deliverer opened."""
        for runner in self.runners.values():
            runner.close()

    def _after_fast_failure(self, runner: SinkRunner,
                            written: list[Delivery]) -> list[tuple[Delivery, BaseException | None]]:
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

    def _delivered(self, item: Delivery, sink_name: str) -> None:
        item.delivered.append(sink_name)
        notify_delivered(self.pm, item.message, sink_name)

    def _deliver_one(self, runner: SinkRunner, item: Delivery, first_error: BaseException | None = None) -> None:
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

    def _dead_letter(self, runner: SinkRunner, item: Delivery, error: BaseException, attempts: int) -> None:
        text = describe_error(error)
        item.dead_lettered.append(runner.name)
        item.errors[runner.name] = text
        notify_failed(self.pm, item.message, f"deliver:{runner.name}", error)
        self.holding.dead_letter(item.raw, item.source, item.uidl, item.message, sink=runner.name,
                                 stage=f"deliver:{runner.name}", error=text, attempts=attempts)
