"""Which listed message is which: matching a server's listing to the ledger, and giving each its key.

A UIDL is the server's word, and servers break it: they number UIDLs and reuse them after a
deletion, list one UIDL for several messages, or sit behind a source name that now points at
another mailbox. The planner therefore never takes a UIDL alone as proof that a message was handled.
The rules (docs/delivery.md, "Which message is which"):

* The ledger's rows belong to one mailbox (:meth:`Source.mailbox_identity`); a poll reads only the
  *live* rows of the mailbox it reads (handled or skipped, not yet deleted), so its cost follows
  what is on the server, not the ledger's history.
* A listed message is the message of a live row when the UIDL and the size from LIST both match
  (several messages with one UIDL are matched in server order).
* Before a matched *handled* message is deleted without being fetched, its header block (``TOP n 0``)
  must match the fingerprint recorded when it was handled. A UIDL listed more than once, a server
  without TOP, or a mismatch: the message is fetched and compared by content (SHA-256) instead.
* Every other message is new and gets a **key** no message of this source ever had: the UIDL text
  itself when it is unused, else ``UIDL~2``, ``UIDL~3``… Sinks are idempotent on ``(source, key)``, so
  a new message can never be mistaken by a sink for an old one, and the same message polled again
  after a crash gets the same key (the choice depends only on the ledger and the listing's order).
* A live row whose message the server no longer lists is marked deleted (someone else removed it,
  or our QUIT expunged it just before a crash).
* A new message the size of a handled one that is no longer listed is fetched and compared by
  content first: the server may have renamed it (an IMAP folder's new UIDVALIDITY gives every
  message a new key; a POP3 server may renumber its UIDLs). The same bytes are that message, now
  remembered under its new key; it is not delivered again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from popflow.sources.base import Listing
from popflow.state import LedgerRow, StateStore
from popflow.timestamps import now

log = logging.getLogger(__name__)

KEY_SEPARATOR = "~"
"""Between a reused UIDL and its generation in a ledger key: ``1~2`` is the second message with UIDL 1."""


MISBEHAVED = "server_misbehaved"
"""Ledger outcome of a message skipped because of what the server did when it was fetched."""


def mailbox_hash(identity: str) -> str:
    """The ledger's short form of a mailbox identity (32 hex characters)."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


@dataclass
class Plan:
    """What a poll will do with the messages the server listed; every listing carries its ledger key."""

    fetch: list[Listing] = field(default_factory=list)
    """Messages to retrieve, in server order."""
    recheck: dict[str, list[LedgerRow]] = field(default_factory=dict)
    """Key of a message to fetch → the handled rows it may turn out to be (compared by SHA-256)."""
    verify: list[tuple[Listing, LedgerRow]] = field(default_factory=list)
    """Handled messages to delete unfetched once ``TOP`` confirms they are still the same."""
    skipped: list[Listing] = field(default_factory=list)
    newly_skipped: list[tuple[Listing, str]] = field(default_factory=list)
    """Skipped messages the ledger does not list as skipped yet, with the reason (recorded once)."""
    gone: list[str] = field(default_factory=list)
    """Keys of live rows whose messages the server no longer lists."""
    seen: int = 0
    taken: set[str] = field(default_factory=set)
    """Every key this source has used, as far as this poll knows (for allocating more)."""
    history: dict[str, list[LedgerRow]] = field(default_factory=dict)
    """Rows of any state with a server UIDL that is new in this poll, by server UIDL."""


