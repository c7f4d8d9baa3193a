"""One poll of one source: list, decide, retrieve, run the pipeline, deliver, record, DELE, QUIT.

One retrieval stream runs over the whole poll, so the next batch arrives while this one is
delivered (the session reads ahead; see :mod:`popflow.sources.pop3_stream`). Per batch: each
retrieved message goes through :meth:`Pipeline.prepare
<popflow.pipeline.Pipeline.prepare>` (a :class:`~popflow.outcome.Delivery` or a final
:class:`~popflow.outcome.Outcome`), the deliveries through :meth:`Deliverer.deliver
<popflow.delivery.Deliverer.deliver>`, every outcome into :meth:`Deliverer.record
<popflow.delivery.Deliverer.record>`, and only what that recorded as handled is DELE'd.

The order of work makes a crash at any point safe (see :mod:`popflow.state`): nothing is deleted
from the server before every routed sink has committed it (or it was dropped, quarantined or
dead-lettered) and the ledger has recorded it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from popflow.delivery import Deliverer
from popflow.errors import DeliveryError, PopflowError, ServerMisbehaved, SourceConnectionError, describe_error
from popflow.logs import log_fields
from popflow.outcome import Delivery, Outcome, PollCounts
from popflow.pipeline import Pipeline
from popflow.planner import MISBEHAVED, Plan, Planner, mailbox_hash
from popflow.raw import RawMessage
from popflow.sources.base import Listing, Source, SourceSession
from popflow.sources.keys import header_digest
from popflow.state import HandledMessage, LedgerRow, StateStore

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (messages done, messages to do) as a poll advances."""


@dataclass
class PollReport:
    """What one poll of one source did."""

    source: str
    counts: PollCounts = field(default_factory=PollCounts)
    error: str | None = None
    stopped: bool = False
    busy: bool = False
    """Nothing was polled: another process holds the source's lease."""

    @property
    def clean(self) -> bool:
        """True when the poll succeeded and no delivery was deferred, failed or dead-lettered."""
        return self.error is None and self.counts.clean

    @property
    def status(self) -> str:
        """``ok`` (clean), ``partial`` (the source answered; a delivery did not go through) or ``failed``."""
        return "ok" if self.clean else ("failed" if self.error else "partial")

    def line(self) -> str:
        """One log line summarising the poll."""
        c = self.counts
        text = (f"poll {self.source}: fetched={c.fetched} delivered={c.delivered} no_route={c.no_route} "
                f"skipped={c.skipped} dropped={c.dropped} quarantined={c.quarantined} "
                f"dead_letters={c.dead_letters} deferred={c.deferred} deleted={c.deleted} defects={c.defects} "
                f"errors={c.errors} in {c.seconds:.2f}s")
        if self.error:
            text += f" — failed: {self.error}"
        if self.stopped:
            text += " (stopped early)"
        return text


@dataclass
class _Batch:
    """What one batch retrieved so far: outcomes decided before delivery, deliveries, raw bytes."""

    outcomes: list[tuple[Listing, Outcome]] = field(default_factory=list)
    deliveries: list[tuple[Listing, Delivery]] = field(default_factory=list)
    raws: list[RawMessage] = field(default_factory=list)
    recognised: list[tuple[Listing, LedgerRow]] = field(default_factory=list)
    """Fetched messages that proved to be ones already handled (not delivered again)."""


