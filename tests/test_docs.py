"""The docs cannot rot: every hook and every config key is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from popflow import hookspecs
from popflow.config import Config, SinkSettings, SourceSettings
from popflow.sinks.database import DatabaseConfig
from popflow.sinks.folder import FolderConfig
from popflow.sources.pop3 import Pop3Config

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("hook", hookspecs.all_hook_names())
def test_every_hook_is_in_the_plugin_docs(hook: str) -> None:
    assert f"`{hook}(" in (DOCS / "plugins.md").read_text()


@pytest.mark.parametrize("model", [Config, SourceSettings, SinkSettings, Pop3Config, FolderConfig, DatabaseConfig])
def test_every_config_key_is_documented(model: type) -> None:
    text = (DOCS / "configuration.md").read_text()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = field.alias or name
        assert f"`{key}`" in text, f"{model.__name__}.{key} is not in docs/configuration.md"
