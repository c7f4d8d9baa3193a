"""The plugin module named by this package's ``popflow`` entry point."""

from __future__ import annotations

from collections.abc import Callable

from popflow import hookimpl


@hookimpl
def popflow_register_sources(register: Callable[[str, type | str], None]) -> None:
    """Add the ``imap`` source type (imported when a config uses it, so ``popflow`` starts without it)."""
    register("imap", "popflow_imap.source:ImapSource")
