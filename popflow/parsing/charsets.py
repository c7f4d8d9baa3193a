"""Turning bytes of a declared (or missing, wrong, unknown) charset into text, never raising.

The order of guesses: the declared charset (through a table of aliases real mail uses), then UTF-8,
then charset-normalizer's best guess on a sample, then Latin-1, which decodes any byte. Every
fallback is reported as a defect so a reader knows the text may be mojibake.
"""

from __future__ import annotations

import codecs
import functools
import re

DETECT_SAMPLE = 32 * 1024
"""charset-normalizer only looks at this many bytes: enough to guess, and keeps the cost bounded."""

# Names mail software writes that Python does not know, or a superset worth decoding with instead
# (gb2312 text is nearly always GBK/GB18030; Shift_JIS mail is nearly always Microsoft's cp932).
_ALIASES: dict[str, str] = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "x-unicode-2-0-utf-7": "utf-7",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
    "x-utf8": "utf-8",
    "cp-850": "cp850",
}

# Among equally good guesses, the charsets mail is most often written in, most common first.
_PREFERRED_ON_TIE = ("utf-8", "cp1252", "iso8859-1", "iso8859-15", "cp1251", "koi8-r", "cp1250",
                     "iso8859-2", "gb18030", "big5", "cp932", "euc_jp", "cp949")

# Labels that are often put on text that is really UTF-8 (old defaults of mail programs).
_OFTEN_MISLABELLED = frozenset({"ascii", "iso8859-1", "cp1252"})

# Two 8-bit bytes in a row: a multi-byte character or a word in a non-Latin single-byte script.
# Without one, every 8-bit byte is a lone accented letter in Latin text (café, naïve).
_HIGH_BYTE_PAIR = re.compile(rb"[\x80-\xff]{2}")

GOOD_PER_BAD = {"utf-8": 4}
"""Text decodes "with a few bad bytes" when it has this many good non-ASCII characters per bad byte.

UTF-8 is self-checking (other text rarely decodes as UTF-8 at all); the legacy multi-byte
charsets decode each other's text with few errors, so they need more evidence.
"""
GOOD_PER_BAD_OTHERS = 10


@functools.lru_cache(maxsize=256)  # a few distinct names per message, looked up many times
def normalize_charset(charset: str | None) -> str | None:
    """The Python codec name for a declared ``charset``, or None if it is missing or unknown."""
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    if not name or len(name) > 64:
        return None
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    # codecs.lookup also knows bytes-to-bytes codecs ("base64", "zlib"): not a charset.
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def detect(data: bytes) -> str:
    """A best guess at the charset of ``data`` (a Python codec name); never fails."""
    if not data:
        return "utf-8"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if decode_mostly(data, "utf-8") is not None:
        return "utf-8"
    if _HIGH_BYTE_PAIR.search(data, 0, DETECT_SAMPLE) is None and _decodes(data[:DETECT_SAMPLE], "cp1252"):
        # Lone high bytes in ASCII text: Windows-1252, as mail clients read it; a detector picks
        # whichever of the many single-byte code pages it tried first (cp1258, cp437...).
        return "cp1252"
    try:
        from charset_normalizer import from_bytes

        matches = from_bytes(data[:DETECT_SAMPLE])
        best = matches.best()
        guess = normalize_charset(best.encoding) if best is not None else None
        if best is not None:
            # On short samples several code pages tie; Windows-1252 is by far the most common.
            tied = {normalize_charset(name) for match in matches
                    if (match.chaos, match.coherence) == (best.chaos, best.coherence)
                    for name in match.could_be_from_charset}
            guess = next((name for name in _PREFERRED_ON_TIE if name in tied), guess)
    except Exception:  # a third-party detector must not break parsing
        guess = None
    return guess or "latin-1"


def decode_text(data: bytes, charset: str | None, where: str, defects: list[str]) -> str:
    """``data`` decoded as ``charset``, with fallbacks; each fallback adds a defect about ``where``.

    A missing charset means US-ASCII (RFC 2045), so 8-bit bytes without a label are guessed quietly
    only if they are valid UTF-8. Text labelled ASCII/Latin-1/Windows-1252 that is valid UTF-8 is
    decoded as UTF-8: that label is a common lie and the reverse mistake is very unlikely.
    """
    codec = normalize_charset(charset)
    if charset and codec is None:
        guess = detect(data)
        defects.append(f"{where}: unknown charset {_shown(charset)}, decoded as {guess}")
        return _decode(data, guess)
    if codec is None or codec == "ascii":
        if data.isascii():
            return data.decode("ascii")
        guess = detect(data)
        label = "no charset" if codec is None else "us-ascii"
        if guess != "utf-8" or codec is not None:
            defects.append(f"{where}: 8-bit text labelled {label}, decoded as {guess}")
        return _decode(data, guess)
    if codec in _OFTEN_MISLABELLED and not data.isascii():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            defects.append(f"{where}: text labelled {_shown(charset or codec)} is UTF-8, decoded as utf-8")
            return text
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError, ValueError):
        pass
    if codec != "utf-8" and _decodes(data, "utf-8"):
        # Valid UTF-8 is a strong signal (random bytes rarely are): mislabelled or double-encoded.
        defects.append(f"{where}: invalid {_shown(charset or codec)} text, decoded as utf-8")
        return data.decode("utf-8")
    repaired = decode_mostly(data, codec)
    if repaired is not None:  # a bad byte or two in a real text of that charset: keep the charset
        defects.append(f"{where}: invalid {_shown(charset or codec)} bytes replaced")
        return repaired
    guess = detect(data)
    if guess == codec:
        guess = "latin-1" if codec != "latin-1" else guess
    defects.append(f"{where}: invalid {_shown(charset or codec)} text, decoded as {guess}")
    return _decode(data, guess)


def decode_mostly(data: bytes, codec: str) -> str | None:
    """``data`` in ``codec`` with its few undecodable bytes replaced, or None if they are not few.

    "Few" compares the replacements with the non-ASCII characters that did decode: one bad byte in
    a Cyrillic UTF-8 or a Big5 text costs one U+FFFD, while Latin-1 text labelled UTF-8 (no good
    non-ASCII character at all) is not this charset and goes back to guessing.
    """
    try:
        text = data.decode(codec, errors="replace")
    except (LookupError, ValueError):
        return None
    bad = text.count("\ufffd")
    if not bad:
        return text
    good = sum(1 for char in text if char > "\x7f") - bad
    return text if good >= GOOD_PER_BAD.get(codec, GOOD_PER_BAD_OTHERS) * bad else None


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except (UnicodeDecodeError, LookupError, ValueError):
        return False
    return True


def _decode(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec, errors="replace")
    except (LookupError, ValueError):
        return data.decode("latin-1")


def _shown(charset: str) -> str:
    """A charset name safe to put in a defect message (bounded, printable)."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in charset.strip()[:40])
    return cleaned or "?"