class Poller:
    """Runs one poll of one source."""

    def __init__(self, source: Source, pipeline: Pipeline, deliverer: Deliverer, state: StateStore,
                 batch_size: int = 100) -> None:
        self.source = source
        self.settings = source.config
        self.pipeline = pipeline
        self.state = state
        self.deliverer = deliverer
        self.batch_size = batch_size
        self.stop = source.context.stop
        self.stopped_early = False
        self.mailbox = ""
        self._recheck: dict[str, list[LedgerRow]] = {}
        self._fetching: dict[int, Listing] = {}
        self._heads: dict[str, str] = {}
        self._gone: list[str] = []

    def plan(self, session: SourceSession, listings: Sequence[Listing]) -> tuple[Plan, list[Listing]]:
        """Match the listing to the ledger (see :mod:`popflow.planner`).

        Returns the plan and the handled messages confirmed by ``TOP`` (to delete unfetched).
        """
        identity = self.source.mailbox_identity()
        self.mailbox = mailbox_hash(identity)
        previous = self.state.switch_mailbox(self.source.name, self.mailbox, identity)
        if previous is not None:
            log.warning("source %s now reads %s (it read %s): what popflow remembers of that mailbox is not "
                        "applied to this one; every message here is new to it", self.source.name, identity, previous)
        settings = self.settings
        planner = Planner(self.state, self.source.name, self.mailbox, keep_on_server=settings.keep_on_server,
                          delete_after=settings.delete_after, max_size=settings.max_size)
        plan = planner.plan(listings)
        confirmed: list[Listing] = []
        if plan.verify:
            digests = session.header_digests([listing for listing, _row in plan.verify])
            unconfirmed: list[tuple[Listing, LedgerRow]] = []
            for listing, row in plan.verify:
                if row.header_sha256 and digests.get(listing.number) == row.header_sha256:
                    confirmed.append(listing)
                else:
                    unconfirmed.append((listing, row))
            if unconfirmed:
                log.info("%s: %d handled message(s) could not be confirmed by their headers; fetching them to "
                         "compare by content", self.source.name, len(unconfirmed))
                plan.fetch = sorted(plan.fetch + planner.recheck(plan, unconfirmed), key=lambda item: item.number)
        if self.settings.max_messages:
            plan.fetch = plan.fetch[: self.settings.max_messages]
        return plan, confirmed

    def poll(self, progress: ProgressCallback | None = None) -> PollReport:
        """Poll once. Never raises for mail or server problems: they are in the report."""
        report = PollReport(self.source.name)
        counts = report.counts
        started = time.monotonic()
        run_id = self.state.start_run(self.source.name)
        session: SourceSession | None = None
        to_quit: list[tuple[Listing, str]] = []  # DELE'd: the listing and its ledger key
        try:
            session = self.source.connect()
            plan, confirmed = self.plan(session, session.list_messages())
            self._recheck = plan.recheck
            self._fetching = {listing.number: listing for listing in plan.fetch}
            self._record_skipped(plan.newly_skipped)
            if plan.gone:
                self.state.record_gone(self.source.name, plan.gone)
            counts.skipped = len(plan.skipped)
            counts.newly_skipped = len(plan.newly_skipped)
            if confirmed:
                failed = session.delete(confirmed) or []
                to_quit += [(item, item.uidl) for item in confirmed if item not in failed]
            to_quit += self._run_batches(session, plan.fetch, counts, report, progress)
            report.stopped = report.stopped or self.stopped_early
            session.close(commit=True)  # QUIT: the server expunges what was deleted
            refused = session.refused_deletions()  # DELEs that were queued behind the read-ahead
            session = None
            if refused:
                counts.errors += len(refused)
                to_quit = [(listing, key) for listing, key in to_quit if listing not in refused]
            if to_quit:
                self.state.record_deleted(self.source.name, [key for _listing, key in to_quit])
            counts.deleted = len(to_quit)
        except PopflowError as exc:  # a fatal source error (login, lock, lost connection) or a sink/state one
            self._record_misbehaved(exc)
            report.error = describe_error(exc)
            counts.errors += 1
        except Exception as exc:  # a bug or an unforeseen failure: report it, keep the daemon alive
            log.exception("poll of %s failed unexpectedly", self.source.name)
            report.error = describe_error(exc)
            counts.errors += 1
        finally:
            if session is not None:
                try:
                    session.close(commit=False)
                except Exception as exc:
                    log.debug("closing the session of %s: %s", self.source.name, exc)
            self.deliverer.close()
            counts.seconds = time.monotonic() - started
            self.state.finish_run(run_id, report.status, counts.as_dict(), report.error)
        return report

    def _record_skipped(self, skipped: list[tuple[Listing, str]], outcome: str | None = None) -> None:
        for listing, reason in skipped:
            log.info("skipping %s/%s: %s; left on the server", self.source.name, listing.uidl, reason)
            self.state.record_state(self.source.name, listing.uidl, "skipped", reason,
                                    size=listing.size if not listing.problem else None,
                                    server_uidl=listing.server_id, mailbox=self.mailbox, outcome=outcome)

    def _record_misbehaved(self, exc: PopflowError) -> None:
        """The server broke the protocol while sending one message: skip that message from now on."""
        if not isinstance(exc, ServerMisbehaved) or exc.message_number is None:
            return
        listing = self._fetching.get(exc.message_number)
        if listing is not None:
            self._record_skipped([(listing, describe_error(exc))], outcome=MISBEHAVED)

    def _run_batches(self, session: SourceSession, fetch: list[Listing], counts: PollCounts, report: PollReport,
                     progress: ProgressCallback | None) -> list[tuple[Listing, str]]:
        """Run every batch of ``fetch`` over one retrieval stream. Returns what was DELE'd, with ledger keys.

        One stream for the whole poll lets the session retrieve the next batch while this one is
        written and recorded (see :mod:`popflow.sources.pop3_stream`); a DELE still goes out only
        after its batch is recorded.
        """
        deleted: list[tuple[Listing, str]] = []
        stream = session.retrieve_many(fetch)
        try:
            for start in range(0, len(fetch), self.batch_size):
                if self.stop.is_set():
                    report.stopped = True
                    break
                size = min(self.batch_size, len(fetch) - start)
                deleted += self._run_batch(session, itertools.islice(stream, size), counts)
                if progress:
                    progress(start + size, len(fetch))
                if self.stopped_early:
                    break
        finally:
            close = getattr(stream, "close", None)  # a generator: reads what is still in flight
            if close is not None:
                close()
        return deleted

    def _run_batch(self, session: SourceSession, batch: Iterator[tuple[Listing, RawMessage | DeliveryError]],
                   counts: PollCounts) -> list[tuple[Listing, str]]:
        """Retrieve, process and deliver one batch; record it; DELE what was handled (see ``_run_batches``)."""
        work = _Batch()
        lost: SourceConnectionError | None = None
        try:
            try:
                self._retrieve(batch, counts, work)
            except SourceConnectionError as exc:
                lost = exc  # deliver and record what arrived before the connection failed; no DELE
            delivered = self.deliverer.deliver([delivery for _, delivery in work.deliveries])
            outcomes = work.outcomes + [(listing, outcome) for (listing, _), outcome in
                                        zip(work.deliveries, delivered, strict=True)]
            if self._gone:
                self.state.record_gone(self.source.name, self._gone)
                self._gone = []
            if lost is not None:
                self._record_and_delete(session, outcomes, counts, may_delete=False)
                raise lost
            return (self._record_and_delete(session, outcomes, counts)
                    + self._delete_recognised(session, work.recognised))
        finally:
            for raw in work.raws:
                raw.discard()

    def _retrieve(self, batch: Iterator[tuple[Listing, RawMessage | DeliveryError]], counts: PollCounts,
                  work: _Batch) -> None:
        """Take the batch's messages from the stream and run each through the stages before delivery."""
        for listing, fetched in batch:
            if isinstance(fetched, DeliveryError):
                counts.errors += 1
                log.warning("%s/%s could not be retrieved, left on the server: %s", self.source.name,
                            listing.uidl, describe_error(fetched))
                continue
            counts.fetched += 1
            work.raws.append(fetched)
            self._heads[listing.uidl] = header_digest(fetched.head())
            earlier = self._recheck.get(listing.uidl)
            if earlier:
                same = next((row for row in earlier if row.sha256 == fetched.sha256), None)
                if same is not None:
                    work.recognised.append((listing, same))  # a message already handled: no delivery
                    continue
                self._gone.append(earlier[0].key)  # a new message behind a remembered UIDL
            with log_fields(uidl=listing.uidl):
                prepared = self.pipeline.prepare(fetched, self.source.name, listing.uidl)
            if isinstance(prepared, Outcome):
                work.outcomes.append((listing, prepared))
            else:
                work.deliveries.append((listing, prepared))
            if self.stop.is_set():
                self.stopped_early = True
                break  # finish what was retrieved so far, then QUIT

    def _delete_recognised(self, session: SourceSession,
                           recognised: list[tuple[Listing, LedgerRow]]) -> list[tuple[Listing, str]]:
        """DELE fetched messages that proved to be ones already handled; returns their ledger keys.

        With ``keep_on_server``, one the ledger had marked deleted is made live again instead.
        """
        if not recognised:
            return []
        log.info("%s: %d message(s) fetched again were already handled (same content); not delivered again",
                 self.source.name, len(recognised))
        # Known under another server id now (see popflow.planner): remembered under the new key.
        renamed = [(listing, row) for listing, row in recognised
                   if row.state != "deleted" and row.server_uidl != listing.server_id]
        if renamed:
            self.state.record_handled([HandledMessage(
                self.source.name, listing.uidl, row.outcome or "delivered", size=listing.size,
                sha256=row.sha256 or "", reason=row.reason, server_uidl=listing.server_id, mailbox=self.mailbox,
                header_sha256=row.header_sha256) for listing, row in renamed])
        keys = {listing.uidl: row.key for listing, row in recognised}
        keys.update({listing.uidl: listing.uidl for listing, _row in renamed})
        if self.settings.keep_on_server:
            revived = [row.key for _listing, row in recognised if row.state == "deleted"]
            if revived:
                self.state.revive(self.source.name, revived)
            recognised = [(listing, row) for listing, row in recognised
                          if row.state != "deleted" and (listing, row) not in renamed]
            if not recognised:
                return []
        failed = session.delete([listing for listing, _row in recognised]) or []
        return [(listing, keys[listing.uidl]) for listing, _row in recognised if listing not in failed]

    def _record_and_delete(self, session: SourceSession, outcomes: list[tuple[Listing, Outcome]],
                           counts: PollCounts, *, may_delete: bool = True) -> list[tuple[Listing, str]]:
        """Count and record the batch's outcomes; DELE (or keep) the handled ones; returns the DELE'd ones."""
        to_delete: list[Listing] = []
        for listing, outcome in outcomes:
            counts.add(outcome)
            if outcome.handled:
                to_delete.append(listing)
            else:
                log.warning("%s/%s deferred, left on the server: %s", self.source.name, listing.uidl,
                            outcome.reason)
        # The ledger first: once a handled message is recorded, a crash before QUIT cannot deliver it twice.
        self.deliverer.record(self.source.name, outcomes, mailbox=self.mailbox, heads=self._heads)
        if not to_delete or not may_delete:
            return []
        if self.settings.keep_on_server:
            session.keep(to_delete)
            return []
        failed = session.delete(to_delete) or []
        if failed:
            counts.errors += len(failed)
        return [(listing, listing.uidl) for listing in to_delete if listing not in failed]
