"""The header phase: the header block of a message into ``Message`` fields, cheaply.

Only the header block is read (``raw.head()``), split by :mod:`popflow.parsing.headers`, and the
handful of fields the model names are decoded; no MIME parse happens here. The stored ``headers``
list is bounded (:data:`MAX_HEADERS`, :data:`MAX_HEADER_CHARS`); the raw bytes keep everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from popflow.message import Address, Message
from popflow.parsing.addresses import parse_addresses, parse_date, parse_message_id
from popflow.parsing.encoded_words import decode_words
from popflow.parsing.headers import (
    HeaderBlock,
    header_fallback_codec,
    header_text,
    sanitize,
    split_header_block,
)
from popflow.parsing.params import parse_params
from popflow.raw import RawMessage

HEAD_READ = 256 * 1024
"""First read of the message start; real header blocks fit."""
HEAD_READ_MAX = 2 * 1024 * 1024
"""Second, last read when the header block is longer; beyond it headers are ignored (a defect)."""
MAX_HEADERS = 1000
"""Headers kept in ``Message.headers``; later ones are dropped (a defect)."""
MAX_HEADER_CHARS = 1024 * 1024
"""Decoded characters kept in ``Message.headers`` over all headers."""

_ADDRESS_FIELDS = {"to": "to", "cc": "cc", "reply-to": "reply_to"}


def read_header_block(raw: RawMessage, defects: list[str]) -> HeaderBlock:
    """Split the header block at the start of ``raw``, reading no more of it than needed."""
    for limit in (HEAD_READ, HEAD_READ_MAX):
        head = raw.head(limit)
        if raw.size <= len(head):
            block = split_header_block(head)
            if not block.complete:
                defects.append("headers: no blank line after the headers (no body)")
            return block
        # Only whole lines: a line cut by the read limit would look like the start of the body.
        end = head.rfind(b"\n") + 1
        block = split_header_block(head, 0, end)
        if block.body_start < end:
            return block
    defects.append(f"headers: header block larger than {HEAD_READ_MAX // (1024 * 1024)} MB, the rest ignored")
    return block


def fill_header_fields(message: Message, raw: RawMessage, defects: list[str]) -> None:
    """Set ``headers``, ``subject``, ``message_id``, ``date`` and the address fields of ``message``."""
    block = read_header_block(raw, defects)
    defects.extend(block.defects)
    fallback = "utf-8"
    if any(not value.isascii() for _, value in block.fields):
        fallback = header_fallback_codec(block, _declared_charset(block, defects))
    firsts: dict[str, bytes] = {}
    for name, value in block.fields:
        firsts.setdefault(name.lower(), value)
    message.headers = _decoded_headers(block, fallback, defects)
    decoded: dict[str, str] = {}
    for name, text_value in message.headers:
        decoded.setdefault(name.lower(), text_value)

    def text(name: str, words: bool = True) -> str | None:
        if words and name in decoded:
            return decoded[name]  # already decoded for the headers list
        value = firsts.get(name)
        return None if value is None else header_text(value, _canonical(name), fallback, defects, words=words)

    _guarded(defects, "Subject", lambda: setattr(message, "subject", text("subject")))
    _guarded(defects, "Message-ID", lambda: setattr(
        message, "message_id", parse_message_id(text("message-id") or "", defects)))
    _guarded(defects, "Date", lambda: setattr(message, "date", parse_date(text("date") or "", defects)))
    _guarded(defects, "From", lambda: setattr(message, "from_", _sender(text("from", words=False), defects)))
    for name, attribute in _ADDRESS_FIELDS.items():

        def addresses(name: str = name, attribute: str = attribute) -> None:
            found = parse_addresses(text(name, words=False) or "", _canonical(name), defects)
            setattr(message, attribute, found)

        _guarded(defects, _canonical(name), addresses)


def _decoded_headers(block: HeaderBlock, fallback: str, defects: list[str]) -> list[tuple[str, str]]:
    """Every header decoded, in order, up to the count and size caps."""
    headers: list[tuple[str, str]] = []
    budget = MAX_HEADER_CHARS
    for name, value in block.fields:
        if len(headers) >= MAX_HEADERS:
            defects.append(f"headers: more than {MAX_HEADERS} headers, only the first {MAX_HEADERS} kept")
            break
        try:
            decoded = header_text(value, name, fallback, defects)
        except Exception as exc:  # pragma: no cover - header_text is written not to raise
            defects.append(f"header {name}: undecodable ({type(exc).__name__})")
            continue
        if len(decoded) + len(name) > budget:
            headers.append((name, decoded[:max(0, budget - len(name))]))
            defects.append(f"headers: more than {MAX_HEADER_CHARS // (1024 * 1024)} MB of headers, cut")
            break
        budget -= len(decoded) + len(name)
        headers.append((name, decoded))
    return headers


def _sender(text: str | None, defects: list[str]) -> Address | None:
    """The first From mailbox; a From with no address keeps its text as the name."""
    if text is None:
        return None
    found = parse_addresses(text, "From", defects)
    if found:
        return found[0]
    name = sanitize(decode_words(text.strip()[:200], "header From", defects))
    return Address(name=name) if name else None


def _declared_charset(block: HeaderBlock, defects: list[str]) -> str | None:
    raw_type = block.first("content-type")
    if raw_type is None:
        return None
    _, params = parse_params(raw_type.decode("latin-1"), "headers Content-Type", defects)
    return params.get("charset")


_CANONICAL = {"message-id": "Message-ID", "reply-to": "Reply-To"}


def _canonical(name: str) -> str:
    return _CANONICAL.get(name) or name.title()


def _guarded(defects: list[str], name: str, action: Callable[[], Any]) -> None:
    """Run one field's extraction; a surprise in one field must not cost the others."""
    try:
        action()
    except Exception as exc:
        defects.append(f"header {name}: unreadable ({type(exc).__name__})")
