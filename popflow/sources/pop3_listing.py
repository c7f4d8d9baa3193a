"""Reading a POP3 maildrop's listing: the ``LIST`` and ``UIDL`` replies into :class:`Listing` entries.

Pure functions over reply bodies (the session does the I/O): a hostile or broken server's listing
becomes entries with their ``problem`` set, never an exception, so the other messages still flow.
"""

from __future__ import annotations

import logging

from popflow.sources.base import Listing
from popflow.sources.keys import uidl_text
from popflow.sources.pop3_wire import MAX_BODY

log = logging.getLogger("popflow.sources.pop3")

HEADER_KEY_PREFIX = "hdr-sha256:"
"""Prefix of the message key used when the server has no UIDL: SHA-256 of ``TOP n 0``."""
LISTING_LINE = 512
"""Bytes allowed per line of a LIST or UIDL reply (RFC 1939 UIDLs are at most 70 octets)."""
MAX_SIZE_VALUE = 2**63
"""A size from LIST at or above this is impossible (and does not fit the ledger's BIGINT)."""


def listing_limit(message_count: int) -> int:
    """Longest LIST or UIDL reply accepted for a maildrop that STAT said holds ``message_count``."""
    return min(MAX_BODY, (message_count + 16) * LISTING_LINE + 64 * 1024)


def numbered_lines(body: bytes, what: str, label: str) -> dict[int, bytes]:
    """``n value`` lines of a LIST or UIDL reply; lines without a usable message number are ignored."""
    result: dict[int, bytes] = {}
    for line in body.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        number, _, value = line.partition(b" ")
        if not number.isdigit() or int(number) < 1:
            log.warning("%s: ignored a malformed %s line %s", label, what, uidl_text(line[:80]))
            continue
        result[int(number)] = value.strip()
    return result


def make_listings(sizes: dict[int, bytes], uids: dict[int, str]) -> list[Listing]:
    """One :class:`Listing` per message LIST named, in number order, with its key from ``uids``.

    A message without a key, or with an impossible size, gets its ``problem`` set: the poller skips
    it and says why.
    """
    listings = []
    for number in sorted(sizes):
        uid = uids.get(number, "")
        problem = None if uid else "listed without a UIDL"
        text = sizes[number].split(b" ")[0]
        size = int(text) if text.isdigit() else -1
        if not 0 <= size < MAX_SIZE_VALUE:
            size = 0
            problem = f"the server announced an impossible size {uidl_text(text[:40])!r}"
        listings.append(Listing(number=number, uidl=uid, size=size, problem=problem))
    return listings
