"""Logging set-up for the command line: one readable line per event, on stderr.

Every line goes through :class:`SafeFormatter`: log messages quote servers, mail and plugins, so
control characters are shown escaped (a message stays on one line; a traceback keeps its own
line breaks) and every secret registered in :mod:`popflow.redact` is masked.
``log_format: json`` (``--log-format json``) uses :class:`JsonFormatter` instead: one JSON object
per line for Loki/ELK, with the same redaction.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

from popflow.redact import redact
from popflow.terminal import printable


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output holds no raw control character and no known secret."""

    def format(self, record: logging.LogRecord) -> str:
        """The line, with a traceback another formatter cached (``exc_text``) made safe too."""
        if record.exc_text:
            record.exc_text = printable(redact(record.exc_text))
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        original = record.message
        # The message alone, newlines included, is escaped: outside text cannot forge a second line.
        record.message = printable(redact(original), newlines=False)
        try:
            return super().formatMessage(record)
        finally:
            record.message = original

    def formatException(self, ei: object) -> str:
        return printable(redact(super().formatException(ei)))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable(redact(super().formatStack(stack_info)))


FIELDS = ("source", "uidl", "sink", "plugin")
"""Structured fields a JSON line carries when known: from ``extra={...}`` or :func:`log_fields`."""

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("popflow_log_fields", default=None)


def log_fields(**fields: str) -> _LogFields:
    """Attach ``fields`` (e.g. ``source=``) to every record logged in this thread inside the block.

    Used as ``with log_fields(uidl=...):``, several times per message on the poll path.
    """
    return _LogFields(fields)


class _LogFields:
    """The context manager of :func:`log_fields`: a class, not ``@contextmanager``, whose generator
    and its frame cost more than the rest of the call."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        current = _context.get()
        self._token = _context.set({**current, **self._fields} if current else self._fields)

    def __exit__(self, *exc_info: object) -> None:
        _context.reset(self._token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the known :data:`FIELDS`,
    and ``exception`` with a traceback. Secrets are masked; JSON escapes every control character."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": redact(record.getMessage())}
        context = _context.get() or {}
        for name in FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value is not None:
                entry[name] = redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)  # ASCII only: no U+2028 or bidi control reaches a viewer


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Configure the root logger once (idempotent); quiet chatty libraries.

    ``log_format`` is ``text`` (a readable line) or ``json`` (:class:`JsonFormatter`).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_popflow", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    handler._popflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "httpx", "httpcore", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
