"""The IMAP source through popflow's CLI (a real ``python -m popflow`` subprocess) against Dovecot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import imap as imap_support
from tests.support.dovecot import DovecotServer, dovecot, dovecot_server  # noqa: F401
from tests.support.imap import files, flags, make_folder, write_imap_config
from tests.support.killing import popflow_command
from tests.support.pipeline import sample_message

imap_dovecot = imap_support.imap_dovecot
pytestmark = pytest.mark.timeout(120)


def popflow(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that each table row stays on one line.
    return subprocess.run(popflow_command(config, *args), capture_output=True, text=True, timeout=90,
                          cwd=config.parent, env={**os.environ, "COLUMNS": "2000"}, check=False)


def uidvalidity_on_disk(server: DovecotServer, folder: str = "INBOX") -> int:
    """The folder's UIDVALIDITY as Dovecot stored it (``dovecot-uidlist``'s header: ``3 V<n> N<next> …``)."""
    header = (imap_support.folder_dir(server, folder) / "dovecot-uidlist").read_text().split()
    return int(next(word for word in header if word.startswith("V"))[1:])


def test_check_connect_shows_capabilities_count_and_uidvalidity(tmp_path: Path,
                                                                 imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    imap_dovecot.deliver(sample_message(2))
    make_folder(imap_dovecot, "Orders")
    imap_support.deliver_to(imap_dovecot, "Orders", sample_message(3))
    config = write_imap_config(tmp_path, imap_dovecot, folder=["INBOX", "Orders"], idle=True)
    result = popflow(config, "check", "--connect")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    row = next(line for line in out.splitlines() if "source imap" in line)
    size = sum(len(sample_message(index)) for index in (1, 2, 3))  # STATUS=SIZE, summed over the folders
    assert " ok " in f" {row} " and f"3 message(s), {size} bytes" in row, row
    for capability in ("IDLE", "MOVE", "UIDPLUS"):
        assert f" {capability} " in row.replace(";", " "), row
    assert f"INBOX: 2 message(s), UIDVALIDITY {uidvalidity_on_disk(imap_dovecot)}" in row, row
    assert f"Orders: 1 message(s), UIDVALIDITY {uidvalidity_on_disk(imap_dovecot, 'Orders')}" in row, row
    assert "auth plain" in row, row
    assert imap_dovecot.password not in out + result.stderr
    assert len(files(imap_dovecot)) == 2 and not any("S" in flags(path) for path in files(imap_dovecot))

    plain = popflow(config, "check")  # without --connect: what would run, never a secret
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "imaps://popflow@127.0.0.1" in plain.stdout and "INBOX, Orders" in plain.stdout, plain.stdout
    assert imap_dovecot.password not in plain.stdout + plain.stderr


def test_check_connect_reports_a_wrong_password_without_it(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    config = write_imap_config(tmp_path, imap_dovecot, password="Wrong-Distinctive-77")
    result = popflow(config, "check", "--connect")
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if "source imap" in line)
    assert "failed" in row and "refused" in row, row
    assert "Wrong-Distinctive-77" not in result.stdout + result.stderr


def test_poll_through_the_cli(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    raws = [sample_message(index) for index in range(3)]
    for raw in raws:
        imap_dovecot.deliver(raw)
    config = write_imap_config(tmp_path, imap_dovecot)
    result = popflow(config, "poll")
    assert result.returncode == 0, result.stdout + result.stderr
    assert files(imap_dovecot) == []
    delivered = sorted(p.read_bytes() for sub in ("new", "cur") for p in (tmp_path / "mail" / sub).iterdir())
    assert delivered == sorted(raws)