class Planner:
    """Builds the :class:`Plan` of one poll of one source."""

    def __init__(self, state: StateStore, source: str, mailbox: str, *, keep_on_server: bool,
                 delete_after: float | None, max_size: int | None) -> None:
        self.state = state
        self.source = source
        self.mailbox = mailbox
        self.keep_on_server = keep_on_server
        self.delete_after = delete_after
        self.max_size = max_size

    def plan(self, listings: Sequence[Listing]) -> Plan:
        """Match ``listings`` to the ledger's live rows and decide what to do with each message."""
        plan = Plan()
        live = self.state.live_rows(self.source, self.mailbox)
        plan.taken = {row.key for row in live}
        by_uidl: dict[str, list[LedgerRow]] = {}
        for live_row in live:
            by_uidl.setdefault(live_row.server_uidl, []).append(live_row)
        listed: dict[str, int] = {}
        for listing in listings:
            listed[listing.uidl] = listed.get(listing.uidl, 0) + 1
        cutoff = now() - timedelta(seconds=self.delete_after) if self.delete_after is not None else None
        new: list[Listing] = []
        rechecked: dict[int, list[LedgerRow]] = {}
        for listing in listings:
            if not listing.uidl:
                log.warning("%s: message %d: %s; left on the server", self.source, listing.number,
                            listing.problem or "no UIDL")
                plan.skipped.append(listing)
                continue
            candidates = list(by_uidl.get(listing.uidl, ()))
            row = self._take_match(by_uidl.get(listing.uidl), listing)
            if row is None:
                new.append(listing)
                continue
            keyed = replace(listing, uidl=row.key, server_uidl=listing.uidl)
            if row.state != "handled":
                self._fetch_or_skip(plan, keyed, row)
            elif not self._due_for_deletion(row, cutoff):
                plan.seen += 1
            elif listed[listing.uidl] > 1:
                # Several messages share this UIDL: a header block could match the wrong one, so
                # this one is fetched and compared by content before anything is deleted.
                rechecked[listing.number] = [row] + [other for other in candidates if other is not row]
                new.append(listing)
            else:
                plan.verify.append((keyed, row))
        plan.gone = [unlisted.key for rows in by_uidl.values() for unlisted in rows]
        vanished: dict[int, list[LedgerRow]] = {}
        for rows in by_uidl.values():
            for unlisted in rows:
                if unlisted.state == "handled" and unlisted.sha256 and unlisted.size is not None:
                    vanished.setdefault(unlisted.size, []).append(unlisted)
        for keyed in self.allocate(plan, new):
            earlier = rechecked.get(keyed.number)
            if earlier is None:
                self._fetch_or_skip(plan, keyed, None)
                # Listed again after it was deleted (a server that did not expunge, a mailbox that
                # reappeared): if the bytes are the same, it is that message, not a new one.
                former = [row for row in plan.history.get(keyed.server_id, ())
                          if row.state == "deleted" and row.size == keyed.size and row.sha256
                          and row.mailbox in (None, self.mailbox)]
                # A handled message that vanished while one of its size appeared: the server may
                # have renamed it (an IMAP UIDVALIDITY change, renumbered UIDLs). Same bytes, same message.
                former += vanished.get(keyed.size, [])
                if former:
                    plan.recheck[keyed.uidl] = former
            else:
                plan.fetch.append(keyed)
                plan.recheck[keyed.uidl] = earlier
        plan.fetch.sort(key=lambda item: item.number)
        return plan

    def recheck(self, plan: Plan, unconfirmed: Sequence[tuple[Listing, LedgerRow]]) -> list[Listing]:
        """Handled messages ``TOP`` did not confirm: fetched under new keys, compared by content."""
        keyed = self.allocate(plan, [replace(listing, uidl=listing.server_id, server_uidl="")
                                     for listing, _row in unconfirmed])
        for listing, (_original, row) in zip(keyed, unconfirmed, strict=True):
            plan.recheck[listing.uidl] = [row]
        return keyed

    def allocate(self, plan: Plan, listings: list[Listing]) -> list[Listing]:
        """Give each new message a key no message of this source had (see the module docstring)."""
        if not listings:
            return []
        uidls = list(dict.fromkeys(listing.uidl for listing in listings))
        for row in self.state.rows_with(self.source, uidls, uidls):
            plan.taken.add(row.key)
            plan.history.setdefault(row.server_uidl, []).append(row)
        while True:
            chosen: list[str] = []
            in_plan = set(plan.taken)
            for listing in listings:
                key, generation = listing.uidl, 1
                while key in in_plan:
                    generation += 1
                    key = f"{listing.uidl}{KEY_SEPARATOR}{generation}"
                in_plan.add(key)
                chosen.append(key)
            derived = [key for key, listing in zip(chosen, listings, strict=True) if key != listing.uidl]
            # A derived key may be another message's literal UIDL ("1~2"): look, and choose again.
            clash = ({row.key for row in self.state.rows_with(self.source, [], derived)} - plan.taken
                     if derived else set())
            if not clash:
                plan.taken = in_plan
                return [replace(listing, uidl=key, server_uidl=listing.uidl)
                        for key, listing in zip(chosen, listings, strict=True)]
            plan.taken |= clash

    # -- steps ------------------------------------------------------------------------------------
    @staticmethod
    def _take_match(rows: list[LedgerRow] | None, listing: Listing) -> LedgerRow | None:
        """The first live row with this UIDL and the same size (removed from ``rows``)."""
        if not rows:
            return None
        for index, row in enumerate(rows):
            if listing.problem or row.size is None or row.size == listing.size:
                return rows.pop(index)
        return None

    def _due_for_deletion(self, row: LedgerRow, cutoff: datetime | None) -> bool:
        if not self.keep_on_server:
            return True  # handled before a crash or a failed QUIT
        return cutoff is not None and row.handled_at is not None and row.handled_at < cutoff

    def _fetch_or_skip(self, plan: Plan, keyed: Listing, row: LedgerRow | None) -> None:
        reason = keyed.problem
        if reason is None and self.max_size and keyed.size > self.max_size:
            reason = f"larger than max_size ({keyed.size} > {self.max_size} bytes)"
        if reason is None and row is not None and row.state == "skipped" and row.outcome == MISBEHAVED:
            reason = row.reason or "the server misbehaved"  # found while fetching (e.g. a runaway RETR)
        if reason is None:
            plan.fetch.append(keyed)
            return
        plan.skipped.append(keyed)
        if row is None or row.state != "skipped":
            plan.newly_skipped.append((keyed, reason))
