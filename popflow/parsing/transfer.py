"""Content-Transfer-Encoding: base64, quoted-printable, uuencode, or the bytes as they are."""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator

from popflow.parsing.encoded_words import decode_base64, decode_quoted_printable

_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_KNOWN = frozenset({"base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"})


def normalize_encoding(encoding: str) -> str:
    """The transfer encoding real mail meant (``"7-bit"``, ``"quoted-printable;"``, ``"8bits"``...)."""
    name = encoding.strip().strip("\"';").lower()
    if name in _IDENTITY or name in _KNOWN:
        return name
    if name.startswith("quoted"):
        return "quoted-printable"
    if name.replace("-", "") in ("base64", "b64"):
        return "base64"
    if name.replace("-", "").rstrip("s") in ("7bit", "8bit") or name in ("plain", "none", "text/plain", "text/html"):
        return "8bit"
    return name


def is_readable_encoding(encoding: str) -> bool:
    """True for the transfer encodings :func:`transfer_decode` decodes (or needs not decode)."""
    return encoding in _IDENTITY or normalize_encoding(encoding) in _IDENTITY | _KNOWN


def transfer_decode(data: bytes, encoding: str, where: str, defects: list[str]) -> bytes:
    """``data`` decoded from its transfer ``encoding``; what cannot be decoded is reported."""
    if encoding in _IDENTITY:
        return data
    meant = normalize_encoding(encoding)
    if meant != encoding:
        defects.append(f"{where}: transfer encoding {encoding[:40]!r} read as {meant}")
        encoding = meant
        if encoding in _IDENTITY:
            return data
    if encoding == "base64":
        decoded, broken = decode_base64(data)
        if broken:
            defects.append(f"{where}: broken base64")
        return decoded
    if encoding == "quoted-printable":
        return decode_quoted_printable(data)
    if encoding in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return _decode_uu(data, where, defects)
    defects.append(f"{where}: unknown transfer encoding {encoding[:40]!r}, kept as is")
    return data


def _decode_uu(data: bytes, where: str, defects: list[str]) -> bytes:
    """Decode a uuencoded body (between ``begin`` and ``end`` lines), line by line.

    A line's first character says how many bytes it holds; characters past those (trailing junk
    some encoders add) are cut off, as the standard library's ``uu`` codec does, not the line lost.
    """
    out = bytearray()
    started = False
    broken = trailing = False
    for line in data.splitlines():
        if not started:
            started = line.startswith(b"begin ")
            continue
        if line.strip() == b"end":
            break
        try:
            out += binascii.a2b_uu(line)
            continue
        except (binascii.Error, ValueError):
            pass
        try:
            out += binascii.a2b_uu(line[:_uu_line_length(line)])
            trailing = True
        except (binascii.Error, ValueError):
            broken = True
    if not started or broken:
        defects.append(f"{where}: broken uuencode")
    elif trailing:
        defects.append(f"{where}: uuencode lines with trailing characters, cut")
    return bytes(out)


def _uu_line_length(line: bytes) -> int:
    """How many characters of a uuencoded line carry data: the length byte and 4 per 3 bytes."""
    count = (line[0] - 32) & 63 if line else 0
    return (count * 4 + 5) // 3


CHUNK = 1024 * 1024
"""Encoded bytes read and decoded at a time when a part is streamed."""

_WHITESPACE = b" \t\r\n\x0b\x0c"


class NotStreamable(Exception):
    """The part's encoding needs the whole part at once (broken base64, uuencode, an odd name)."""


def is_streamable(encoding: str) -> bool:
    """True when :func:`iter_transfer_decoded` can decode ``encoding`` piece by piece."""
    return encoding in _IDENTITY or encoding in ("base64", "quoted-printable")


def iter_transfer_decoded(pieces: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The decoded bytes of a part whose encoded bytes come in ``pieces``, a piece at a time.

    Yields exactly what :func:`transfer_decode` returns for the joined pieces, in bounded memory.
    Raises :class:`NotStreamable` (possibly after yielding) when the part is not in an encoding
    this can stream or its base64 is not strictly valid: decode it whole then, with its defects.
    """
    if encoding in _IDENTITY:
        yield from pieces
    elif encoding == "base64":
        yield from _iter_base64(pieces)
    elif encoding == "quoted-printable":
        yield from _iter_quoted_printable(pieces)
    else:
        raise NotStreamable(encoding)


def _iter_base64(pieces: Iterable[bytes]) -> Iterator[bytes]:
    carry = b""
    for piece in pieces:
        compact = carry + piece.translate(None, _WHITESPACE)
        whole = len(compact) - len(compact) % 4
        carry = compact[whole:]
        if whole:
            yield _strict_base64(compact[:whole])
    if carry:
        yield _strict_base64(carry)


def _strict_base64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise NotStreamable("base64") from None


def _iter_quoted_printable(pieces: Iterable[bytes]) -> Iterator[bytes]:
    # Quoted-printable decodes line by line: cut each piece after its last line break.
    carry = b""
    for piece in pieces:
        data = carry + piece
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield decode_quoted_printable(data[:cut])
    if carry:
        yield decode_quoted_printable(carry)
