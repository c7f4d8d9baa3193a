"""``popflow poll`` ends with ``os._exit`` once everything is closed: atexit handlers and the output
are there, the interpreter's module teardown (~80 ms of CPU freeing memory) is skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from popflow.testing import POP3TestServer, make_message

# A plugin file: an atexit handler (must still run) and a gc callback that marks what happens when the
# interpreter tears its modules down: a garbage collection after the atexit handlers (skipped).
PLUGIN = textwrap.dedent("""
    import atexit
    from pathlib import Path

    MARKS = Path(__file__).parent.parent / "marks"

    def _mark(text):
        with open(MARKS, "a", encoding="utf-8") as out:
            out.write(text + "\\n")

    import gc

    STATE = {"exited": False, "marked": False}

    def _at_exit():
        _mark("atexit")
        STATE["exited"] = True

    def _collected(phase, info):  # the interpreter's teardown collects garbage after atexit
        if STATE["exited"] and not STATE["marked"]:
            STATE["marked"] = True
            _mark("teardown")

    atexit.register(_at_exit)
    gc.callbacks.append(_collected)
""")


def _poll(tmp_path: Path, server: POP3TestServer, password: str | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "marker.py").write_text(PLUGIN, encoding="utf-8")
    config = {"state": "sqlite:///state.db", "data_dir": "data", "plugins_dir": "plugins",
              "sources": {"inbox": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                                    "username": server.username, "password": password or server.password}},
              "sinks": {"mail": {"type": "folder", "layout": "maildir", "path": "mail"}},
              "routes": [{"sinks": ["mail"]}]}
    (tmp_path / "popflow.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "popflow", "-q", "poll", "-c", "popflow.yaml"]
    return subprocess.run(command, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)


def test_poll_exits_fast_after_atexit_handlers_and_its_output(tmp_path: Path) -> None:
    with POP3TestServer([make_message(subject="one"), make_message(subject="two")]) as server:
        result = _poll(tmp_path, server)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "popflow poll" in result.stdout and "inbox" in result.stdout  # the summary table is all there
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 2
    marks = (tmp_path / "marks").read_text(encoding="utf-8").split()
    assert marks == ["atexit"]  # handlers ran; the module teardown (its collections) did not


def test_a_failed_poll_keeps_its_exit_status(tmp_path: Path) -> None:
    with POP3TestServer([make_message(subject="one")]) as server:
        result = _poll(tmp_path, server, password="wrong")  # login fails: exit status 1
    assert result.returncode == 1, result.stderr[-3000:]
    assert "inbox" in result.stdout
    assert (tmp_path / "marks").read_text(encoding="utf-8").split() == ["atexit"]
