"""Text that is safe to print: no control characters or markup from config files, servers or mail.

A config file, a server's reply or a message header can hold escape sequences (``\\x1b[2J``,
``\\x1b]8;;url\\x07`` hyperlinks), carriage returns or bidi overrides that would repaint or disguise
what the operator reads, and rich markup (``[/]``, ``[link=...]``) that would crash a print or
become a live link. :func:`printable` shows control characters as Python-style escapes;
:func:`shown` is the same text as a :class:`rich.text.Text`, which rich never parses as markup.
Every CLI print and log line of outside data goes through one of the two.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from rich.text import Text

# Control (Cc: C0, DEL, C1), format (Cf: bidi overrides and isolates, zero-width characters) and
# the Unicode line/paragraph separators, which some viewers treat as line breaks.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with every control or format character escaped as ``\\xNN``/``\\uNNNN``.

    Newlines are kept when ``newlines`` is true (multi-problem errors are one problem per line);
    with ``newlines=False`` they are escaped too, so the text stays on one line (a log record).
    """
    if text.isprintable() and "\u2028" not in text and "\u2029" not in text:
        return text  # the common case: nothing to escape (isprintable is False for any \n)
    keep = "\n" if newlines else ""
    return "".join(ch if ch in keep or unicodedata.category(ch) not in _ESCAPED_CATEGORIES else _escape(ch)
                   for ch in text)


def shown(value: Any, style: str = "", *, newlines: bool = True) -> Text:
    """Outside text ready for rich: control characters escaped, never read as markup.

    ``None`` shows as ``-``; anything else through ``str()``.
    """
    text = "-" if value is None else value if isinstance(value, str) else str(value)
    return Text(printable(text, newlines=newlines), style=style)


def stderr_is_terminal() -> bool:
    """True when stderr is a terminal: only then do error messages get colour."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
