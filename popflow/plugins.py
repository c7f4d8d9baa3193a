"""The plugin manager: built-in plugins, entry points, ``--plugins-dir`` files, and the type registry.

Built-in stages, sources and sinks are ordinary plugins listed in :data:`DEFAULT_PLUGINS` and
:data:`BUILTIN_TYPES` and registered the same way a third-party one is; a source or sink type may be
registered as ``"module:Class"`` and is imported only when a config uses it.
``POPFLOW_LOAD_PLUGINS`` limits which *installed* (entry-point) plugins load: empty loads none,
``a,b`` loads only those.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from popflow import hookspecs
from popflow.errors import ConfigError, PluginLoadError
from popflow.hookcall import name_failures
from popflow.hookspecs import hookimpl

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "popflow"

DEFAULT_PLUGINS: dict[str, str] = {
    "popflow.parser": "popflow.stages.parse",
    "popflow.stages.rules": "popflow.stages.rules:ConfigRules",
}
"""Built-in stage plugins by the name they are registered under (stable: ``popflow plugins`` shows
it, tests and plugins may ``pm.unregister(name=...)``): ``module`` or ``module:Class`` (a class is
instantiated once per manager). The built-in source and sink types are in :data:`BUILTIN_TYPES`."""


TypeRef = type | str
"""A registered source or sink type: the class, or ``"module:Class"`` to import at first use."""


def type_path(ref: TypeRef) -> str:
    """``"module:Class"`` for a class or a lazy reference."""
    return ref if isinstance(ref, str) else f"{ref.__module__}:{ref.__qualname__}"


@dataclass
class Registry:
    """Source and sink types by name, filled through the ``popflow_register_*`` hooks.

    A type may be registered as ``"module:Class"``: its module is imported the first time the
    type is looked up, so a config without a webhook sink never imports the HTTP client.
    """

    sources: dict[str, TypeRef] = field(default_factory=dict)
    sinks: dict[str, TypeRef] = field(default_factory=dict)

    def _adder(self, table: dict[str, TypeRef], kind: str) -> Callable[[str, TypeRef], None]:
        def register(name: str, cls: TypeRef) -> None:
            if isinstance(cls, str) and ":" not in cls:
                raise PluginLoadError(cls, f"{kind} type {name!r}: a lazy type is written 'module:Class'")
            if name in table and type_path(table[name]) != type_path(cls):
                raise PluginLoadError(
                    type_path(cls).replace(":", "."),
                    f"{kind} type {name!r} is already registered by {type_path(table[name]).split(':')[0]}",
                )
            if name not in table or isinstance(table[name], str):
                table[name] = cls

        return register

    def source_type(self, name: str) -> type:
        """The class of a source type, or a ConfigError listing the known types."""
        return self._lookup(self.sources, name, "source")

    def sink_type(self, name: str) -> type:
        """The class of a sink type, or a ConfigError listing the known types."""
        return self._lookup(self.sinks, name, "sink")

    def source_types(self) -> dict[str, type]:
        """Every source type, imported (for the config schema)."""
        return {name: self.source_type(name) for name in self.sources}

    def sink_types(self) -> dict[str, type]:
        """Every sink type, imported (for the config schema)."""
        return {name: self.sink_type(name) for name in self.sinks}

    @staticmethod
    def _lookup(table: dict[str, TypeRef], name: str, kind: str) -> type:
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise ConfigError(f"unknown {kind} type {name!r} (known: {known})")
        found = table[name]
        if isinstance(found, str):
            found = table[name] = _import_type(found, kind, name)
        return found


def _import_type(path: str, kind: str, name: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # not installed, a typo, an error in the module: name the type and the path
        raise PluginLoadError(path, f"{kind} type {name!r}: {type(exc).__name__}: {exc}") from exc
    if not inspect.isclass(found):
        raise PluginLoadError(path, f"{kind} type {name!r}: {attr} is not a class")
    return found


@dataclass(frozen=True)
class _BuiltinType:
    type_name: str
    path: str

    @property
    def module(self) -> str:
        """The module the type lives in (``popflow plugins`` shows it), not imported here."""
        return self.path.partition(":")[0]


class BuiltinSource(_BuiltinType):
    """One of popflow's own source types, registered by path: its module is imported only when
    a config uses the type."""

    @hookimpl
    def popflow_register_sources(self, register: Callable[[str, TypeRef], None]) -> None:
        """Register the type by its ``module:Class`` path."""
        register(self.type_name, self.path)


class BuiltinSink(_BuiltinType):
    """One of popflow's own sink types, registered by path (the webhook sink's ``httpx``, for
    one, costs start-up time that a config without a webhook should not pay)."""

    @hookimpl
    def popflow_register_sinks(self, register: Callable[[str, TypeRef], None]) -> None:
        """Register the type by its ``module:Class`` path."""
        register(self.type_name, self.path)


BUILTIN_TYPES: dict[str, BuiltinSource | BuiltinSink] = {
    "popflow.sources.pop3": BuiltinSource("pop3", "popflow.sources.pop3:Pop3Source"),
    "popflow.sinks.folder": BuiltinSink("folder", "popflow.sinks.folder:FolderSink"),
    "popflow.sinks.database": BuiltinSink("database", "popflow.sinks.database:DatabaseSink"),
    "popflow.sinks.webhook": BuiltinSink("webhook", "popflow.sinks.webhook:WebhookSink"),
}
"""Built-in source and sink types by the plugin name they are registered under (the names are
those of the modules, as when each module registered itself)."""


class PopflowPluginManager(pluggy.PluginManager):
    """pluggy's manager plus popflow's type registry."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.registry = Registry()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin``; its stage-hook implementations are wrapped to name it when they raise."""
        registered = super().register(plugin, name)
        if registered is not None:
            name_failures(self, plugin)
        return registered

    def collect_types(self) -> Registry:
        """(Re)build the source and sink registry from the register hooks."""
        self.registry = Registry()
        self.hook.popflow_register_sources(register=self.registry._adder(self.registry.sources, "source"))
        self.hook.popflow_register_sinks(register=self.registry._adder(self.registry.sinks, "sink"))
        return self.registry

    def plugin_label(self, plugin: object) -> str:
        """A readable name for a registered plugin."""
        return str(self.get_name(plugin) or getattr(plugin, "__name__", type(plugin).__name__))


