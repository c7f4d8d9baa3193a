"""``popflow schema``: the JSON Schema (draft 2020-12) of the config file, from the pydantic models.

The top level comes from :class:`popflow.config.Config`; each entry of ``sources:`` and ``sinks:``
is checked against the model of its ``type`` as registered by the plugins (``pop3`` when a source
names no type), and ``plugins.<name>`` against a plugin's options model when the plugin declares
one: a module-level (or attribute) ``popflow_options_model`` naming a pydantic model class.
``${VAR}`` values are checked as the strings they are in the file, before expansion.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from popflow.config import Config
from popflow.plugins import PopflowPluginManager

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
OPTIONS_MODEL_ATTRIBUTE = "popflow_options_model"
DEFAULT_SOURCE_TYPE = "pop3"


def plugin_option_models(pm: PopflowPluginManager) -> dict[str, type[BaseModel]]:
    """``{plugin name: options model}`` for every registered plugin that declares one."""
    found = {}
    for name, plugin in pm.list_name_plugin():
        model = getattr(plugin, OPTIONS_MODEL_ATTRIBUTE, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            found[name] = model
    return found


def _config_models(types: dict[str, type]) -> dict[str, type[BaseModel]]:
    """``{type name: its config model}`` (every Source and Sink class has ``config_model``)."""
    return {name: cls.config_model for name, cls in types.items()}  # type: ignore[attr-defined]


def _typed_entries(refs: dict[str, dict[str, Any]], default: str | None) -> dict[str, Any]:
    """A schema for one ``sources``/``sinks`` entry: its ``type`` picks the model it must match."""
    branches = []
    for name, ref in sorted(refs.items()):
        chosen: dict[str, Any] = {"properties": {"type": {"const": name}}, "required": ["type"]}
        if name == default:
            chosen = {"anyOf": [chosen, {"not": {"required": ["type"]}}]}
        branches.append({"if": chosen, "then": ref})
    entry: dict[str, Any] = {"type": "object", "properties": {"type": {"enum": sorted(refs)}}, "allOf": branches}
    if default is None:
        entry["required"] = ["type"]
    return entry


def config_schema(pm: PopflowPluginManager) -> dict[str, Any]:
    """The whole schema, for the source and sink types and plugins ``pm`` knows."""
    registry = pm.registry
    sources = _config_models(registry.source_types())
    sinks = _config_models(registry.sink_types())
    options = plugin_option_models(pm)
    mode: JsonSchemaMode = "validation"
    models: list[type[BaseModel]] = [Config, *sources.values(), *sinks.values(), *options.values()]
    refs, top = models_json_schema([(model, mode) for model in dict.fromkeys(models)],
                                   ref_template="#/$defs/{model}")
    definitions = top.get("$defs", {})
    root = dict(definitions.pop(refs[(Config, mode)]["$ref"].rsplit("/", 1)[1]))
    root["properties"] = dict(root["properties"])
    root["properties"].pop("source_file", None)  # set by the loader, never written in a file
    # A "before" validator also takes one folder where the model's type says a list.
    root["properties"]["plugins_dir"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                         "description": "folders whose .py files are loaded as plugins"}
    root["properties"]["sources"] = {
        "type": "object", "description": "Sources by name; each entry's `type` (default pop3) picks its keys.",
        "additionalProperties": _typed_entries({name: refs[(model, mode)] for name, model in sources.items()},
                                               DEFAULT_SOURCE_TYPE)}
    root["properties"]["sinks"] = {
        "type": "object", "description": "Sinks by name; each entry's `type` picks its keys.",
        "additionalProperties": _typed_entries({name: refs[(model, mode)] for name, model in sinks.items()}, None)}
    root["properties"]["plugins"] = {
        "type": "object", "description": "Options by plugin name; a plugin named here is enabled.",
        "properties": {name: {"anyOf": [refs[(model, mode)], {"type": "null"}]} for name, model in options.items()},
        "additionalProperties": {"anyOf": [{"type": "object"}, {"type": "null"}]}}
    return {"$schema": SCHEMA_DIALECT, "$id": "https://popflow.invalid/config.schema.json",
            "title": "popflow configuration file", **root, "$defs": definitions}
