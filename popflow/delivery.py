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
        for delivery in deliveries:
            have = already.get((delivery.source, delivery.uidl), set())
            for sink_name in delivery.sinks:
                if sink_name in have:
                    delivery.delivered.append(sink_name)
                    continue
                runner = self.runners[sink_name]
                if runner.down:
                    delivery.deferred.append(sink_name)
                    continue
                if sink_name in slow:
                    slow[sink_name].append((delivery, None))
                    continue
                # What a sink logs while it writes carries its name (JSON logs), as on the slow path.
                with log_fields(sink=sink_name, uidl=delivery.uidl):
                    try:
                        runner.ensure_open()
                        runner.sink.write(delivery.message)
                        pending[sink_name].append(delivery)
                    except Exception as exc:
                        log.info("sink %s: write of %s failed (%s); retrying one by one", sink_name, delivery.uidl,
                                 describe_error(exc))
                        slow[sink_name] = self._after_fast_failure(runner, pending.pop(sink_name, []))
                        slow[sink_name].append((delivery, exc))
        for sink_name, batch in pending.items():
            runner = self.runners[sink_name]
            with log_fields(sink=sink_name):
                try:
                    runner.sink.commit()
                    committed = True
                except Exception as exc:
                    log.info("sink %s: commit of %d message(s) failed (%s); retrying one by one", sink_name,
                             len(batch), describe_error(exc))
                    runner.safe_rollback()
                    committed = False
            if not committed:
                slow[sink_name] = [(delivery, None) for delivery in batch] + slow.get(sink_name, [])
                continue
            for delivery in batch:
                self._delivered(delivery, sink_name)
        for sink_name, retry in slow.items():
            for delivery, first_error in retry:
                with log_fields(sink=sink_name, uidl=delivery.uidl):  # the retry warnings, in JSON logs
                    self._deliver_one(self.runners[sink_name], delivery, first_error)
        return [delivery.outcome() for delivery in deliveries]

    def _already(self, deliveries: Sequence[Delivery]) -> dict[tuple[str, str], set[str]]:
        """The sinks the ledger lists for each message, by (source, uidl)."""
        by_source: dict[str, list[str]] = defaultdict(list)
        for delivery in deliveries:
            by_source[delivery.source].append(delivery.uidl)
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
        triples = [(delivery.source, delivery.uidl, sink) for delivery in deliveries for sink in delivery.delivered]
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
            for delivery in written:
                self._delivered(delivery, runner.name)
            return []
        runner.safe_rollback()
        return [(delivery, None) for delivery in written]

    def _delivered(self, delivery: Delivery, sink_name: str) -> None:
        delivery.delivered.append(sink_name)
        notify_delivered(self.pm, delivery.message, sink_name)

    def _deliver_one(self, runner: SinkRunner, delivery: Delivery, first_error: BaseException | None = None) -> None:
        """Write + commit one message with retries; then dead letter (and mark the sink down).

        ``first_error`` is the failure of the batch's attempt, which counts as attempt 1.
        """
        if runner.down:
            delivery.deferred.append(runner.name)
            return
        attempt = 0
        if first_error is not None:
            attempt = 1
            if isinstance(first_error, DeadLetterError) or runner.settings.retries == 0:
                self._dead_letter(runner, delivery, first_error, attempt)
                if not isinstance(first_error, DeadLetterError):
                    runner.down = True
                return
            if self.stop.wait(runner.backoff_delay(1, first_error)):
                delivery.deferred.append(runner.name)
                delivery.errors[runner.name] = f"stopped while retrying: {describe_error(first_error)}"
                return
        while True:
            attempt += 1
            try:
                runner.ensure_open()
                runner.sink.write(delivery.message)
                runner.sink.commit()
                self._delivered(delivery, runner.name)
                return
            except DeadLetterError as exc:
                runner.safe_rollback()
                self._dead_letter(runner, delivery, exc, attempt)
                return
            except Exception as exc:
                runner.safe_rollback()
                error_text = describe_error(exc)
                if attempt > runner.settings.retries:
                    self._dead_letter(runner, delivery, exc, attempt)
                    runner.down = True
                    log.error("sink %s is down for the rest of this poll; its other messages are deferred",
                              runner.name)
                    return
                delay = runner.backoff_delay(attempt, exc)
                kind = "retryable" if isinstance(exc, RetryableError) else "unexpected"
                log.warning("sink %s: %s error delivering %s (attempt %d/%d): %s; retrying in %.2fs",
                            runner.name, kind, delivery.uidl, attempt, runner.settings.retries + 1, error_text, delay)
                if self.stop.wait(delay):
                    delivery.deferred.append(runner.name)
                    delivery.errors[runner.name] = f"stopped while retrying: {error_text}"
                    return

    def _dead_letter(self, runner: SinkRunner, delivery: Delivery, error: BaseException, attempts: int) -> None:
        text = describe_error(error)
        delivery.dead_lettered.append(runner.name)
        delivery.errors[runner.name] = text
        notify_failed(self.pm, delivery.message, f"deliver:{runner.name}", error)
        self.holding.dead_letter(delivery.raw, delivery.source, delivery.uidl, delivery.message, sink=runner.name,
                                 stage=f"deliver:{runner.name}", error=text, attempts=attempts)
