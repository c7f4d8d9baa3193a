"""Safe file names: an attachment's name is data, never a path.

:func:`safe_filename` turns any text a message offers as a file name into one plain name component
that is safe on Linux, macOS and Windows; :func:`unique_name` keeps names unique in one folder.
Decoding RFC 2047/2231 names is the parser's job; a name that still looks encoded is only sanitised.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_BYTES = 200
"""Longest result in UTF-8 bytes; leaves room under the usual 255-byte limit for `` (n)`` suffixes."""

DEFAULT_FALLBACK = "attachment"

_MAX_EXT_BYTES = 32  # a longer "extension" is just part of the name
_SEPARATORS = re.compile(r"[/\\]")
_WINDOWS_ILLEGAL = re.compile(r'[<>:"|?*]')
_SPACES = re.compile(r"\s+")
# Device names Windows reserves in every folder, whatever the extension ("con.txt" too).
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789¹²³"}
)
# Control (Cc), format (Cf: bidi overrides that disguise "exe.pdf", zero-width characters),
# lone surrogates (Cs, unencodable) and line/paragraph separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_filename(name: str | None, fallback: str = DEFAULT_FALLBACK) -> str:
    """A single plain file name made from ``name``; never a path, never empty.

    Keeps the last path component (``/`` and ``\\`` both separate), NFC-normalises, drops control
    and invisible format characters, maps characters Windows forbids to ``_``, strips leading and
    trailing dots and spaces, prefixes Windows device names (``CON``, ``con.txt``, ``LPT1``) with
    ``_`` and caps the length at :data:`MAX_NAME_BYTES` UTF-8 bytes, keeping the extension.
    Returns ``fallback`` (itself made safe) when nothing usable is left.
    """
    if name:
        cleaned = _clean(str(name))
        if cleaned:
            return cleaned
    if fallback != DEFAULT_FALLBACK:
        return _clean(fallback) or DEFAULT_FALLBACK
    return DEFAULT_FALLBACK


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``"stem (2).ext"``, ``"stem (3).ext"``... — the first not in ``taken``.

    Compared case-insensitively, since Windows and macOS folders are. The chosen name is added to
    ``taken`` so that the next call sees it. ``name`` should already be a :func:`safe_filename`.
    """
    used = {item.casefold() for item in taken}
    candidate = name
    stem, ext = _split_ext(name)
    counter = 1
    while candidate.casefold() in used:
        counter += 1
        candidate = _fit(stem, ext, f" ({counter})")
    taken.add(candidate)
    return candidate


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    # Whitespace controls (tab, CR/LF from badly folded headers) become spaces before controls go.
    text = _SPACES.sub(" ", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = unicodedata.normalize("NFC", text)  # dropping a character can join a new sequence
    # The last component that still names something: "dir/" keeps "dir", "a/.." keeps "a".
    parts = [_strip(part) for part in _SEPARATORS.split(text)]
    usable = [part for part in parts if part]
    if not usable:
        return ""
    result = _strip(_WINDOWS_ILLEGAL.sub("_", usable[-1]))
    if not result:
        return ""
    if result.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        result = "_" + result
    stem, ext = _split_ext(result)
    return _fit(stem, ext, "")


def _strip(part: str) -> str:
    """Without leading/trailing dots and spaces (hidden files, Windows' silent trimming, '..')."""
    return part.strip(". ")


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not ext or len(ext.encode("utf-8")) > _MAX_EXT_BYTES or " " in ext:
        return name, ""
    return stem, "." + ext


def _fit(stem: str, ext: str, suffix: str) -> str:
    """``stem + suffix + ext`` cut to :data:`MAX_NAME_BYTES`, shortening only the stem."""
    budget = MAX_NAME_BYTES - len(ext.encode("utf-8")) - len(suffix.encode("utf-8"))
    encoded = stem.encode("utf-8")
    if len(encoded) > budget:
        # Cut on a character boundary, then re-strip: the cut may leave a trailing dot or space.
        stem = encoded[:budget].decode("utf-8", errors="ignore").rstrip(". ")
        stem = unicodedata.normalize("NFC", stem) or "_"
    return stem + suffix + ext
