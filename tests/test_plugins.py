"""The plugin system: built-ins as ordinary plugins, documented hooks, entry points, plugin files, errors."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from popflow import hookspecs
from popflow.errors import PluginLoadError
from popflow.plugins import DEFAULT_PLUGINS, describe_plugins, load_entry_point_plugins, make_plugin_manager


def test_every_hook_is_documented() -> None:
    names = hookspecs.all_hook_names()
    assert "popflow_parse" in names and "popflow_route" in names
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, f"{name} needs a real docstring"


def test_contract_hooks_exist() -> None:
    contract = {"popflow_register_sources", "popflow_register_sinks", "popflow_parse", "popflow_scan",
                "popflow_filter", "popflow_transform", "popflow_route", "popflow_delivered", "popflow_failed",
                "popflow_startup", "popflow_shutdown"}
    assert contract <= set(hookspecs.all_hook_names())


def test_builtins_registered_like_plugins() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    rows = {row["name"]: row for row in describe_plugins(pm)}
    for spec in DEFAULT_PLUGINS:
        assert spec.split(":")[0] in rows
    assert {"pop3"} <= set(pm.registry.sources)
    assert {"folder", "database"} <= set(pm.registry.sinks)
    assert "popflow_parse" in rows["popflow.parser"]["hooks"]


def test_plugins_dir_file_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "tagger.py").write_text(
        "from popflow import hookimpl\n\n@hookimpl\ndef popflow_transform(message):\n"
        "    message.tags.add('tagged')\n")
    pm = make_plugin_manager(plugins_dirs=[tmp_path], load_entry_points=False)
    assert pm.has_plugin("tagger")


def test_plugins_dir_import_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager(plugins_dirs=[tmp_path], load_entry_points=False)
    assert "broken.py" in str(info.value)
    assert "does_not_exist_anywhere" in str(info.value)


def test_unknown_hook_name_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "typo.py").write_text("from popflow import hookimpl\n\n@hookimpl\ndef popflow_transfrom(message):\n"
                                      "    pass\n")
    pm = make_plugin_manager(plugins_dirs=[tmp_path], load_entry_points=False)
    with pytest.raises(Exception, match="popflow_transfrom"):
        pm.check_pending()


class FakeEntryPoint:
    """An entry point whose load() raises, as a broken installed plugin would."""

    name = "exploding"
    group = "popflow"
    dist = type("Dist", (), {"name": "popflow-exploding"})()

    def load(self) -> object:
        raise RuntimeError("boom at import")


def test_entry_point_failure_names_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [FakeEntryPoint()])
    pm = make_plugin_manager(load_entry_points=False)
    with pytest.raises(PluginLoadError) as info:
        load_entry_point_plugins(pm)
    assert "popflow-exploding:exploding" in str(info.value)
    assert "boom at import" in str(info.value)


def test_load_plugins_env_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [FakeEntryPoint()])
    monkeypatch.setenv("POPFLOW_LOAD_PLUGINS", "")
    pm = make_plugin_manager()  # the broken one is not selected, so nothing fails
    assert not pm.has_plugin("exploding")


def test_duplicate_sink_type_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dupe.py").write_text(
        "from popflow import hookimpl\nfrom popflow.sinks.base import Sink\n\nclass Other(Sink):\n    pass\n\n"
        "@hookimpl\ndef popflow_register_sinks(register):\n    register('folder', Other)\n")
    with pytest.raises(PluginLoadError, match="already registered"):
        make_plugin_manager(plugins_dirs=[tmp_path], load_entry_points=False)


def _lazy_sink_plugin(tmp_path: Path, path: str) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "lazy.py").write_text(
        f"from popflow import hookimpl\n\n@hookimpl\ndef popflow_register_sinks(register):\n"
        f"    register('lazy', {path!r})\n")
    return plugins


def test_a_type_registered_by_path_is_imported_on_first_use(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazy_sink_module.py").write_text(
        "from popflow.sinks.base import Sink\n\nclass LazySink(Sink):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_sink_module", raising=False)
    pm = make_plugin_manager(plugins_dirs=[_lazy_sink_plugin(tmp_path, "lazy_sink_module:LazySink")],
                             load_entry_points=False)
    assert "lazy" in pm.registry.sinks
    assert "lazy_sink_module" not in sys.modules
    cls = pm.registry.sink_type("lazy")
    assert cls.__name__ == "LazySink"
    assert "lazy_sink_module" in sys.modules
    assert pm.registry.sink_type("lazy") is cls  # resolved once


def test_a_type_path_that_does_not_import_names_the_type(tmp_path: Path) -> None:
    pm = make_plugin_manager(plugins_dirs=[_lazy_sink_plugin(tmp_path, "no_such_module_here:Sink")],
                             load_entry_points=False)
    with pytest.raises(PluginLoadError, match="sink type 'lazy'") as caught:
        pm.registry.sink_type("lazy")
    assert "no_such_module_here:Sink" in str(caught.value)


def test_a_type_path_without_a_class_name_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="module:Class"):
        make_plugin_manager(plugins_dirs=[_lazy_sink_plugin(tmp_path, "popflow.sinks.folder")],
                            load_entry_points=False)


def test_registering_a_builtin_class_again_by_class_is_no_conflict(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "again.py").write_text(
        "from popflow import hookimpl\nfrom popflow.sinks.folder import FolderSink\n\n"
        "@hookimpl\ndef popflow_register_sinks(register):\n    register('folder', FolderSink)\n")
    pm = make_plugin_manager(plugins_dirs=[plugins], load_entry_points=False)
    assert pm.registry.sink_type("folder").__module__ == "popflow.sinks.folder"


def test_plugin_authors_import_the_public_names_from_the_root() -> None:
    import popflow
    from popflow import (  # the names docs/plugins.md promises
        ConfigError,
        DeadLetterError,
        DeferMessage,
        Message,
        RetryableError,
        Sink,
        SinkSettings,
        Source,
        SourceSettings,
        hookimpl,
    )
    from popflow.config import SinkSettings as DeepSinkSettings
    from popflow.errors import DeadLetterError as DeepDeadLetterError
    from popflow.sinks.base import Sink as DeepSink

    assert Sink is DeepSink
    assert SinkSettings is DeepSinkSettings
    assert DeadLetterError is DeepDeadLetterError
    assert issubclass(RetryableError, popflow.DeliveryError) and issubclass(DeferMessage, popflow.DeliveryError)
    assert {Message.__module__, Source.__module__, SourceSettings.__module__, ConfigError.__module__} == {
        "popflow.message", "popflow.sources.base", "popflow.config", "popflow.errors"}
    assert hookimpl is hookspecs.hookimpl
    assert set(popflow.__all__) == {"__version__", *popflow._EXPORTS}
    for name in popflow.__all__:
        assert getattr(popflow, name) is not None
        assert name in dir(popflow)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = popflow.NoSuchThing  # type: ignore[attr-defined]


def test_import_popflow_loads_no_model_until_a_name_is_used() -> None:
    code = ("import sys, popflow; before = {m for m in sys.modules if m.startswith(('popflow.', 'pydantic'))}; "
            "popflow.Sink; print(sorted(before), 'popflow.sinks.base' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True"
