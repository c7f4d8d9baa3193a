"""The plugin module named by this package's ``popflow`` entry point."""

from __future__ import annotations

from collections.abc import Callable

from popflow import hookimpl
from popflow_imap.source import ImapSource


@hookimpl
def popflow_register_sources(register: Callable[[str, type], None]) -> None:
    """Add the ``imap`` source type."""
    register("imap", ImapSource)
