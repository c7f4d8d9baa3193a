"""One IMAP session as a popflow :class:`~popflow.sources.base.SourceSession`: moving the mail.

On top of :class:`~popflow_imap.connection.ImapConnection` (connect, login, SELECT), per folder:
``UID FETCH 1:* (UID RFC822.SIZE FLAGS)`` to list, ``UID FETCH <set> (UID BODY.PEEK[])`` in batches
to retrieve (no ``\\Seen`` side effect), and,
only for messages the poller reports handled:

* ``after: delete`` — ``UID STORE +FLAGS.SILENT (\\Deleted)`` then ``UID EXPUNGE`` of exactly those
  UIDs (UIDPLUS). Never a bare ``EXPUNGE``: it would also remove what other clients flagged. A server
  without UIDPLUS keeps them flagged ``\\Deleted`` (then no longer listed by popflow);
* ``after: move:FOLDER`` — ``UID MOVE`` (RFC 6851), else ``UID COPY`` + the delete above;
* ``after: seen`` — ``UID STORE +FLAGS.SILENT (\\Seen)`` (:meth:`keep`).

Each message's key is ``FOLDER;UIDVALIDITY=V;UID=U`` (RFC 5092's words): unique for as long as the
server keeps its promise, and a new UIDVALIDITY gives every message of the folder a new key (see
the README on how popflow then tells old mail from new).
"""

from __future__ import annotations

import logging
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
from popflow.sources.keys import header_digest, uidl_text
from popflow.sources.pop3_stream import retr_limit
from popflow_imap.connection import MAX_SIZE_VALUE, MAX_UID, ImapConnection, message_key, uid_set
from popflow_imap.parse import fetch_items
from popflow_imap.wire import Reply

if TYPE_CHECKING:
    from popflow_imap.config import ImapConfig

log = logging.getLogger("popflow_imap")

HEADER_LIMIT = 4 * 1024 * 1024
"""Longest header block (``BODY.PEEK[HEADER]``) accepted."""


