"""Logging set-up for the command line: one readable line per event, on stderr.

Every line goes through :class:`SafeFormatter`: log messages quote servers, mail and plugins, so
control characters are shown escaped (a message stays on one line; a traceback keeps its own
line breaks) and every secret registered in :mod:`popflow.redact` is masked.
"""

from __future__ import annotations

import logging
import sys

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


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent); quiet chatty libraries."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_popflow", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._popflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "httpx", "httpcore", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
