"""The IMAP4rev1 wire (RFC 3501): tagged commands out; responses with literals in, every one bounded.

Built on popflow's buffered socket (:class:`popflow.sources.pop3_wire.Pop3Wire`: idle timeout,
per-reply deadlines, the stop signal, the STARTTLS injection check) and adds IMAP's grammar:

* a response is a line that may end in a literal ``{N}``: N bytes follow, then the line goes on;
* a literal is handed to a callback that decides where its bytes go (a message body is streamed
  into :class:`~popflow.raw.RawMessage`, which spools large ones to disk); any other literal is
  read into memory only up to :attr:`ImapWire.literal_limit`;
* a response's text (outside literals) is bounded by :data:`MAX_RESPONSE_TEXT`, its number of
  literals by :data:`MAX_LITERALS`, and each literal must arrive at :data:`MIN_RATE` or faster.

The server is input: nothing here trusts a length, a count or a pace it announces.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from popflow import ServerMisbehaved, SourceConnectionError
from popflow.sources.pop3_wire import MIN_RATE, Pop3Wire
from popflow_imap.parse import parse_values

MAX_RESPONSE_TEXT = 1024 * 1024
"""Bytes of one response outside its literals (a FETCH of a few items needs a few hundred)."""
MAX_LITERALS = 16
"""Literals in one response (a FETCH of BODY[] has one)."""
SMALL_LITERAL = 64 * 1024
"""Default bound of a literal read into memory (quoted strings, flags, folder names)."""

_LITERAL = re.compile(rb"\{(\d{1,20})\+?\}$")
_CODE = re.compile(r"^\[([^\]]*)\]\s*")

LiteralReader = Callable[[bytes, int], Any]
"""``(response text so far, announced size) -> value`` — reads exactly that many bytes via the wire."""


@dataclass
class Reply:
    """One response: untagged (``*``), a continuation (``+``) or the tagged completion of a command."""

    tag: str
    """``*``, ``+`` or the command's tag."""
    values: list[Any] = field(default_factory=list)
    """The parsed response after the tag: atoms (str), numbers (int), lists, literal values."""
    text: str = ""
    """The response after the tag as text (literals shown as ``{N}``), for status responses."""

    @property
    def status(self) -> str:
        """``OK``/``NO``/``BAD``/``BYE``/``PREAUTH`` for status responses, else ``""``."""
        first = self.values[0] if self.values else ""
        return first.upper() if isinstance(first, str) and first.upper() in _STATUSES else ""

    @property
    def ok(self) -> bool:
        """True for an OK status response."""
        return self.status == "OK"

    @property
    def code(self) -> tuple[str, str]:
        """The response code of a status response, e.g. ``("UIDVALIDITY", "1234")``; ``("", "")`` if none."""
        rest = self.text.split(" ", 1)[1] if " " in self.text else ""
        found = _CODE.match(rest)
        if not found:
            return "", ""
        name, _, args = found.group(1).partition(" ")
        return name.upper(), args

    @property
    def message(self) -> str:
        """A status response's human text (after the status and the code)."""
        rest = self.text.split(" ", 1)[1] if " " in self.text else ""
        return _CODE.sub("", rest, count=1).strip()


_STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


class ImapWire(Pop3Wire):
    """An IMAP connection (plain or TLS). Every failure raises SourceConnectionError."""

    literal_limit = SMALL_LITERAL
    tag_prefix = "P"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tags = 0

    def next_tag(self) -> str:
        """A fresh command tag."""
        self._tags += 1
        return f"{self.tag_prefix}{self._tags:04d}"

    def command(self, text: str | bytes) -> str:
        """Send ``<tag> <text>`` and return the tag."""
        tag = self.next_tag()
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.send_line(tag.encode("ascii") + b" " + data)
        return tag

    # -- reading -----------------------------------------------------------------------------

    def iter_exact(self, count: int, what: str, message_number: int | None = None) -> Iterator[bytes]:
        """Exactly ``count`` bytes from the connection, in chunks, within ``timeout + count / MIN_RATE``."""
        self.set_deadline(round(self.timeout + count / MIN_RATE, 1),
                          f"receiving {what} (too slow: under {MIN_RATE // 1024} KB/s)")
        left = count
        while left:
            if self._pos >= len(self._buf):
                self._fill()
            take = min(left, len(self._buf) - self._pos)
            yield bytes(self._buf[self._pos:self._pos + take])
            self._pos += take
            left -= take

    def read_literal(self, count: int, what: str = "a literal") -> bytes:
        """A literal read into memory, refused past :attr:`literal_limit`."""
        if count > self.literal_limit:
            self.close()
            raise ServerMisbehaved(f"{self.host}:{self.port}: {what} of {count} bytes exceeds "
                                   f"{self.literal_limit}; connection dropped")
        return b"".join(self.iter_exact(count, what))

    def read_reply(self, on_literal: LiteralReader | None = None) -> Reply:
        """One whole response, its literals read through ``on_literal`` (default: small, in memory)."""
        self.set_deadline(self.timeout, "waiting for the server")
        segments: list[bytes | Any] = []
        text = bytearray()
        while True:
            line = self.read_line()
            if len(text) + len(line) > MAX_RESPONSE_TEXT:
                self.close()
                raise ServerMisbehaved(f"{self.host}:{self.port}: a response ran past {MAX_RESPONSE_TEXT} bytes; "
                                       "connection dropped")
            found = _LITERAL.search(line)
            if not found:
                segments.append(line)
                text += line
                break
            head = line[:found.start()]
            segments.append(head)
            text += head
            if len(segments) > 2 * MAX_LITERALS:
                self.close()
                raise ServerMisbehaved(f"{self.host}:{self.port}: more than {MAX_LITERALS} literals in one "
                                       "response; connection dropped")
            size = int(found.group(1))
            value = on_literal(bytes(text), size) if on_literal else self.read_literal(size)
            segments.append(_Literal(value))
            text += b"{%d}" % size
            self.set_deadline(self.timeout, "waiting for the server")
        return _to_reply(segments, bytes(text), self.host, self.port)


class _Literal:
    """A literal's value inside a response being parsed."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _to_reply(segments: list[Any], text: bytes, host: str, port: int) -> Reply:
    first = segments[0] if segments and isinstance(segments[0], bytes) else b""
    tag, _, rest = first.partition(b" ")
    if not tag:
        raise SourceConnectionError(f"{host}:{port}: an empty response line; not an IMAP server?")
    parts: list[Any] = [rest, *segments[1:]]
    values = parse_values([part.value if isinstance(part, _Literal) else part for part in parts],
                          literal=[isinstance(part, _Literal) for part in parts])
    shown = text.partition(b" ")[2].decode("utf-8", "replace")
    return Reply(tag.decode("ascii", "replace"), values, shown)


def quote(value: str) -> bytes:
    """An IMAP quoted string; raises ValueError for text that must go as a literal (CR, LF, NUL)."""
    data = value.encode("utf-8")
    if any(byte in data for byte in (0, 10, 13)):
        raise ValueError("text with CR, LF or NUL cannot be quoted")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def deadline_left(until: float) -> float:
    """Seconds until a monotonic deadline (never negative)."""
    return max(0.0, until - time.monotonic())


def uid_set(uids: Iterable[int]) -> str:
    """``1:3,7,9:10`` for a set of UIDs."""
    ordered = sorted(set(uids))
    ranges: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        ranges.append(str(ordered[index]) if end == index else f"{ordered[index]}:{ordered[end]}")
        index = end + 1
    return ",".join(ranges)
