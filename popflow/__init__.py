"""popflow: turn POP3 mailboxes into data pipelines.

Plugin authors need only this package root::

    from popflow import hookimpl, Message, Sink, SinkSettings, DeadLetterError

The names below are imported on first use (a module ``__getattr__``), so ``import popflow`` itself
stays cheap: a plugin module that only needs ``hookimpl`` does not load the message models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # hooks and what they exchange
    "hookimpl": "popflow.hookspecs",
    "Address": "popflow.message",
    "Attachment": "popflow.message",
    "Body": "popflow.message",
    "Message": "popflow.message",
    "RawMessage": "popflow.raw",
    "FilterDecision": "popflow.verdicts",
    "ScanVerdict": "popflow.verdicts",
    # writing a sink or a source
    "Sink": "popflow.sinks.base",
    "SinkSettings": "popflow.config",
    "Source": "popflow.sources.base",
    "SourceSession": "popflow.sources.base",
    "SessionInfo": "popflow.sources.base",
    "Listing": "popflow.sources.base",
    "SourceSettings": "popflow.config",
    "RuntimeContext": "popflow.context",
    "Config": "popflow.config",
    "Duration": "popflow.durations",
    "Size": "popflow.durations",
    "Timeout": "popflow.durations",
    # what a hook or a sink raises to say what happens next (docs/plugins.md)
    "PopflowError": "popflow.errors",
    "ConfigError": "popflow.errors",
    "PluginLoadError": "popflow.errors",
    "StorageError": "popflow.errors",
    "DeliveryError": "popflow.errors",
    "RetryableError": "popflow.errors",
    "DeferMessage": "popflow.errors",
    "DeadLetterError": "popflow.errors",
    "SourceFatalError": "popflow.errors",
    "SourceConnectionError": "popflow.errors",
    "ServerMisbehaved": "popflow.errors",
    "AuthenticationError": "popflow.errors",
}
"""Each public name and the module that defines it."""

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from popflow.config import Config, SinkSettings, SourceSettings
    from popflow.context import RuntimeContext
    from popflow.durations import Duration, Size, Timeout
    from popflow.errors import (
        AuthenticationError,
        ConfigError,
        DeadLetterError,
        DeferMessage,
        DeliveryError,
        PluginLoadError,
        PopflowError,
        RetryableError,
        ServerMisbehaved,
        SourceConnectionError,
        SourceFatalError,
        StorageError,
    )
    from popflow.hookspecs import hookimpl
    from popflow.message import Address, Attachment, Body, Message
    from popflow.raw import RawMessage
    from popflow.sinks.base import Sink
    from popflow.sources.base import Listing, SessionInfo, Source, SourceSession
    from popflow.verdicts import FilterDecision, ScanVerdict


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name is still an error there

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'popflow' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once: later look-ups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted([*globals(), *_EXPORTS])


__all__ = [  # the same names as _EXPORTS (a test keeps them equal)
    "Address",
    "Attachment",
    "AuthenticationError",
    "Body",
    "Config",
    "ConfigError",
    "DeadLetterError",
    "DeferMessage",
    "DeliveryError",
    "Duration",
    "FilterDecision",
    "Listing",
    "Message",
    "PluginLoadError",
    "PopflowError",
    "RawMessage",
    "RetryableError",
    "RuntimeContext",
    "ScanVerdict",
    "ServerMisbehaved",
    "SessionInfo",
    "Sink",
    "SinkSettings",
    "Size",
    "Source",
    "SourceConnectionError",
    "SourceFatalError",
    "SourceSession",
    "SourceSettings",
    "StorageError",
    "Timeout",
    "__version__",
    "hookimpl",
]
