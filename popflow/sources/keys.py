"""Server-given message ids as exact, printable text, and the header fingerprint of a message.

A UIDL is bytes the server chose (RFC 1939 allows 0x21-0x7E; real servers send more). popflow keeps
it exact and shows it safely with one reversible rule: printable ASCII other than a backslash stands
for itself, a backslash is ``\\\\`` and every other byte is ``\\xNN``. A UIDL that is already what the
RFC allows (every UIDL Dovecot, Courier or Cyrus hands out) is therefore unchanged. Two different
byte strings never give the same text, so two messages can never share a ledger key by decoding.

Ledger keys live in 190-character columns; a UIDL whose text is longer than :data:`MAX_UIDL_TEXT`
(RFC 1939 allows 70 octets) is shortened to a prefix plus a SHA-256 of the whole — still unique.
"""

from __future__ import annotations

import hashlib
import re

MAX_UIDL_TEXT = 160
"""Longest UIDL text kept whole; leaves room for a key's ``~N`` suffix in a 190-character column."""

_PLAIN = frozenset(range(0x21, 0x7F)) - {0x5C}
_BLANK_LINE = re.compile(rb"\n\r*\n")
"""The end of the header block: its last LF. (Any CR before it is removed anyway, and a pattern that
may start with CR would be tried at every byte: 3.5 µs a message instead of 1.2.)"""


def uidl_text(raw: bytes) -> str:
    """The exact, printable text of a UIDL's bytes (see the module docstring)."""
    if all(byte in _PLAIN for byte in raw):
        text = raw.decode("ascii")
    else:
        text = "".join(chr(byte) if byte in _PLAIN else ("\\\\" if byte == 0x5C else f"\\x{byte:02x}")
                       for byte in raw)
    if len(text) > MAX_UIDL_TEXT:
        text = text[:96] + "..sha256:" + hashlib.sha256(raw).hexdigest()[:48]
    return text


def uidl_bytes(text: str) -> bytes:
    """The inverse of :func:`uidl_text` for texts it did not shorten."""
    out = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and text[index + 1:index + 2] == "\\":
            out.append(0x5C)
            index += 2
        elif char == "\\" and text[index + 1:index + 2] == "x":
            out.append(int(text[index + 2:index + 4], 16))
            index += 4
        else:
            out.append(ord(char))
            index += 1
    return bytes(out)


def header_digest(data: bytes) -> str:
    """SHA-256 of a message's header block, the same for a full ``RETR`` and for ``TOP n 0``.

    The block ends at the first empty line; CR bytes are removed first, so a server that serves
    ``TOP`` with other line endings than ``RETR`` (Courier's CR CR LF) still gives the same digest.
    """
    match = _BLANK_LINE.search(data)
    block = data[:match.start()] if match else data
    return hashlib.sha256(block.replace(b"\r", b"").rstrip(b"\n")).hexdigest()
