"""Address lists, Message-ID and Date from header text, lenient about what real mail writes.

Most address headers are plain ``Name <a@b>, c@d`` lists, read by one regex per item; anything else
(groups, comments, quoted commas, broken syntax) goes to :mod:`popflow.parsing.address_list`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from popflow.message import Address
from popflow.parsing.address_list import read_address_list
from popflow.parsing.encoded_words import decode_words
from popflow.parsing.headers import sanitize

MAX_ADDRESS_HEADER = 64 * 1024
"""Longer address headers are cut (at a comma) before parsing: the full reader is pure Python."""

_ADDR_SPEC = r"[^<>()\s\",;:@\\\[\]]+@[^<>()\s\",;:@\\]+"
# Every branch is deterministic (each class excludes what ends it): linear on any input.
_SIMPLE_MAILBOX = re.compile(
    rf"\"([^\"\\]*)\"\s*<({_ADDR_SPEC})>|([^\",<>@()\\;:\[\]]*)<({_ADDR_SPEC})>|({_ADDR_SPEC})")
_MESSAGE_ID = re.compile(r"<[^<>]*>")


def parse_addresses(text: str, name: str, defects: list[str]) -> list[Address]:
    """The mailboxes in an address header (``text`` not yet RFC 2047 decoded)."""
    text = text.strip()
    if not text:
        return []
    if len(text) > MAX_ADDRESS_HEADER:
        cut = text.rfind(",", 0, MAX_ADDRESS_HEADER)
        text = text[:cut if cut > 0 else MAX_ADDRESS_HEADER]
        defects.append(f"header {name}: longer than {MAX_ADDRESS_HEADER} characters, cut")
    where = f"header {name}"
    simple = _simple_addresses(text)
    if simple is not None:
        return [Address(name=sanitize(decode_words(display, where, defects)), address=address)
                for display, address in simple]
    found = read_address_list(text)
    if found.source_route:
        defects.append(f"{where}: obsolete source route dropped")
    if found.missing_comma:
        defects.append(f"{where}: missing comma between addresses")
    if found.dropped:
        defects.append(f"{where}: unparseable address")
    return [Address(name=sanitize(decode_words(display, where, defects)), address=sanitize(address))
            for display, address in found.mailboxes]


def _simple_addresses(text: str) -> list[tuple[str, str]] | None:
    """``[(name, address)]`` when every item is a plain mailbox; None sends the text to the full parser.

    Most real headers are ``Name <a@b>``, ``"Name" <a@b>`` or ``a@b``: a regex per item is several
    times faster than the full reader. Quoted commas, comments, groups all fail the match.
    """
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        matched = _SIMPLE_MAILBOX.fullmatch(item)
        if matched is None:
            return None
        quoted, quoted_address, plain, plain_address, bare = matched.groups()
        if bare is not None:
            pairs.append(("", bare))
        elif quoted is not None:
            pairs.append((quoted.strip(), quoted_address))
        else:
            pairs.append((plain.strip(), plain_address))
    return pairs


def parse_message_id(text: str, defects: list[str]) -> str | None:
    """The first ``<...>`` token of a Message-ID header, or the bare value (with a defect)."""
    text = text.strip()
    if not text:
        return None
    if found := _MESSAGE_ID.search(text):
        return found.group(0)
    defects.append("header Message-ID: no angle brackets")
    return text.split()[0][:998]


def parse_date(text: str, defects: list[str]) -> datetime | None:
    """An aware datetime from a Date header (UTC when the zone is missing), or None with a defect."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text[:200])
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("header Date: unparseable date")
        return None
    if parsed.tzinfo is None:  # "-0000": time is UTC, zone unknown (RFC 5322 section 3.3)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
