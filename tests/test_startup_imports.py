"""Start-up imports only what the config uses: sink and source types are registered by path and
imported on first use, so a Maildir-only poll never loads the HTTP client or Celery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs in a fresh interpreter: this test process has imported everything already.
SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import yaml

    import popflow.cli  # every command registered, as `popflow poll` starts
    from popflow.app import App
    from popflow.config import load_config
    from popflow.testing import POP3TestServer, make_message

    tmp, sinks = Path(sys.argv[1]), json.loads(sys.argv[2])
    with POP3TestServer([make_message(subject="hi")]) as server:
        config = {"state": "sqlite:///state.db", "data_dir": "data",
                  "sources": {"inbox": {"host": server.host, "port": server.port, "tls": "none",
                                        "allow_insecure": True, "username": server.username,
                                        "password": server.password}},
                  "sinks": sinks, "routes": [{"sinks": ["mail"]}]}
        (tmp / "popflow.yaml").write_text(yaml.safe_dump(config))
        app = App(load_config(tmp / "popflow.yaml"))
        try:
            app.prepare_data_dir()
            report = app.poll("inbox")
        finally:
            app.close()
    print(json.dumps({"delivered": report.counts.delivered, "modules": sorted(sys.modules)}))
""")

HEAVY = ("httpx", "celery", "kombu", "popflow.sinks.webhook", "popflow.executors.celery_app")


def _poll_in_fresh_process(tmp_path: Path, sinks: dict[str, object]) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(sinks)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_maildir_only_poll_imports_no_http_client_and_no_celery(tmp_path: Path) -> None:
    found = _poll_in_fresh_process(tmp_path, {"mail": {"type": "folder", "path": "mail"}})
    assert found["delivered"] == 1
    modules = set(found["modules"])  # type: ignore[call-overload]
    assert "popflow.sinks.folder" in modules
    for name in HEAVY:
        assert name not in modules, f"{name} imported by a Maildir-only poll"


@pytest.mark.timeout(120)
def test_a_configured_webhook_sink_imports_its_module(tmp_path: Path) -> None:
    # The control: the lazy type is resolved when the config names it (the receiver need not exist:
    # the message is retried later, and the poll still ends).
    found = _poll_in_fresh_process(tmp_path, {"mail": {"type": "webhook", "url": "http://127.0.0.1:9/hook",
                                                       "retries": 0, "timeout": "1s"}})
    modules = set(found["modules"])  # type: ignore[call-overload]
    assert "popflow.sinks.webhook" in modules
    assert "httpx" in modules
    assert "celery" not in modules
