"""Content-Transfer-Encoding: base64, quoted-printable, uuencode, or the bytes as they are."""

from __future__ import annotations

import binascii

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
