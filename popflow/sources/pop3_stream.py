"""The RETR stream of a POP3 session: retrievals that run ahead of the consumer, DELEs queued behind them.

:class:`RetrievalStream` is the part of :class:`~popflow.sources.pop3_session.Pop3Session` that
keeps commands in flight (a mixin over the session's wire and state). While the poller writes and
records one batch, the RETRs of the next are already in flight and the server streams them into
the socket. The batch's DELEs, sent once it is recorded, queue behind them: their replies are read
(settled) as the stream reaches them, and a refusal is reported by :meth:`refused_deletions`. A
command that must read its own reply first reads the replies ahead of it ("parks" them for the
consumer). POP3 answers in order, so nothing is ambiguous, and a DELE still goes out only when the
poller asks for it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from popflow.context import RuntimeContext
from popflow.errors import DeferMessage, DeliveryError, SourceConnectionError, SourceFatalError
from popflow.raw import SPOOL_THRESHOLD, RawMessage
from popflow.sources.base import Listing
from popflow.sources.pop3_wire import Pop3Wire, Response

if TYPE_CHECKING:
    from popflow.sources.pop3 import Pop3Config

log = logging.getLogger("popflow.sources.pop3")

DRAIN_LIMIT = 2**40
"""Replies in flight when a pipelined exchange ends early are read to their end (stop, deadlines apply)."""
READ_AHEAD_BYTES = 8 * 1024 * 1024
"""Listed size of the RETRs kept in flight ahead of the consumer (at least one message): enough to
fill a long fat link (20 ms at 1 Gbit/s is 2.5 MB), small enough that the replies parked in memory
when a DELE has to pass them stay bounded (a message over the spool threshold is parked on disk)."""


def retr_limit(announced: int) -> int:
    """How far a RETR may run past the size LIST announced before it is cut off.

    Generous for honest servers: Courier serves a CRLF message as CR CR LF, so RETR can exceed LIST
    by up to half; some servers count LF line endings. Twice the size plus 1 MB covers them.
    """
    return 2 * announced + 1024 * 1024


class RetrievalStream:
    """RETRs in flight ahead of the consumer and DELEs queued behind them (see the module docstring)."""

    config: Pop3Config
    context: RuntimeContext
    _broken: bool
    _pipelining: bool
    _retrieved: set[int]
    _deleted: set[int]

    def _init_stream(self) -> None:
        self._in_flight: deque[tuple[bool, Listing]] = deque()
        """Commands sent whose replies have not been read, oldest first: (is a DELE, its listing)."""
        self._retrs_in_flight = 0
        self._refused_deletions: list[Listing] = []
        """DELEs queued behind the read-ahead that the server then refused."""
        self._parked: deque[tuple[Listing, RawMessage | DeliveryError]] = deque()
        """RETR replies read ahead of the consumer, so that a later command's replies could be read."""
        self._ahead_bytes = 0
        """Listed size of the messages in flight or parked."""

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def wire(self) -> Pop3Wire:
        raise NotImplementedError

    def _collect(self, listing: Listing, threshold: int = SPOOL_THRESHOLD) -> RawMessage:
        try:
            body = self.wire.iter_body(retr_limit(listing.size), message_number=listing.number,
                                       what=f"RETR {listing.number} ({listing.size} bytes listed)",
                                       expected=2 * listing.size + 64 * 1024)
            # The spool folder is looked up (a stat) only for a message that needs it.
            return RawMessage.from_chunks(body, spool_dir=lambda: self.context.spool_dir, threshold=threshold)
        except SourceConnectionError:
            self._broken = True
            raise
        except OSError as exc:  # the spool could not be written: the body is half read
            self._broken = True
            self.wire.close()
            raise SourceFatalError(f"{self.label}: cannot spool message {listing.uidl}: {exc}") from exc

    def _refused(self, listing: Listing, reply: Response) -> DeferMessage:
        log.warning("%s: RETR %d (%s) refused: %s", self.label, listing.number, listing.uidl, reply.text)
        return DeferMessage(f"{self.label}: the server refused message {listing.uidl}: {reply.text}")

    def retrieve_many(self, listings: Iterable[Listing]) -> Iterator[tuple[Listing, RawMessage | DeliveryError]]:
        """RETR each listing in order; a refused one yields a DeferMessage.

        When pipelining, RETRs stay in flight ahead of the consumer, also while it is not asking
        (between batches): up to ``pipeline_window`` of them and :data:`READ_AHEAD_BYTES` of listed
        size. Closing the generator reads what is left of them.
        """
        wanted = deque(listings)
        window = self.config.pipeline_window if self._pipelining else 1
        try:
            while wanted or self._retrs_in_flight or self._parked:
                self._top_up(wanted, window)
                listing, fetched = self._parked.popleft() if self._parked else self._read_retr()
                self._ahead_bytes -= listing.size
                yield listing, fetched
        finally:
            self._abandon_retrievals()

    def _top_up(self, wanted: deque[Listing], window: int) -> None:
        """Send more RETRs once half of the window has been answered (one write for several)."""
        outstanding = self._retrs_in_flight + len(self._parked)
        if not wanted or outstanding > window // 2:
            return
        batch: list[Listing] = []
        while wanted and outstanding + len(batch) < window and (
                self._ahead_bytes < READ_AHEAD_BYTES or not (outstanding or batch)):
            batch.append(wanted.popleft())
            self._ahead_bytes += batch[-1].size
        self._send_queued(b"RETR", batch)
        self._retrs_in_flight += len(batch)

    def _read_retr(self, threshold: int = SPOOL_THRESHOLD) -> tuple[Listing, RawMessage | DeliveryError]:
        """Read the reply (and body) of the oldest RETR in flight, settling the DELEs queued before it."""
        while True:
            is_dele, listing, reply = self._read_next()
            if not is_dele:
                break
        self._retrs_in_flight -= 1
        if not reply.ok:
            return listing, self._refused(listing, reply)
        self._retrieved.add(listing.number)
        return listing, self._collect(listing, threshold)

    def _read_next(self) -> tuple[bool, Listing, Response]:
        """Read the oldest reply in flight (a RETR's body is left to the caller); settle a DELE's."""
        is_dele, listing = self._in_flight.popleft()
        try:
            reply = self.wire.read_response()
        except SourceConnectionError:
            self._lose_stream()
            raise
        if is_dele and not self._settle_dele(listing, reply):
            self._refused_deletions.append(listing)
        return is_dele, listing, reply

    def _settle_dele(self, listing: Listing, reply: Response) -> bool:
        if reply.ok:
            self._deleted.add(listing.number)
            return True
        log.warning("%s: DELE %d (%s) refused: %s", self.label, listing.number, listing.uidl, reply.text)
        return False

    def _park_retrievals(self) -> None:
        """Read every reply still in flight, so that the next reply on the wire is the caller's own."""
        held = sum(len(raw) for _listing, raw in self._parked if isinstance(raw, RawMessage) and not raw.spooled)
        while self._retrs_in_flight:
            # What a server sends may exceed what it listed: past READ_AHEAD_BYTES in memory, park on disk.
            listing, fetched = self._read_retr(SPOOL_THRESHOLD if held < READ_AHEAD_BYTES else 0)
            if isinstance(fetched, RawMessage) and not fetched.spooled:
                held += len(fetched)
            self._parked.append((listing, fetched))
        while self._in_flight:  # DELEs queued after the last RETR
            self._read_next()

    def _abandon_retrievals(self) -> None:
        """The consumer stopped taking messages: drop the parked ones, read the rest off the wire."""
        self._ahead_bytes = 0
        while self._parked:
            _listing, fetched = self._parked.popleft()
            if isinstance(fetched, RawMessage):
                fetched.discard()
        if self._broken:
            self._lose_stream()
            return
        while self._in_flight:
            is_dele, listing, reply = self._read_next()
            if not is_dele:
                self._retrs_in_flight -= 1
                if reply.ok:
                    self._retrieved.add(listing.number)  # the server counts it as retrieved (EXPIRE 0)
                    try:
                        self.wire.skip_body(DRAIN_LIMIT)
                    except SourceConnectionError:
                        self._lose_stream()
                        raise

    def _lose_stream(self) -> None:
        """The connection failed: no reply in flight will be read; the session is broken."""
        self._broken = True
        self._in_flight.clear()
        self._retrs_in_flight = 0

    def refused_deletions(self) -> list[Listing]:
        """DELEs queued behind the read-ahead (``delete`` returned before their replies) that were refused."""
        return list(self._refused_deletions)

    def _queue_deletions(self, wanted: list[Listing]) -> bool:
        """While RETRs are in flight, send the DELEs behind them without waiting; False otherwise."""
        if not (self._retrs_in_flight and wanted):
            return False
        self._send_queued(b"DELE", wanted)
        return True

    def _send_queued(self, command: bytes, listings: list[Listing]) -> None:
        """Send ``command n`` for each listing in one write; their replies join the queue."""
        try:
            self.wire.send(b"".join(b"%s %d\r\n" % (command, item.number) for item in listings))
        except SourceConnectionError:
            self._broken = True
            raise
        self._in_flight.extend((command == b"DELE", item) for item in listings)
