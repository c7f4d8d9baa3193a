"""Calling plugins: name the plugin that raised, and fire the observer hooks without letting them fail.

Each stage-hook implementation is wrapped once, at registration.

The stage hooks are called through pluggy (``pm.hook.popflow_*``), so wrappers, ``tryfirst``/
``trylast``, ``firstresult`` from the spec and ``POPFLOW_TRACE_PLUGINS`` tracing all apply. pluggy
stops at the first exception and does not say which plugin raised; the pipeline needs the name for
its logs and error classes, so :func:`name_failures` wraps each plain implementation's function.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from popflow.errors import PopflowError
from popflow.logs import log_fields

if TYPE_CHECKING:
    from popflow.message import Message

log = logging.getLogger(__name__)

STAGE_HOOKS: frozenset[str] = frozenset({
    "popflow_parse", "popflow_scan", "popflow_filter", "popflow_transform", "popflow_route",
    "popflow_delivered", "popflow_failed",
})
"""Hooks whose implementations' exceptions are raised as :class:`PluginHookError`."""


class PluginHookError(PopflowError):
    """A plugin's hook implementation raised; ``plugin`` and ``hook`` say which."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.error = error
        super().__init__(f"plugin {plugin!r} raised in {hook}: {type(error).__name__}: {error}")


def _naming(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            with log_fields(plugin=plugin):  # JSON logs name the plugin of what it logs
                return function(*args)
        except PopflowError as exc:  # a deliberate signal (DeferMessage, ...): keep it, add the name
            exc.plugin = plugin  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            raise PluginHookError(plugin, hook, exc) from exc

    call.__popflow_naming__ = True  # type: ignore[attr-defined]
    return call


def name_failures(pm: pluggy.PluginManager, plugin: object) -> None:
    """Wrap ``plugin``'s stage-hook implementations so an exception names the plugin.

    Wrappers (``wrapper=True``/``hookwrapper=True``) are generators and left as they are: they see
    the implementations' :class:`PluginHookError` and may handle it.
    """
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.name not in STAGE_HOOKS:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin or impl.hookwrapper or impl.wrapper:
                continue
            if not getattr(impl.function, "__popflow_naming__", False):
                # pluggy calls impl.function; its argnames were read from the original, so they still hold.
                impl.function = _naming(impl.function, impl.plugin_name, caller.name)  # type: ignore[misc]


def notify_failed(pm: pluggy.PluginManager, message: Message | None, stage: str, error: BaseException) -> None:
    """Fire ``popflow_failed``; an observer that raises is logged, never allowed to stop the run.

    ``message`` is None when parsing failed.
    """
    try:
        pm.hook.popflow_failed(message=message, stage=stage, error=error)
    except Exception as exc:
        log.error("popflow_failed observer raised: %s", exc)


def notify_delivered(pm: pluggy.PluginManager, message: Message, sink: str) -> None:
    """Fire ``popflow_delivered``; an observer that raises is logged and ignored."""
    try:
        pm.hook.popflow_delivered(message=message, sink=sink)
    except Exception as exc:
        log.error("popflow_delivered observer raised: %s", exc)
