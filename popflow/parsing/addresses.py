"""Address lists, Message-ID and Date from header text, lenient about what real mail writes.

``email.utils.getaddresses`` does the parsing (it is forgiving and cheap); its result is checked,
and when it returns nothing usable the addresses are picked out with a regular expression.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime

from popflow.message import Address
from popflow.parsing.encoded_words import decode_words
from popflow.parsing.headers import sanitize

MAX_ADDRESS_HEADER = 64 * 1024
"""Longer address headers are cut (at a comma) before parsing: the stdlib parser is pure Python."""

_ANGLE_ADDRESS = re.compile(r"<([^<>\s]*@[^<>\s]*)>")
# Bounded repeats keep these linear on long junk (no backtracking over a 64 KB run).
_BARE_ADDRESS = re.compile(r"[^\s<>\"',;:()\[\]@]{1,64}@[^\s<>\"',;:()\[\]@]{1,255}")
_EMPTY_GROUP = re.compile(r"[^:\"<>@]*:\s*(?:;\s*)?(?:\([^()]*\)\s*)?")
_BAD_IN_ADDRESS = re.compile(r"[\s<>\"]")
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
    try:
        pairs = getaddresses([text])
    except Exception:  # e.g. RecursionError on deeply nested comments
        pairs = []
    result = [
        Address(name=sanitize(decode_words(display.strip(), where, defects)), address=sanitize(address))
        for display, address in pairs
        if display or address
    ]
    if result and not any(_BAD_IN_ADDRESS.search(item.address) for item in result):
        return result
    if _EMPTY_GROUP.fullmatch(text) or ("@" not in text and ":" in text):
        return []  # "undisclosed-recipients:;" is a group without members, not an error
    defects.append(f"{where}: unparseable address")
    found = _ANGLE_ADDRESS.findall(text) or _BARE_ADDRESS.findall(text)
    return [Address(address=sanitize(address)) for address in found]


def _simple_addresses(text: str) -> list[tuple[str, str]] | None:
    """``[(name, address)]`` when every item is a plain mailbox; None sends the text to the full parser.

    Most real headers are ``Name <a@b>``, ``"Name" <a@b>`` or ``a@b``: a regex per item is several
    times faster than ``getaddresses``. Quoted commas, comments, groups all fail the match.
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
