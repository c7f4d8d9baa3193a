"""The header phase: the header block of a message into ``Message`` fields, cheaply.

Only the header block is read (``raw.head()``), split by :mod:`popflow.parsing.headers`, and the
handful of fields the model names are decoded; no MIME parse happens here. The stored ``headers``
list is bounded (:data:`MAX_HEADERS`, :data:`MAX_HEADER_CHARS`); the raw bytes keep everything.
"""

from __future__ import annotations

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

_ADDRESS_FIELDS = (("to", "to", "To"), ("cc", "cc", "Cc"), ("reply-to", "reply_to", "Reply-To"))
"""``(lower-case header name, Message attribute, the name defects use)``."""


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
    headers = _decoded_headers(block, fallback, defects)
    message.headers = headers
    decoded: dict[str, str] = {}
    for name, text_value in headers:
        decoded.setdefault(name.lower(), text_value)
    # Each field on its own (no closure or lambda per field: this runs for every message); a
    # surprise in one field must not cost the others.
    try:
        message.subject = _text(decoded, firsts, "subject", "Subject", fallback, defects)
    except Exception as exc:
        _unreadable(defects, "Subject", exc)
    try:
        found = _text(decoded, firsts, "message-id", "Message-ID", fallback, defects)
        message.message_id = parse_message_id(found or "", defects)
    except Exception as exc:
        _unreadable(defects, "Message-ID", exc)
    try:
        message.date = parse_date(_text(decoded, firsts, "date", "Date", fallback, defects) or "", defects)
    except Exception as exc:
        _unreadable(defects, "Date", exc)
    try:
        message.from_ = _sender(_undecoded(firsts.get("from"), "From", fallback, defects), defects)
    except Exception as exc:
        _unreadable(defects, "From", exc)
    for name, attribute, canonical in _ADDRESS_FIELDS:
        try:
            setattr(message, attribute,
                    parse_addresses(_undecoded(firsts.get(name), canonical, fallback, defects) or "", canonical,
                                    defects))
        except Exception as exc:
            _unreadable(defects, canonical, exc)


def _text(decoded: dict[str, str], firsts: dict[str, bytes], name: str, canonical: str, fallback: str,
          defects: list[str]) -> str | None:
    """The first ``name`` field as text: from the decoded headers list, else (past its caps) decoded now."""
    found = decoded.get(name)
    if found is not None:
        return found
    value = firsts.get(name)
    return None if value is None else header_text(value, canonical, fallback, defects)


def _undecoded(value: bytes | None, name: str, fallback: str, defects: list[str]) -> str | None:
    """An address field's text with its encoded words left in (each name is decoded on its own)."""
    return None if value is None else header_text(value, name, fallback, defects, words=False)


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


def _unreadable(defects: list[str], name: str, exc: Exception) -> None:
    defects.append(f"header {name}: unreadable ({type(exc).__name__})")