class ImapSession(ImapConnection):
    """A connected, authenticated IMAP session over one or more folders: list, fetch, delete, move, keep."""

    def __init__(self, config: ImapConfig, context: RuntimeContext, name: str = "imap", *,
                 password: Callable[[], str] | None = None, token: Callable[[], str] | None = None) -> None:
        super().__init__(config, context, name, password=password, token=token)
        self._where: dict[int, tuple[str, int]] = {}
        """Listing number → (folder, UID)."""

    # -- listing -------------------------------------------------------------------------------

    def list_messages(self) -> list[Listing]:
        """Every message of every folder (UID order within a folder, folders in config order).

        A message flagged ``\\Deleted`` but not expunged is listed where the server has UIDPLUS:
        popflow may have been killed between its ``UID STORE`` and ``UID EXPUNGE`` (the ledger then
        knows it as handled, and this poll expunges it), or another client flagged it (never
        handled: it is delivered before it is expunged, so it is not lost). Without UIDPLUS popflow
        cannot expunge by UID and leaves its own deletions flagged, so flagged messages are not listed.
        """
        listings: list[Listing] = []
        for folder in self.config.folders:
            state = self.select(folder)
            if state.exists == 0:
                continue
            found: dict[int, tuple[int, bool]] = {}
            bad: list[Any] = []

            def seen(reply: Reply, found: dict[int, tuple[int, bool]] = found, bad: list[Any] = bad) -> None:
                parsed = fetch_items(reply.values)
                if parsed is None:
                    return
                items = parsed[1]
                uid, size = items.get("UID"), items.get("RFC822.SIZE")
                flags = items.get("FLAGS") or []
                if not isinstance(uid, int) or not 1 <= uid <= MAX_UID:
                    bad.append(uid)  # never sent back in a command; the message stays on the server
                    return
                deleted = isinstance(flags, list) and any(str(f).upper() == "\\DELETED" for f in flags)
                found[uid] = (size if isinstance(size, int) and 0 <= size < MAX_SIZE_VALUE else -1, deleted)

            reply = self.run("UID FETCH 1:* (UID RFC822.SIZE FLAGS)", on_untagged=seen, limit=state.exists)
            if not reply.ok:
                raise SourceFatalError(f"{self.label}: listing {folder!r} failed: {reply.message[:200]}")
            if bad:
                log.warning("%s: %s: %d message(s) listed with an invalid UID (e.g. %r); left on the server",
                            self.label, folder, len(bad), str(bad[0])[:40])
            for uid in sorted(found):
                size, deleted = found[uid]
                if deleted and not self.has("UIDPLUS"):
                    continue  # popflow's own deletions on such a server stay flagged (see above)
                number = len(self._where) + 1
                self._where[number] = (folder, uid)
                problem = None if size >= 0 else "the server announced no usable RFC822.SIZE"
                listings.append(Listing(number=number, uidl=message_key(folder, state.uidvalidity, uid),
                                        size=max(size, 0), problem=problem))
        return listings

    # -- retrieving ----------------------------------------------------------------------------

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
        except SourceConnectionError as exc:
            # Cut mid-FETCH: the messages whose FETCH response arrived whole are complete; hand them
            # over (the poller delivers and records them, deleting nothing on this broken session)
            # so the next poll does not fetch them again; the one cut short is dropped.
            complete = {id(raw) for raw in arrived.values()}
            text = (f"{exc} during UID FETCH of {len(by_uid)} message(s) from {uidl_text(folder.encode())!r} "
                    f"({len(arrived)} arrived whole)")
            # A protocol breach keeps its type and message number: the poller then leaves that
            # message on the server (recorded as skipped, with the reason) and the rest flows.
            lost = ServerMisbehaved(text, message_number=exc.message_number) \
                if isinstance(exc, ServerMisbehaved) else SourceConnectionError(text)
            for raw in pending:
                if id(raw) not in complete:
                    raw.discard()
            try:
                for uid in sorted(arrived):
                    yield by_uid[uid], arrived.pop(uid)
            finally:  # the poller stopped taking them: none is left in the spool
                for raw in arrived.values():
                    raw.discard()
            raise lost from exc
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
        words = text.upper().replace(b"(", b" ").split()  # "* 1 FETCH (UID 7 BODY[] {N}"
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

    # -- after a message is handled --------------------------------------------------------------

    def delete(self, listings: Iterable[Listing]) -> list[Listing]:
        """``after: delete`` or ``move:FOLDER`` for handled messages; returns the ones the server refused."""
        failed: list[Listing] = []
        target = self.config.move_to
        for folder, group in self._by_folder(list(listings)):
            self._ensure_selected(folder)
            uids = uid_set(self._where[item.number][1] for item in group)
            ok = self._move(uids, target) if target is not None else self._expunge(uids)
            if not ok:
                failed += group
        return failed

    def _store(self, uids: str, flag: str) -> bool:
        reply = self.run(f"UID STORE {uids} +FLAGS.SILENT ({flag})")
        if not reply.ok:
            log.warning("%s: setting %s on UIDs %s refused: %s", self.label, flag, uids, reply.message[:200])
        return reply.ok

    def _expunge(self, uids: str) -> bool:
        if not self._store(uids, "\\Deleted"):
            return False
        if not self.has("UIDPLUS"):
            return True  # flagged; expunging here could also remove other clients' flagged mail
        reply = self.run(f"UID EXPUNGE {uids}")
        if not reply.ok:
            log.warning("%s: UID EXPUNGE %s refused: %s", self.label, uids, reply.message[:200])
        return reply.ok

    def _move(self, uids: str, target: str) -> bool:
        verb = "MOVE" if self.has("MOVE") else "COPY"
        command = f"UID {verb} {uids} ".encode() + self._folder_arg(target)
        reply = self.run(command)
        if not reply.ok and reply.code[0] == "TRYCREATE":
            created = self.run(b"CREATE " + self._folder_arg(target))
            log.info("%s: created folder %r for after: move (%s)", self.label, target,
                     "ok" if created.ok else created.message[:200])
            reply = self.run(command)
        if not reply.ok:
            log.warning("%s: %s of UIDs %s to %r refused: %s", self.label, verb, uids, target, reply.message[:200])
            return False
        return verb == "MOVE" or self._expunge(uids)

    def keep(self, listings: Iterable[Listing]) -> None:
        """``after: seen``: flag the handled messages ``\\Seen`` (the ledger already keeps them as handled)."""
        for folder, group in self._by_folder(list(listings)):
            self._ensure_selected(folder)
            self._store(uid_set(self._where[item.number][1] for item in group), "\\Seen")

    def __enter__(self) -> ImapSession:
        return self
