"""Config loading: contract keys, ${VAR} expansion, durations and sizes, readable errors, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from popflow.config import Config, load_config, parse_config
from popflow.durations import parse_duration, parse_size
from popflow.errors import ConfigError

MINIMAL = """
state: sqlite:///state.db
sources:
  support:
    host: pop.example.com
    username: support@example.com
    password: ${SUPPORT_PASSWORD}
    every: 5m
sinks:
  archive: { type: folder, path: ./mail }
routes:
  - sinks: [archive]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "popflow.yaml"
    path.write_text(text)
    return path


def test_durations_and_sizes() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("5m") == 300
    assert parse_duration("2h") == 7200
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration(12) == 12
    assert parse_size("512KB") == 512 * 1024
    assert parse_size("50MB") == 50 * 1024 * 1024
    assert parse_size(100) == 100
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_size("big")


def test_env_expansion_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORT_PASSWORD", "s3cret")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.sources["support"]["password"] == "s3cret"
    data = {"sources": {"a": {"host": "${HOST:-pop.local}"}}}
    assert parse_config(data).sources["a"]["host"] == "pop.local"


def test_missing_env_var_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPPORT_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL))
    assert info.value.path == "sources.support.password"
    assert "SUPPORT_PASSWORD" in info.value.problem
    assert str(tmp_path / "popflow.yaml") in info.value.describe()


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("bogus: 1\n", "bogus", "unknown key"),
        ("routes:\n  - sinks: [nowhere]\n", "(top level)", "unknown sink 'nowhere'"),
        ("filters:\n  - drop: { subject: '(' }\n", "filters[0].drop.subject", "invalid regular expression"),
        ("filters:\n  - drop: {}\n    keep: {}\n", "filters[0]", "exactly one"),
        ("sources: [1, 2]\n", "sources", "dictionary"),
    ],
)
def test_bad_config_says_where(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.path == path
    assert fragment in info.value.problem


def test_bad_yaml_gives_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "sources:\n  a: [unclosed\n"))
    assert "not valid YAML" in info.value.problem
    assert info.value.path is not None and info.value.path.startswith("line ")


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "popflow init" in info.value.problem


def test_source_schedule_rules() -> None:
    from popflow.config import SourceSettings

    assert SourceSettings(cron="*/5 * * * *").cron == "*/5 * * * *"
    assert SourceSettings().interval == 60
    with pytest.raises(ValueError, match="invalid cron"):
        SourceSettings(cron="every tuesday")
    with pytest.raises(ValueError, match="either"):
        SourceSettings(cron="* * * * *", every="5m")
    with pytest.raises(ValueError, match="delete_after"):
        SourceSettings(delete_after="30d")


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  a:\n    host: x\n    port: not-a-port\n")
    result = subprocess.run([sys.executable, "-m", "popflow", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "sources.a" in result.stderr
    assert str(path) in result.stderr


def test_relative_paths_resolve_next_to_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data_dir: ./data\n"))
    assert isinstance(config, Config)
    assert config.resolve_path(config.data_dir) == tmp_path.resolve() / "data"
