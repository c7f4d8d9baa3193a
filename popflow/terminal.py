"""Text that is safe to print: no control characters from config files, servers or mail.

A config file, a server's reply or a message header can hold escape sequences (``\\x1b[2J``),
carriage returns or bidi overrides that would repaint or disguise what the operator reads.
:func:`printable` shows them as Python-style escapes instead.
"""

from __future__ import annotations

import sys
import unicodedata

_KEPT = frozenset("\n")  # multi-problem errors are one problem per line


def printable(text: str) -> str:
    """``text`` with every control or format character (``Cc``, ``Cf``) but newline escaped as ``\\xNN``/``\\uNNNN``."""
    if text.isprintable():  # the common case: nothing to escape
        return text
    out = []
    for ch in text:
        if ch in _KEPT or unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def stderr_is_terminal() -> bool:
    """True when stderr is a terminal: only then do error messages get colour."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
