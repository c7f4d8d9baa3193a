"""Call a hook one implementation at a time, so an exception names the plugin that raised it.

pluggy stops at the first exception and does not say which plugin raised; the pipeline needs the
name for its logs and error classes, so it calls the implementations itself in pluggy's order
(last registered first, ``tryfirst``/``trylast`` honoured).
"""

from __future__ import annotations

from typing import Any

import pluggy

from popflow.errors import PopflowError
from popflow.logs import log_fields


class PluginHookError(PopflowError):
    """A plugin's hook implementation raised; ``plugin`` and ``hook`` say which."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.error = error
        super().__init__(f"plugin {plugin!r} raised in {hook}: {type(error).__name__}: {error}")


def _implementations(caller: pluggy.HookCaller) -> list[Any]:
    # get_hookimpls() is in ascending call priority; pluggy calls them last-first.
    return [impl for impl in reversed(caller.get_hookimpls())
            if not (getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False))]


def call_each(caller: pluggy.HookCaller, *, firstresult: bool = False, **kwargs: Any) -> list[Any]:
    """Call every implementation; return the non-None results (only the first with ``firstresult``).

    An exception from an implementation is raised as :class:`PluginHookError` naming the plugin,
    unless it is already a :class:`~popflow.errors.PopflowError` subclass (a deliberate signal such
    as :class:`~popflow.errors.DeferMessage`), which is re-raised with the plugin name attached.
    """
    results = []
    for impl in _implementations(caller):
        try:
            with log_fields(plugin=impl.plugin_name):  # JSON logs name the plugin of what it logs
                result = impl.function(*[kwargs[name] for name in impl.argnames])
        except PopflowError as exc:
            exc.plugin = impl.plugin_name  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            raise PluginHookError(impl.plugin_name, caller.name, exc) from exc
        if result is not None:
            results.append(result)
            if firstresult:
                break
    return results


def call_first(caller: pluggy.HookCaller, **kwargs: Any) -> Any:
    """The first non-None result of a ``firstresult`` hook, or None."""
    results = call_each(caller, firstresult=True, **kwargs)
    return results[0] if results else None
