"""RFC 2047 encoded words (``=?utf-8?q?caf=C3=A9?=``) and the transfer decodings they share with bodies.

Written by hand instead of ``email.header.decode_header`` so that it is linear in the input (a
subject of 20,000 encoded words decodes in milliseconds), never raises, and joins adjacent words of
one charset before decoding: mailers split multi-byte characters across words.
"""

from __future__ import annotations

import binascii
import re

from popflow.parsing.charsets import decode_text, normalize_charset

# The encoded text cannot contain "?", so each attempt to match scans only up to the next "?":
# the regex stays linear. Spaces inside the text are tolerated (broken mailers write them).
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([qQbB])\?([^?]*)\?=")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]+")
_WHITESPACE = b" \t\r\n\x0b\x0c"


def decode_base64(data: bytes) -> tuple[bytes, bool]:
    """Decode base64 as far as possible: returns ``(bytes, broken)``.

    Junk characters are dropped, missing padding is added, a dangling sixth bit is ignored, and
    several base64 blobs glued together (padding in the middle) all decode.
    """
    compact = data.translate(None, _WHITESPACE)
    try:
        return binascii.a2b_base64(compact, strict_mode=True), False
    except (binascii.Error, ValueError):
        pass
    cleaned = _NOT_BASE64.sub(b"", compact)
    out = bytearray()
    for segment in cleaned.split(b"="):
        if not segment:
            continue
        chunk = segment[:-1] if len(segment) % 4 == 1 else segment  # a lone 6-bit char is no byte
        chunk += b"=" * (-len(chunk) % 4)
        try:
            out += binascii.a2b_base64(chunk)
        except (binascii.Error, ValueError):  # pragma: no cover - cleaned input always decodes
            continue
    return bytes(out), True


def decode_quoted_printable(data: bytes, header: bool = False) -> bytes:
    """Decode quoted-printable leniently (an invalid ``=XY`` stays as it is)."""
    try:
        return binascii.a2b_qp(data, header=header)
    except (binascii.Error, ValueError):  # pragma: no cover - a2b_qp is lenient
        return data


def _eight_bit_payload(text: str, charset: str) -> bytes:
    """The encoded text of one word that holds 8-bit characters, as bytes in the word's charset.

    Encoded text must be ASCII, but mailers put raw 8-bit bytes in it (``=?iso-8859-1?Q?Fr\xf6sche?=``).
    The header was decoded to text before its words, so such a byte is a character by now: it is
    turned back into the word's own charset, in which the word is then decoded, instead of dropped.
    """
    codec = normalize_charset(charset) or "utf-8"
    try:
        return text.encode(codec)
    except (UnicodeEncodeError, LookupError, ValueError):
        return text.encode("utf-8", errors="replace")


def decode_words(value: str, where: str, defects: list[str]) -> str:
    """``value`` with every RFC 2047 encoded word decoded; problems go to ``defects``.

    Whitespace between two encoded words is dropped (RFC 2047 section 6.2); adjacent words of the
    same charset are joined as bytes before decoding.
    """
    if "=?" not in value:
        return value
    pieces: list[str | tuple[str, bytearray]] = []
    position = 0
    broken = eight_bit = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[position:match.start()]
        position = match.end()
        previous_encoded = bool(pieces) and isinstance(pieces[-1], tuple)
        if between and not (previous_encoded and between.isspace()):
            pieces.append(between)
        charset = match.group(1).split("*", 1)[0]  # RFC 2231 adds "*language"
        text = match.group(3)
        if text.isascii():
            payload = text.encode("ascii")
        else:
            payload = _eight_bit_payload(text, charset)
            eight_bit = True
        if match.group(2) in "bB":
            decoded, bad = decode_base64(payload)
            broken = broken or bad
        else:
            decoded = decode_quoted_printable(payload, header=True)
        last = pieces[-1] if pieces else None
        if isinstance(last, tuple) and last[0].lower() == charset.lower():
            last[1].extend(decoded)
        else:
            pieces.append((charset, bytearray(decoded)))
    if not pieces:
        return value
    tail = value[position:]
    if tail:
        pieces.append(tail)
    if broken:
        defects.append(f"{where}: broken base64 in an encoded word")
    if eight_bit:
        defects.append(f"{where}: 8-bit characters inside an encoded word")
    return "".join(
        piece if isinstance(piece, str) else decode_text(bytes(piece[1]), piece[0], where, defects)
        for piece in pieces
    )
