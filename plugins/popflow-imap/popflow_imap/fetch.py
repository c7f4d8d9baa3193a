"""Retrieving from an IMAP session: ``UID FETCH`` of bodies (in batches, streamed into the spool)
and of header blocks (the digests the poller compares before deleting).

A mixin of :class:`~popflow_imap.session.ImapSession`, kept apart so each stays small: it uses
only the session's command loop (:meth:`run`), folder selection and its listing map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from popflow import (
    DeferMessage,
    DeliveryError,
    Listing,
    RawMessage,
    RuntimeContext,
    ServerMisbehaved,
    SourceConnectionError,
    SourceFatalError,
)
from popflow.sources.keys import header_digest
from popflow.sources.pop3_session import retr_limit
from popflow_imap.parse import fetch_items
from popflow_imap.wire import ImapWire, Reply, uid_set

if TYPE_CHECKING:
    from popflow_imap.config import ImapConfig

HEADER_LIMIT = 4 * 1024 * 1024
"""Longest header block (``BODY.PEEK[HEADER]``) accepted."""


class FetchCommands:
    """The retrieving part of :class:`~popflow_imap.session.ImapSession`."""

    config: ImapConfig
    context: RuntimeContext
    _where: dict[int, tuple[str, int]]
    """Listing number → (folder, UID)."""

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def wire(self) -> ImapWire:
        raise NotImplementedError

    def run(self, command: str | bytes, on_untagged: Callable[[Reply], None] | None = None,
            on_literal: Any = None, limit: int = ...) -> Reply:
        raise NotImplementedError

    def _ensure_selected(self, folder: str) -> None:
        raise NotImplementedError

    def retrieve(self, listing: Listing) -> RawMessage:
        """The raw bytes of one message (``BODY.PEEK[]``)."""
        for _listing, fetched in self.retrieve_many([listing]):
            if isinstance(fetched, DeliveryError):
                raise fetched
            return fetched
        raise DeferMessage(f"{self.label}: message {listing.uidl} is no longer on the server")

    def retrieve_many(self, listings: Iterable[Listing]) -> Iterator[tuple[Listing, RawMessage | DeliveryError]]:
        """``UID FETCH`` in batches of ``fetch_batch`` per folder; each body streams into a RawMessage.

        A message the server does not return (expunged meanwhile) yields a DeferMessage.
        """
        wanted = list(listings)
        batch = self.config.fetch_batch
        for start in range(0, len(wanted), batch):
            for folder, group in self._by_folder(wanted[start:start + batch]):
                yield from self._fetch_group(folder, group)

    def _by_folder(self, listings: list[Listing]) -> list[tuple[str, list[Listing]]]:
        groups: dict[str, list[Listing]] = {}
        for listing in listings:
            groups.setdefault(self._where[listing.number][0], []).append(listing)
        return list(groups.items())

    def _fetch_group(self, folder: str, group: list[Listing]) -> Iterator[tuple[Listing, RawMessage | DeliveryError]]:
        self._ensure_selected(folder)
        by_uid = {self._where[item.number][1]: item for item in group}
        arrived: dict[int, RawMessage] = {}
        pending: list[RawMessage] = []

        def body(text: bytes, size: int) -> Any:
            head = text.rstrip().upper()
            if not head.endswith(b"BODY[]"):
                return self.wire.read_literal(size)
            listing = self._listing_of(text, by_uid)
            number = listing.number if listing else None
            limit = retr_limit(listing.size) if listing else max(retr_limit(item.size) for item in group)
            if size > limit:
                self.wire.close()
                raise ServerMisbehaved(f"{self.label}: a message body of {size} bytes announced where "
                                       f"{listing.size if listing else '?'} were listed; connection dropped",
                                       message_number=number)
            raw = self._spool(size, number)
            pending.append(raw)
            return raw

        def seen(reply: Reply) -> None:
            parsed = fetch_items(reply.values)
            if parsed is None:
                return
            uid, raw = parsed[1].get("UID"), parsed[1].get("BODY[]")
            if isinstance(raw, RawMessage):
                if isinstance(uid, int) and uid in by_uid and uid not in arrived:
                    arrived[uid] = raw
                else:
                    raw.discard()

        try:
            reply = self.run(f"UID FETCH {uid_set(by_uid)} (UID BODY.PEEK[])", on_untagged=seen,
                             on_literal=body, limit=len(by_uid))
        except BaseException:
            for raw in pending:
                raw.discard()
            raise
        if not reply.ok:
            for raw in arrived.values():
                raw.discard()
            for item in group:
                yield item, DeferMessage(f"{self.label}: the server refused message {item.uidl}: "
                                         f"{reply.message[:200]}")
            return
        handed: set[int] = set()
        try:
            for uid, item in by_uid.items():
                got = arrived.get(uid)
                handed.add(uid)
                yield item, got if got is not None else DeferMessage(
                    f"{self.label}: message {item.uidl} was not returned (expunged meanwhile?)")
        finally:  # the poller stopped early: what it never saw is not left in the spool
            for uid, raw in arrived.items():
                if uid not in handed:
                    raw.discard()

    @staticmethod
    def _listing_of(text: bytes, by_uid: dict[int, Listing]) -> Listing | None:
        """The listing a FETCH response is about, when its UID came before the body."""
        words = text.upper().split()
        if b"UID" in words:
            index = words.index(b"UID")
            if index + 1 < len(words) and words[index + 1].isdigit():
                return by_uid.get(int(words[index + 1]))
        return None

    def _spool(self, size: int, number: int | None) -> RawMessage:
        try:
            return RawMessage.from_chunks(self.wire.iter_exact(size, f"message {number} ({size} bytes)", number),
                                          spool_dir=self.context.spool_dir)
        except SourceConnectionError:
            raise
        except OSError as exc:  # the spool could not be written: the literal is half read
            self.wire.close()
            raise SourceFatalError(f"{self.label}: cannot spool a message: {exc}") from exc

    def header_digests(self, listings: Iterable[Listing]) -> dict[int, str]:
        """``BODY.PEEK[HEADER]`` of each listing → its header digest (as the poller asks before deleting)."""
        digests: dict[int, str] = {}
        for folder, group in self._by_folder(list(listings)):
            self._ensure_selected(folder)
            by_uid = {self._where[item.number][1]: item for item in group}

            def header(text: bytes, size: int) -> Any:
                if size > HEADER_LIMIT:
                    self.wire.close()
                    raise ServerMisbehaved(f"{self.label}: a header block of {size} bytes; connection dropped")
                return b"".join(self.wire.iter_exact(size, "a header block"))

            def seen(reply: Reply, by_uid: dict[int, Listing] = by_uid) -> None:
                parsed = fetch_items(reply.values)
                if parsed is None:
                    return
                uid, data = parsed[1].get("UID"), parsed[1].get("BODY[HEADER]")
                if isinstance(uid, int) and uid in by_uid and isinstance(data, bytes):
                    digests[by_uid[uid].number] = header_digest(data)

            self.run(f"UID FETCH {uid_set(by_uid)} (UID BODY.PEEK[HEADER])", on_untagged=seen,
                     on_literal=header, limit=len(by_uid))
        return digests
