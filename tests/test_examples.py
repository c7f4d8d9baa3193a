"""The files under ``examples/`` stay valid: configs load and pass ``check``, the plugin works, the unit is hardened."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from popflow.app import App
from popflow.cli import main
from popflow.config import load_config
from popflow.raw import RawMessage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
ENV = {"SUPPORT_PASSWORD": "s3cret", "HOOK_SECRET": "hook-secret"}
"""The variables the examples require (the others have defaults)."""


@pytest.fixture(autouse=True)
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the environment the examples expect."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def test_there_are_examples() -> None:
    assert {p.name for p in CONFIGS} >= {"support-mail.yaml", "order-mail.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    app = App(load_config(path))
    try:
        assert app.enabled_sources()
        assert app.sink_configs
        for name in app.sink_configs:
            app.sink(name)  # every sink's options build a sink
        for name in app.source_configs:
            app.source(name)
    finally:
        app.close()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_passes_check(path: Path) -> None:
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "hook-secret" not in result.output  # secrets never printed


def test_a_missing_secret_is_a_readable_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPPORT_PASSWORD")
    result = CliRunner().invoke(main, ["check", "-c", str(EXAMPLES / "support-mail.yaml")])
    assert result.exit_code == 2
    assert "SUPPORT_PASSWORD is not set" in result.output and "sources.support.password" in result.output


ORDER = (b"From: Example Shop <shop@shop.example.com>\r\nTo: orders@example.com\r\n"
         b"Subject: =?utf-8?q?Your_order_=2312345_is_confirmed_=E2=9C=94?=\r\n"
         b"Message-ID: <o1@shop.example.com>\r\n\r\nThanks!\r\n")


def test_the_example_plugin_sets_the_order_number_on_a_parsed_message() -> None:
    app = App(load_config(EXAMPLES / "order-mail.yaml"))  # loads examples/plugins via plugins_dir
    try:
        message = app.pm.hook.popflow_parse(raw=RawMessage.from_bytes(ORDER), source="orders")
        assert message.subject == "Your order #12345 is confirmed ✔"
        app.pm.hook.popflow_transform(message=message)
        assert message.meta["order_number"] == "12345"
        assert "order" in message.tags
        assert app.pm.hook.popflow_route(message=message) == ["orders_db"]

        other = app.pm.hook.popflow_parse(raw=RawMessage.from_bytes(b"Subject: hello\r\n\r\nhi\r\n"), source="orders")
        app.pm.hook.popflow_transform(message=other)
        assert "order_number" not in other.meta and not other.tags
    finally:
        app.close()


def test_the_example_plugin_is_ten_lines() -> None:
    lines = (EXAMPLES / "plugins" / "order_number.py").read_text().splitlines()
    assert len([line for line in lines if line.strip()]) <= 10


def test_the_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(EXAMPLES / "popflow.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("popflow run --http 127.0.0.1:9464")  # metrics on loopback only
    assert service["DynamicUser"] == "yes" or "User" in service
    assert service["ProtectSystem"] == "strict"
    assert "ReadWritePaths" in service and "EnvironmentFile" in service
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a config error does not restart in a loop
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit() -> None:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is required under CI=true")
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "verify", str(EXAMPLES / "popflow.service")],
                            capture_output=True, text=True, timeout=30)
    # The only complaint allowed is the binary path, which exists only once popflow is installed there.
    problems = [line for line in result.stderr.splitlines() if line.strip() and "/opt/popflow/bin/popflow" not in line]
    assert problems == []


def test_the_readme_links_and_commands_exist() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)\)", readme):  # relative links only
        assert (EXAMPLES.parent / target).exists(), f"README links to a missing {target}"
    commands = set(main.commands)
    for command in re.findall(r"^\| `popflow ([a-z-]+)", readme, re.MULTILINE):
        assert command in commands, f"README documents an unknown command {command}"
    assert {"run", "demo", "check", "poll", "init", "plugins", "dead-letters", "quarantine"} <= commands


@pytest.mark.parametrize("name", ["popflow-scheduler.service", "popflow-worker@.service"])
def test_the_scale_out_units_verify(name: str, tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(EXAMPLES / name)
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    assert "registry-key:" in service["LoadCredential"] and service["ProtectSystem"] == "strict"
    assert (" worker " in service["ExecStart"]) == ("worker" in name)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # A template verifies as an instance of it.
    target = EXAMPLES / name
    if "@" in name:
        target = Path(shutil.copy(target, tmp_path / "popflow-worker@1.service"))
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True, timeout=30)
    problems = [line for line in result.stderr.splitlines() if line.strip() and "/opt/popflow/bin/popflow" not in line]
    assert problems == []
