"""`popflow check [--connect]`, `init` and `plugins` as a user runs them: real Dovecot, PostgreSQL, a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.databases import SERVER_URLS, TestDatabase, require_server
from tests.support.dovecot import DovecotServer, free_port


def popflow(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "popflow", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})})


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dovecot_source(server: DovecotServer) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.tls_port, "tls": "implicit", "ca_file": str(server.ca_file),
            "username": server.username, "password": server.password}


def test_init_writes_a_config_that_check_accepts(tmp_path: Path) -> None:
    result = popflow("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "popflow.yaml"
    assert config.exists() and (config.stat().st_mode & 0o077) == 0
    checked = popflow("check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "inbox" in checked.stdout and "archive" in checked.stdout
    again = popflow("init", cwd=tmp_path)
    assert again.returncode != 0 and "not overwriting" in again.stderr


def test_commands_without_config_say_how_to_make_one(tmp_path: Path) -> None:
    result = popflow("poll", cwd=tmp_path, env={"POPFLOW_CONFIG": ""})
    assert result.returncode == 2
    assert "popflow init" in result.stderr and "Traceback" not in result.stderr


def test_check_connect_reports_each_item(tmp_path: Path, dovecot: DovecotServer) -> None:
    require_server("postgresql")
    pg = TestDatabase("postgresql", SERVER_URLS["postgresql"], f"chk{os.getpid()}_")
    dovecot.deliver(b"Subject: one\r\n\r\nbody\r\n")
    closed = free_port()
    config = write(tmp_path / "popflow.yaml", {
        "sources": {
            "good": dovecot_source(dovecot),
            "closed": {"host": "127.0.0.1", "port": closed, "tls": "implicit", "username": "u", "password": "p",
                       "timeout": "3s"},
        },
        "sinks": {"pg": {"type": "database", "url": pg.url, "table_prefix": pg.prefix},
                  "files": {"type": "folder", "path": "./mail"}},
        "routes": [{"sinks": ["pg", "files"]}],
    })
    try:
        result = popflow("check", "--connect", "-c", str(config))
    finally:
        pg.drop_tables()
    out = result.stdout
    assert result.returncode == 1, out + result.stderr  # the closed port fails the check
    good = next(line for line in out.splitlines() if "source good" in line)
    assert "ok" in good and "1 message" in good and "UIDL" in good
    bad = next(line for line in out.splitlines() if "source closed" in line)
    assert "failed" in bad and ("refused" in bad.lower() or "connect" in bad.lower())
    assert any("sink pg" in line and "ok" in line for line in out.splitlines())
    assert dovecot.password not in out + result.stderr
    assert dovecot.count() == 1  # check never deletes


def test_check_shows_no_secrets_and_warns_on_readable_literal_password(tmp_path: Path) -> None:
    secret = "Very-Distinctive-Pa55word"
    config = write(tmp_path / "popflow.yaml", {
        "sources": {"inbox": {"host": "pop.example.com", "username": "me", "password": secret}},
        "sinks": {"db": {"type": "database", "url": f"postgresql+psycopg://u:{secret}@127.0.0.1/x"}},
        "routes": [{"sinks": ["db"]}],
    })
    os.chmod(config, 0o644)
    result = popflow("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "readable by others" in result.stdout
    os.chmod(config, 0o600)
    assert "readable by others" not in popflow("check", "-c", str(config)).stdout


def test_plugins_lists_builtins_with_hooks() -> None:
    result = popflow("plugins")
    assert result.returncode == 0, result.stderr
    for name in ("popflow.parser", "popflow.stages.rules", "popflow.sinks.folder", "popflow.sources.pop3"):
        assert name in result.stdout
    assert "popflow_route" in result.stdout and "popflow_parse" in result.stdout


def test_no_warning_when_secrets_come_from_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "popflow.yaml", {
        "sources": {"inbox": {"host": "pop.example.com", "username": "me", "password": "${POP_PW}"}},
        "sinks": {"hook": {"type": "webhook", "url": "https://hooks.example.com/x", "secret": "${HOOK_SECRET}"}},
        "routes": [{"sinks": ["hook"]}],
    })
    os.chmod(config, 0o644)
    result = popflow("check", "-c", str(config), env={"POP_PW": "from-env-1", "HOOK_SECRET": "from-env-2"})
    assert result.returncode == 0, result.stderr
    assert "readable by others" not in result.stdout
    assert "from-env-1" not in result.stdout + result.stderr