def _load_object(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        return module
    obj = getattr(module, attr)
    return obj() if inspect.isclass(obj) else obj


def _register(pm: PopflowPluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except ValueError as exc:  # duplicate name or already registered
        raise PluginLoadError(name, str(exc)) from exc
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(name, str(exc)) from exc


def load_entry_point_plugins(pm: PopflowPluginManager, only: set[str] | None = None) -> list[str]:
    """Register installed plugins (entry-point group ``popflow``), naming any that fail."""
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and entry_point.name not in only:
            continue
        if pm.has_plugin(entry_point.name):
            continue
        dist = getattr(entry_point, "dist", None)
        label = f"{dist.name}:{entry_point.name}" if dist is not None else entry_point.name
        try:
            plugin = entry_point.load()
            if inspect.isclass(plugin):
                plugin = plugin()
        except Exception as exc:
            raise PluginLoadError(label, f"{type(exc).__name__}: {exc}") from exc
        _register(pm, plugin, entry_point.name)
        loaded.append(entry_point.name)
    return loaded


def load_plugins_dir(pm: PopflowPluginManager, directory: Path) -> list[str]:
    """Register every ``*.py`` file in ``directory`` as a plugin named after the file."""
    if not directory.is_dir():
        raise ConfigError(f"plugins directory {str(directory)!r} does not exist")
    loaded = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"popflow_plugins_dir.{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError("cannot create a module spec")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginLoadError(str(path), f"{type(exc).__name__}: {exc}") from exc
        _register(pm, module, path.stem)
        loaded.append(path.stem)
    return loaded


def _env_plugin_selection() -> set[str] | None:
    value = os.environ.get("POPFLOW_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def make_plugin_manager(
    plugins_dirs: Iterable[Path] = (),
    extra_plugins: Iterable[object] = (),
    load_entry_points: bool = True,
) -> PopflowPluginManager:
    """Build a manager: built-ins, then entry points, then plugin files, then ``extra_plugins``.

    No import-time side effects: every call returns a fresh, independent manager.
    """
    pm = PopflowPluginManager()
    for name, spec in DEFAULT_PLUGINS.items():
        try:
            plugin = _load_object(spec)
        except Exception as exc:
            raise PluginLoadError(spec, f"{type(exc).__name__}: {exc}") from exc
        _register(pm, plugin, name)
    for name, builtin_type in BUILTIN_TYPES.items():
        _register(pm, builtin_type, name)
    if load_entry_points:
        load_entry_point_plugins(pm, _env_plugin_selection())
    for directory in plugins_dirs:
        load_plugins_dir(pm, Path(directory))
    for index, plugin in enumerate(extra_plugins):
        _register(pm, plugin, getattr(plugin, "__name__", None) or f"extra-{index}-{type(plugin).__name__}")
    if os.environ.get("POPFLOW_TRACE_PLUGINS"):
        # One log line per call: pluggy puts each argument on a line of its own.
        pm.trace.root.setwriter(lambda text: log.debug(
            "hook trace: %s", "; ".join(line.strip() for line in text.splitlines() if line.strip())))
        pm.enable_tracing()
    pm.collect_types()
    return pm


def hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of the hooks that ``plugin`` implements."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])


def describe_plugins(pm: PopflowPluginManager) -> list[dict[str, Any]]:
    """Every registered plugin with its hooks and where it came from, for ``popflow plugins``."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        module = plugin.module if isinstance(plugin, _BuiltinType) else (
            getattr(plugin, "__name__", None) or type(plugin).__module__)
        builtin = name in DEFAULT_PLUGINS or name in BUILTIN_TYPES
        rows.append({"name": name, "module": module, "builtin": builtin, "hooks": hooks_of(pm, plugin)})
    return sorted(rows, key=lambda row: (not row["builtin"], row["name"]))
