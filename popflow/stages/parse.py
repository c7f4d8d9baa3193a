"""The built-in parse stage: every message gets parsed by :func:`popflow.parsing.parser.parse_message`.

Registered last (``trylast``), so a plugin's own ``popflow_parse`` that returns a message wins.
"""

from __future__ import annotations

from popflow.hookspecs import hookimpl
from popflow.message import Message
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage


@hookimpl(trylast=True)
def popflow_parse(raw: RawMessage, source: str) -> Message:
    """The fallback parser: every message gets parsed, however broken."""
    return parse_message(raw, source)
