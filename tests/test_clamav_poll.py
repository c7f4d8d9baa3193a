"""End to end: POP3 → popflow poll → ClamAV (a real, private clamd) → Maildir, and the quarantine CLI.

Infected mail is quarantined and leaves the server; clean mail is delivered; while clamd is down
nothing is delivered and everything stays on the server; once clamd is back the next poll finishes
the job; ``popflow quarantine release`` delivers a held message.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from popflow.cli import main
from popflow.testing import POP3TestServer
from tests.support.clamd import ClamdServer
from tests.support.pipeline import maildir_files, make_app, write_config
from tests.test_clamav import clean_mail, eicar_attachment, eicar_zip


def delivered(maildir: Path) -> list[bytes]:
    """The delivered messages, line endings normalised (POP3 carries CRLF)."""
    return sorted(path.read_bytes().replace(b"\r\n", b"\n") for path in maildir_files(maildir))



def test_poll_quarantines_infected_and_delivers_clean(tmp_path: Path, clamd_private: ClamdServer) -> None:
    clean, virus_b64, virus_zip = clean_mail(), eicar_attachment(), eicar_zip()
    with POP3TestServer([clean, virus_b64, virus_zip]) as server:
        config = write_config(tmp_path, server, extra={"plugins": {"clamav": {"address": clamd_private.address}}})
        app = make_app(config)
        report = app.poll("test")
        app.close()
        assert report.clean, report.line()
        assert (report.counts.delivered, report.counts.quarantined) == (1, 2)
        assert server.messages() == []  # quarantined counts as handled
    assert delivered(tmp_path / "mail") == [clean]

    runner = CliRunner(env={"COLUMNS": "300"})
    listed = runner.invoke(main, ["quarantine", "list", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "00000002" in listed.output and "00000003" in listed.output
    shown = runner.invoke(main, ["quarantine", "show", "1", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "Eicar-Test-Signature" in shown.output

    released = runner.invoke(main, ["quarantine", "release", "1", "-c", str(config)])
    assert released.exit_code == 0, released.output
    assert delivered(tmp_path / "mail") == sorted([clean, virus_b64])


def test_clamd_down_nothing_delivered_then_delivered_once_back(tmp_path: Path,
                                                              clamd_private: ClamdServer) -> None:
    clean, virus = clean_mail(), eicar_zip()
    with POP3TestServer([clean, virus]) as server:
        config = write_config(tmp_path, server, extra={
            "plugins": {"clamav": {"address": clamd_private.address, "timeout": "3s"}}})
        clamd_private.stop()
        app = make_app(config)
        down = app.poll("test")
        assert not down.clean and down.counts.deferred == 2 and down.counts.delivered == 0
        assert sorted(server.messages()) == sorted([clean, virus])  # left on the server
        assert delivered(tmp_path / "mail") == []  # nothing delivered unscanned

        clamd_private.start()
        back = app.poll("test")
        app.close()
        assert back.clean, back.line()
        assert (back.counts.delivered, back.counts.quarantined) == (1, 1)
        assert server.messages() == []
    assert delivered(tmp_path / "mail") == [clean]


def test_check_connect_reports_clamd(tmp_path: Path, clamd_private: ClamdServer) -> None:
    with POP3TestServer([]) as server:
        config = write_config(tmp_path, server, extra={"plugins": {"clamav": {"address": clamd_private.address}}})
        runner = CliRunner(env={"COLUMNS": "300"})
        result = runner.invoke(main, ["check", "--connect", "-c", str(config)])
        assert result.exit_code == 0, result.output
        line = next(row for row in result.output.splitlines() if "plugin clamav" in row)
        assert "ok" in line and "ClamAV" in line
        clamd_private.stop()
        result = runner.invoke(main, ["check", "--connect", "-c", str(config)])
        assert result.exit_code == 1, result.output
        line = next(row for row in result.output.splitlines() if "plugin clamav" in row)
        assert "failed" in line
