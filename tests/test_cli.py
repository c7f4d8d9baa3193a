"""The CLI package: commands registered in one place, no import circle, the App always closed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from popflow.cli import COMMAND_MODULES, main
from tests.test_check import popflow

# The commands of the public contract (../shared/contract.md); `sources` arrives with its own module.
CONTRACT_COMMANDS = {"run", "poll", "check", "demo", "init", "plugins", "dead-letters", "quarantine", "status",
                     "worker", "schema", "new-plugin"}

SHUTDOWN_PLUGIN = '''
from pathlib import Path

from popflow import hookimpl

@hookimpl
def popflow_shutdown():
    with (Path(__file__).parent.parent / "shutdowns.log").open("a") as out:
        out.write("closed\\n")
'''


def test_every_contract_command_is_registered() -> None:
    assert set(main.commands) >= CONTRACT_COMMANDS
    assert set(main.commands["dead-letters"].commands) == {"list", "show", "replay", "purge"}  # type: ignore[attr-defined]
    assert set(main.commands["quarantine"].commands) == {"list", "show", "release", "purge"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_a_command_module_imports_on_its_own(module: str) -> None:
    # No circle: a command module imports popflow.cli.common, never the package that registers it.
    code = f"import {module} as m; assert m.COMMANDS; import popflow.cli; print(len(popflow.cli.main.commands))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) >= len(CONTRACT_COMMANDS)


def _config_with_shutdown_plugin(tmp_path: Path) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "closing.py").write_text(SHUTDOWN_PLUGIN)
    config = tmp_path / "popflow.yaml"
    config.write_text(yaml.safe_dump({
        "state": "sqlite:///state.db", "data_dir": "data", "plugins_dir": "plugins",
        "sources": {"inbox": {"host": "127.0.0.1", "port": 1, "username": "u", "password": "pw-unused"}},
        "sinks": {"mail": {"type": "folder", "path": "mail"}}, "routes": [{"sinks": ["mail"]}],
    }))
    return config


@pytest.mark.parametrize("args", [["dead-letters", "show", "999"], ["quarantine", "show", "999"],
                                  ["poll", "--source", "no-such-source"]],
                         ids=["dead-letter-missing", "quarantine-missing", "poll-unknown-source"])
def test_a_command_that_fails_after_opening_the_app_still_closes_it(tmp_path: Path, args: list[str]) -> None:
    config = _config_with_shutdown_plugin(tmp_path)
    result = popflow(*args, "-c", str(config), cwd=tmp_path)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "shutdowns.log").read_text() == "closed\n"  # popflow_shutdown ran once


def test_a_command_that_succeeds_closes_the_app_once(tmp_path: Path) -> None:
    config = _config_with_shutdown_plugin(tmp_path)
    result = popflow("dead-letters", "list", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no pending dead letters" in result.stdout
    assert (tmp_path / "shutdowns.log").read_text() == "closed\n"


def test_the_poll_table_shows_messages_no_route_sent_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from popflow.cli import poll as poll_module
    from popflow.outcome import PollCounts
    from popflow.poller import PollReport

    report = PollReport("inbox", PollCounts(fetched=5, delivered=2, no_route=3))
    wide = Console(width=200)  # no column names cut short; the shared console is left alone
    monkeypatch.setattr(poll_module, "console", wide)
    with wide.capture() as captured:
        poll_module.print_summary([report])
    text = captured.get()
    header = next(line for line in text.splitlines() if "source" in line)
    row = next(line for line in text.splitlines() if "inbox" in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    names = [cell.strip() for cell in header.strip("│┃ ").split("┃")]
    assert "no route" in names
    assert cells[names.index("no route")] == "3"
    assert cells[names.index("delivered")] == "2"
