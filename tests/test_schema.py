"""``popflow schema``: a valid draft 2020-12 schema that accepts the examples and ``popflow init``'s
output, and rejects what ``popflow check`` rejects (unknown keys, a wrong type's keys, bad enums)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from popflow.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(data)]


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda path: path.name)
def test_examples_validate(validator: jsonschema.Draft202012Validator, example: Path) -> None:
    assert problems(validator, yaml.safe_load(example.read_text())) == []


def test_init_output_validates(validator: jsonschema.Draft202012Validator, tmp_path: Path) -> None:
    target = tmp_path / "popflow.yaml"
    assert CliRunner().invoke(main, ["init", str(target)]).exit_code == 0
    assert problems(validator, yaml.safe_load(target.read_text())) == []


@pytest.mark.parametrize(("config", "where"), [
    ({"sourcez": {}}, ""),
    ({"sources": {"a": {"host": "h", "username": "u", "tls": "sometimes"}}}, "sources.a.tls"),
    ({"sources": {"a": {"host": "h", "username": "u", "colour": "red"}}}, "sources.a"),
    ({"sinks": {"s": {"path": "./mail"}}}, "sinks.s"),
    ({"sinks": {"s": {"type": "folder", "path": "./mail", "url": "x"}}}, "sinks.s"),
    ({"plugins": {"clamav": {"on_error": "shrug"}}}, "plugins.clamav"),
    ({"log_format": "xml"}, "log_format"),
    ({"http": {"listen": 9464, "port": 1}}, "http"),
])
def test_mistakes_are_rejected(validator: jsonschema.Draft202012Validator, config: dict[str, Any],
                               where: str) -> None:
    found = problems(validator, config)
    assert found and any(problem.startswith(f"{where}:") for problem in found), found


def test_durations_and_sizes_accept_their_written_forms(validator: jsonschema.Draft202012Validator) -> None:
    source = {"host": "h", "username": "u", "password": "p", "every": "5m", "max_size": "10MB", "timeout": 30}
    assert problems(validator, {"sources": {"a": source}, "http": {"listen": "127.0.0.1:9464"}}) == []
