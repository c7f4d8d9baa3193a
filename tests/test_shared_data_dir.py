"""Two popflow processes on one ``data_dir``: the start-up of one never removes what the other is using.

A real ``popflow poll`` receives a 1.5 MB message (spooled to a file) and is held inside a transform
plugin until the test lets it go; meanwhile a second ``popflow poll`` starts on the same config and
``data_dir`` (its start-up cleans what crashed processes left). The first must still deliver the
message byte for byte. What a killed process left is still removed by the next start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from popflow.raw_store import temp_suffix
from popflow.testing import POP3TestServer
from tests.support.killing import kill_after, popflow_command, start_poll
from tests.support.pipeline import maildir_files, sample_message, write_config

pytestmark = pytest.mark.timeout(90)

HOLD_PLUGIN = '''
import os
import time
from pathlib import Path

from popflow import hookimpl


@hookimpl
def popflow_transform(message):
    """Say the message is in hand (its spool file exists), then wait until the test says go."""
    folder = Path(os.environ["POPFLOW_TEST_HOLD"])
    (folder / "held").touch()
    deadline = time.monotonic() + 60
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
'''


def _setup(tmp_path: Path, server: POP3TestServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hold.py").write_text(HOLD_PLUGIN)
    monkeypatch.setenv("POPFLOW_TEST_HOLD", str(tmp_path))
    return write_config(tmp_path, server), plugins


def _wait_for(path: Path, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _spool_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "data" / "spool"
    return [path for path in root.rglob("*") if path.is_file() and path.name != "lock"] if root.exists() else []


def _second_poll(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(popflow_command(config, "poll"), cwd=config.parent, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_a_second_process_starting_leaves_a_running_polls_spool_file_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = sample_message(1, attachment=os.urandom(1536 * 1024))
    with POP3TestServer([big]) as server:
        config, plugins = _setup(tmp_path, server, monkeypatch)
        log = tmp_path / "first.log"
        first = start_poll(config, log, plugins_dir=plugins)
        try:
            _wait_for(tmp_path / "held", first, log)
            spooled = _spool_files(tmp_path)
            assert len(spooled) == 1 and spooled[0].stat().st_size == len(big)

            second = _second_poll(config)  # its start-up cleans data_dir; then it finds the source busy
            assert "Traceback" not in second.stdout + second.stderr
            assert spooled[0].exists(), "the second process removed the first one's spool file"

            (tmp_path / "go").touch()
            finished = kill_after(first, 30, log)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert finished.code == 0, finished.log[-3000:]
    delivered = maildir_files(tmp_path / "mail")
    assert len(delivered) == 1 and delivered[0].read_bytes() == big
    assert server.messages() == []
    assert _spool_files(tmp_path) == []  # the first process removed its spool file when done


def test_what_a_killed_poll_left_in_the_spool_is_removed_by_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = sample_message(2, attachment=os.urandom(1536 * 1024))
    with POP3TestServer([big]) as server:
        config, plugins = _setup(tmp_path, server, monkeypatch)
        log = tmp_path / "first.log"
        first = start_poll(config, log, plugins_dir=plugins)
        _wait_for(tmp_path / "held", first, log)
        first.kill()
        first.wait(10)
        assert len(_spool_files(tmp_path)) == 1
        server.wait_idle(10)

        second = _second_poll(config)  # without the plugin: delivers the message
        assert second.returncode == 0, second.stdout + second.stderr
    assert "removed 1 leftover" in second.stderr + second.stdout
    assert _spool_files(tmp_path) == []
    assert [path.read_bytes() for path in maildir_files(tmp_path / "mail")] == [big]


def test_partial_store_files_of_live_processes_stay_and_those_of_dead_ones_go(tmp_path: Path) -> None:
    with POP3TestServer([sample_message(3)]) as server:
        config = write_config(tmp_path, server)
        folder = tmp_path / "data" / "messages" / "ab"
        folder.mkdir(parents=True)
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        try:
            live_file = folder / ("ab" * 32 + temp_suffix(".eml", pid=alive.pid))
            dead_file = folder / ("ab" * 32 + temp_suffix(".eml", pid=gone.pid))
            for path in (live_file, dead_file):
                path.write_bytes(b"half a message")
            second = _second_poll(config)
            assert second.returncode == 0, second.stdout + second.stderr
            assert live_file.exists(), "a live process's partial file was removed"
            assert not dead_file.exists(), "a dead process's partial file was left"
        finally:
            alive.kill()
            alive.wait()
