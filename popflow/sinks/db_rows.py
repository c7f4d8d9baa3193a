"""Turn a :class:`~popflow.message.Message` into rows for the database sink's tables.

Real mail is messy and databases are strict, so values are made storable the same way on every
database (one message gives the same row on SQLite, PostgreSQL and MariaDB):

* NUL characters (PostgreSQL rejects them in text and JSON) become U+FFFD;
* lone surrogates (left by lenient decoders; not valid UTF-8) become U+FFFD;
* a ``date`` outside years 1000 to 9999 (MariaDB's DATETIME range) is stored as NULL;
* ``meta`` becomes JSON by the one rule every sink follows (:mod:`popflow.record`: bytes base64,
  datetimes ISO 8601, sets sorted lists; an unknown object makes the message a dead letter).

Each such repair is noted in the row's ``defects`` column as ``database: ...``; the message itself
is not changed. Nothing is lost: the raw bytes are the source of truth (kept in ``raw`` with
``store_raw: true``, and by the other sinks and dead letters).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from popflow.message import Address, Message
from popflow.record import json_value

NUL_NOTE = "database: NUL characters replaced with U+FFFD"
SURROGATE_NOTE = "database: invalid Unicode (lone surrogates) replaced with U+FFFD"


# One encoder for every value: ``json.dumps`` with any option builds a new encoder per call, and
# the sink encodes seven JSON columns of every message.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def json_dumps(value: Any) -> str:
    """``value`` (JSON-ready already, see :meth:`Cleaner.json`) as JSON text, non-ASCII kept readable."""
    return _ENCODE(value)


@dataclass(frozen=True)
class LargeValue:
    """Bytes for a ``raw`` or ``content`` column, not read yet: the sink streams them in pieces.

    ``chunks`` yields the bytes anew on each call; ``whole`` (when the bytes are in memory
    already) returns them without a copy.
    """

    size: int
    chunks: Callable[[], Iterator[bytes]]
    whole: Callable[[], bytes] | None = None

    def read(self) -> bytes:
        """All the bytes in one object (for drivers that take no pieces)."""
        return self.whole() if self.whole is not None else b"".join(self.chunks())


class Cleaner:
    """Makes values storable and remembers which repairs it made."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """Record a repair once."""
        if text not in self.notes:
            self.notes.append(text)

    def text(self, value: str | None) -> str | None:
        """A string every database accepts (see the module docstring)."""
        if value is None:
            return None
        if value.isascii() and "\x00" not in value:  # isascii() is O(1) on str: the common case
            return value
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
            self.note(NUL_NOTE)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Pairs of surrogates recombine into one character; lone ones become U+FFFD.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            self.note(SURROGATE_NOTE)
        return value

    def json(self, value: Any) -> Any:
        """``value`` as JSON (:func:`popflow.record.json_value`), with every string made storable."""
        return self._storable(json_value(value))

    def _storable(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(key): self._storable(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._storable(item) for item in value]
        return value

    def date(self, value: datetime | None) -> datetime | None:
        """``value`` in UTC, or None when no database column can hold it."""
        if value is None:
            return None
        try:
            utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except (OverflowError, ValueError):
            utc = None
        if utc is None or not 1000 <= utc.year <= 9999:
            self.note(f"database: date {value.isoformat()} out of range, stored as NULL")
            return None
        return utc

    def addresses(self, addresses: list[Address]) -> list[dict[str, str | None]]:
        """Addresses as ``[{"name": ..., "address": ...}]``."""
        return [{"name": self.text(item.name), "address": self.text(item.address)} for item in addresses]


def message_row(message: Message, *, store_raw: bool, received_at: datetime) -> dict[str, Any]:
    """The ``<prefix>messages`` row for ``message`` (call ``message.load_body()`` first).

    ``raw`` is a :class:`LargeValue` (the sink streams it from memory or the spool file).
    """
    clean = Cleaner()
    sender = message.from_
    row: dict[str, Any] = {
        "source": message.source,
        "uidl": message.uidl,
        "message_id": clean.text(message.message_id),
        "subject": clean.text(message.subject),
        "from_name": clean.text(sender.name) if sender else None,
        "from_address": clean.text(sender.address) if sender else None,
        "to": clean.addresses(message.to),
        "cc": clean.addresses(message.cc),
        "reply_to": clean.addresses(message.reply_to),
        "date": clean.date(message.date),
        "size": message.size,
        "sha256": message.sha256,
        "text": clean.text(message.text),
        "html": clean.text(message.html),
        "headers": [[clean.text(name), clean.text(value)] for name, value in message.headers],
        "meta": clean.json(message.meta),
        "tags": clean.json(set(message.tags)),
        "raw": _raw_bytes(message, clean) if store_raw else None,
        "received_at": received_at,
    }
    defects = [clean.text(defect) for defect in message.defects]
    row["defects"] = defects + [note for note in clean.notes if note not in defects]
    return row


def _raw_bytes(message: Message, clean: Cleaner) -> LargeValue | None:
    if not message.has_raw:  # a message built without raw bytes (tests, plugins)
        clean.note("database: the message had no raw bytes to store")
        return None
    raw = message.raw
    return LargeValue(raw.size, raw.iter_chunks, None if raw.spooled else raw.read)


def attachment_rows(message: Message, *, store_content: bool) -> list[dict[str, Any]]:
    """The ``<prefix>attachments`` rows for ``message``, without ``message_id`` (not known yet).

    ``content`` is a :class:`LargeValue`: nothing is decoded until the sink streams it.
    """
    clean = Cleaner()
    return [
        {
            "position": position,
            "filename": clean.text(attachment.filename) or "",
            "original_filename": clean.text(attachment.original_filename),
            "content_type": clean.text(attachment.content_type) or "application/octet-stream",
            "size": attachment.size,
            "sha256": attachment.sha256,
            "content_id": clean.text(attachment.content_id),
            "inline": attachment.inline,
            "content": LargeValue(attachment.size, attachment.chunks) if store_content else None,
        }
        for position, attachment in enumerate(message.attachments)
    ]
