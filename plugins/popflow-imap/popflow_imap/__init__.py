"""popflow-imap: an IMAP source for popflow (``type: imap``), registered like any third-party plugin."""

from __future__ import annotations

__version__ = "0.1.0"
