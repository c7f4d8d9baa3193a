"""MIME header parameters (``Content-Type: text/plain; charset="utf-8"``), RFC 2231 included.

RFC 2231 continuations and charset-tagged values (``filename*0*=utf-8''%E2%82%AC; filename*1=.pdf``)
are joined and decoded here; RFC 2047 encoded words inside a quoted value are left for the caller,
which knows whether the value is a file name.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from popflow.parsing.charsets import decode_text

MAX_PARAMS = 64
"""Parameters beyond this many are ignored: real headers have a handful."""

# Quoted strings (maybe unterminated), separators, and anything else: no nested quantifiers, linear.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|;|[^;"]+', re.DOTALL)
_EXTENDED = re.compile(r"([^*]+)\*(\d{1,3})?(\*?)")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_params(value: str, where: str, defects: list[str]) -> tuple[str, dict[str, str]]:
    """``(main value lower-cased, {parameter name lower-cased: value})`` of a MIME header.

    Quoted values are unquoted; a name given twice keeps its first value; an RFC 2231 value
    (``name*``) wins over a plain one of the same name.
    """
    segments: list[str] = []
    current: list[str] = []
    for token in _TOKENS.findall(value):
        if token == ";":
            segments.append("".join(current))
            current = []
            if len(segments) > MAX_PARAMS:
                defects.append(f"{where}: more than {MAX_PARAMS} parameters, the rest ignored")
                break
        else:
            current.append(token)
    else:
        segments.append("".join(current))
    main_words = segments[0].split() if segments else []
    main = main_words[0].lower() if main_words else ""
    plain: dict[str, str] = {}
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for segment in segments[1:]:
        name, sep, raw_value = segment.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        text = _unquote(raw_value.strip())
        if star := _EXTENDED.fullmatch(name):
            number = int(star.group(2)) if star.group(2) else 0
            encoded = star.group(2) is None or star.group(3) == "*"
            extended.setdefault(star.group(1), []).append((number, encoded, text))
        else:
            plain.setdefault(name, text)
    for name, pieces in extended.items():
        plain[name] = _join_rfc2231(pieces, f"{where} parameter {name}", defects)
    return main, plain


def _unquote(text: str) -> str:
    if text.startswith('"'):
        text = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
        return _ESCAPE.sub(r"\1", text) if "\\" in text else text
    return text


def _join_rfc2231(pieces: list[tuple[int, bool, str]], where: str, defects: list[str]) -> str:
    """Join RFC 2231 continuations in order and decode the charset-tagged ones."""
    pieces.sort(key=lambda piece: piece[0])
    charset: str | None = None
    data = bytearray()
    for index, (_, encoded, text) in enumerate(pieces):
        if encoded:
            if index == 0 and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)  # charset'language'value
            data += unquote_to_bytes(text)
        else:
            data += text.encode("utf-8", errors="surrogatepass")
    return decode_text(bytes(data), charset or "utf-8", where, defects)
