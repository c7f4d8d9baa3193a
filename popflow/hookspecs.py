"""Every hook popflow calls. Each docstring here *is* the plugin API.

Plugins implement hooks with the :data:`hookimpl` marker::

    from popflow import hookimpl

    @hookimpl
    def popflow_transform(message):
        message.tags.add("seen-by-my-plugin")

The pipeline calls the stage hooks in a fixed order — parse, scan, filter, transform, route,
deliver — so registration order never decides which stage runs first. Within one hook,
implementations run last-registered-first (pluggy's rule); use ``tryfirst``/``trylast`` to order them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from popflow.config import Config
    from popflow.message import Message
    from popflow.raw import RawMessage
    from popflow.verdicts import FilterDecision, ScanVerdict

PROJECT_NAME = "popflow"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def popflow_register_sources(register: Callable[[str, type | str], None]) -> None:
    """Add source types by name: ``register("pop3", Pop3Source)``.

    The class must subclass :class:`popflow.sources.base.Source` and name its options model in
    ``config_model``. A name registered twice (to another class) is an error at startup.
    Give the class as ``"module:Class"`` (``register("imap", "popflow_imap.source:ImapSource")``)
    and its module is imported only when a config uses the type.
    """


@hookspec
def popflow_register_sinks(register: Callable[[str, type | str], None]) -> None:
    """Add sink types by name: ``register("folder", FolderSink)``.

    The class must subclass :class:`popflow.sinks.base.Sink` and name its options model in
    ``config_model``. A name registered twice (to another class) is an error at startup.
    Give the class as ``"module:Class"`` (``register("webhook", "popflow.sinks.webhook:WebhookSink")``)
    and its module is imported only when a config uses the type.
    """


@hookspec(firstresult=True)
def popflow_parse(raw: RawMessage, source: str) -> Message | None:
    """Turn raw bytes into a :class:`~popflow.Message`; the first non-None result wins.

    ``raw`` is a :class:`popflow.raw.RawMessage` (``raw.read()`` gives the bytes; large messages
    are spooled on disk). ``source`` is the source's name. The built-in parser is registered with
    ``trylast=True``, so a plugin's parser runs first and may return None to fall back to it.
    A parser must never raise on bad input: record the problem with ``message.add_defect()``.
    """


@hookspec
def popflow_scan(message: Message) -> ScanVerdict | None:
    """Scan a message for malware and return a :class:`~popflow.verdicts.ScanVerdict` (or None to abstain).

    Every implementation votes. Any ``infected`` verdict quarantines the message. An ``error``
    verdict follows the verdict's ``on_error``: ``defer`` (leave on the server, retry next poll),
    ``quarantine``, or ``deliver`` (tagged ``unscanned``).
    """


@hookspec(firstresult=True)
def popflow_filter(message: Message) -> FilterDecision | None:
    """Decide whether to drop or keep a message; the first non-None decision wins.

    Return :class:`~popflow.verdicts.FilterDecision` (``keep`` and a ``reason``) or None to let
    the next filter decide. The built-in filter applies the config's ``filters:`` rules.
    """


@hookspec
def popflow_transform(message: Message) -> None:
    """Enrich a kept message in place: set fields, add ``tags``, fill ``meta``.

    Runs after the filters and before routing, once per message. Return value is ignored.
    """


@hookspec(firstresult=True)
def popflow_route(message: Message) -> list[str] | None:
    """Return the names of the sinks that get this message; the first non-None answer wins.

    The built-in router applies the config's ``routes:`` rules. An empty list means no sink
    wants the message: it counts as handled (nothing to deliver).
    """


@hookspec
def popflow_delivered(message: Message, sink: str) -> None:
    """Event: ``sink`` has committed ``message``. For metrics, audit logs and alerts."""


@hookspec
def popflow_failed(message: Message | None, stage: str, error: BaseException) -> None:
    """Event: a stage (``parse``, ``scan``, ``filter``, ``transform``, ``route``, ``deliver:<sink>``) failed.

    Fires once per failure that decides the message's fate, after the error is classified and
    just before that fate is recorded: a stage that defers the message (left on the server) or
    dead-letters it, and a sink whose retries have run out (``deliver:<sink>``, then its dead
    letter). A sink attempt that is retried does not fire it. An observer that raises is logged
    and ignored.
    """


@hookspec
def popflow_check_connection() -> str | None:
    """For ``popflow check --connect``: reach what the plugin depends on and say what was found.

    Return a one-line description (shown as ``ok``, e.g. ``"ClamAV 1.4.6 at 127.0.0.1:3310"``), raise
    an exception whose message says why it failed, or return None when there is nothing to check
    (e.g. the plugin is not enabled in the config). Never called during a poll.
    """


@hookspec
def popflow_startup(config: Config) -> None:
    """Lifecycle: the config is loaded and plugins are registered; read your options here.

    A plugin's options live under ``plugins: {<name>: {...}}``; see
    :meth:`popflow.config.Config.plugin_options`.
    """


@hookspec
def popflow_shutdown() -> None:
    """Lifecycle: popflow is stopping; release connections and flush buffers."""


def all_hook_names() -> list[str]:
    """Every hook this module declares, for docs and tests."""
    return sorted(name for name, value in globals().items()
                  if name.startswith("popflow_") and callable(value))


