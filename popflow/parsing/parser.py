"""The built-in parser: raw bytes into a :class:`~popflow.message.Message`, never raising.

(The plugin that offers it as the ``popflow_parse`` hook is :mod:`popflow.stages.parse`; this
module knows nothing of plugins or config.)

Headers are parsed at once and cheaply (the header block only, see :mod:`popflow.parsing.fields`);
the MIME body is parsed on first access to ``text``, ``html`` or ``attachments``
(:mod:`popflow.parsing.body`). Whatever had to be repaired or could not be read is listed in
``message.defects``; the raw bytes are attached untouched.
"""

from __future__ import annotations

from popflow.message import Body, Message
from popflow.parsing.defects import finish_defects
from popflow.parsing.fields import fill_header_fields
from popflow.raw import RawMessage


def parse_message(raw: RawMessage, source: str = "") -> Message:
    """Parse the headers of ``raw`` now and install a loader for its body; never raises."""
    message = Message(source=source)
    defects: list[str] = []
    try:
        message.attach_raw(raw)
    except Exception as exc:  # e.g. a spool file gone missing: still return a message
        defects.append(f"raw: unreadable ({type(exc).__name__})")
    try:
        fill_header_fields(message, raw, defects)
    except Exception as exc:
        defects.append(f"headers: parser error ({type(exc).__name__}), headers left unparsed")
    message.defects = finish_defects(defects)
    message.set_body_loader(lambda: _parse_body(raw))
    return message


def _parse_body(raw: RawMessage) -> Body:
    # The MIME body parser (and the charset detection it pulls in) is imported on the first body
    # access, not at start-up: a header-only pipeline never needs it.
    from popflow.parsing.body import parse_body

    return parse_body(raw)

