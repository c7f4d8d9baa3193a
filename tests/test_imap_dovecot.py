"""The IMAP source (plugins/popflow-imap) against a real Dovecot IMAP server.

Every message is checked byte for byte against what was dropped into the server's Maildir; each
``after:`` mode is checked on the server's own files (Maildir flags, sub-folders).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from popflow.errors import AuthenticationError
from tests.support.dovecot import DovecotServer
from tests.support.imap import deliver_to, files, flags, make_folder, write_imap_config
from tests.support.pipeline import maildir_files, make_app, sample_message

pytestmark = pytest.mark.timeout(120)


def tricky_messages() -> list[bytes]:
    """Small, 8-bit, leading-dot, no-final-CRLF and a >1 MB (spooled) message."""
    big = sample_message(9, attachment=bytes(range(256)) * 6000)
    assert len(big) > 1024 * 1024
    return [
        sample_message(1),
        b"Subject: 8bit\r\nMessage-ID: <8bit@example.org>\r\n\r\nGr\xfc\xdfe \xe2\x82\xac\r\n.\r\n..\r\n",
        b"Subject: no final newline\r\nMessage-ID: <nonl@example.org>\r\n\r\nlast line",
        big,
    ]


def delivered(tmp_path: Path) -> list[bytes]:
    return sorted(path.read_bytes() for path in maildir_files(tmp_path / "mail"))


def test_after_delete_delivers_byte_identical_and_expunges(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    messages = tricky_messages()
    for raw in messages:
        imap_dovecot.deliver(raw)
    app = make_app(write_imap_config(tmp_path, imap_dovecot))
    report = app.poll("imap")
    assert report.clean, report.line()
    assert (report.counts.fetched, report.counts.delivered, report.counts.deleted) == (4, 4, 4)
    assert delivered(tmp_path) == sorted(messages)
    assert files(imap_dovecot) == []  # expunged, not just flagged
    again = app.poll("imap")
    assert again.clean and again.counts.fetched == 0
    imap_dovecot.deliver(sample_message(2))
    third = app.poll("imap")
    assert third.counts.delivered == 1 and len(delivered(tmp_path)) == 5


def test_after_seen_keeps_mail_and_fetches_each_message_once(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    for index in range(3):
        imap_dovecot.deliver(sample_message(index))
    config = write_imap_config(tmp_path, imap_dovecot, after="seen")
    app = make_app(config)
    report = app.poll("imap")
    assert report.clean and report.counts.delivered == 3 and report.counts.deleted == 0
    on_server = files(imap_dovecot)
    assert len(on_server) == 3 and all("S" in flags(path) for path in on_server)
    assert make_app(config).poll("imap").counts.fetched == 0  # a new process: the ledger remembers
    imap_dovecot.deliver(sample_message(7))
    later = app.poll("imap")
    assert later.counts.fetched == 1 and len(delivered(tmp_path)) == 4 and len(files(imap_dovecot)) == 4


def test_fetching_does_not_mark_seen_before_handling(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    """BODY.PEEK[]: retrieving alone changes nothing on the server; only handling does."""
    raw = sample_message(1)
    imap_dovecot.deliver(raw)
    app = make_app(write_imap_config(tmp_path, imap_dovecot, after="seen"))
    session = app.source("imap").connect()
    try:
        listings = session.list_messages()
        [(listing, fetched)] = list(session.retrieve_many(listings))
        assert not isinstance(fetched, Exception) and fetched.read() == raw
        assert listing.size == len(raw)
    finally:
        session.close(commit=False)
    [path] = files(imap_dovecot)
    assert "S" not in flags(path)


def test_after_move_moves_into_the_folder(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    messages = [sample_message(index) for index in range(3)]
    for raw in messages:
        imap_dovecot.deliver(raw)
    app = make_app(write_imap_config(tmp_path, imap_dovecot, after="move:Handled"))
    report = app.poll("imap")  # the folder does not exist yet: created on TRYCREATE
    assert report.clean and report.counts.deleted == 3, report.line()
    assert files(imap_dovecot) == []
    assert sorted(path.read_bytes() for path in files(imap_dovecot, "Handled")) == sorted(messages)
    assert app.poll("imap").counts.fetched == 0


def test_several_folders(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    make_folder(imap_dovecot, "Orders")
    imap_dovecot.deliver(sample_message(1))
    deliver_to(imap_dovecot, "Orders", sample_message(2))
    deliver_to(imap_dovecot, "Orders", sample_message(3))
    app = make_app(write_imap_config(tmp_path, imap_dovecot, folder=["INBOX", "Orders"]))
    report = app.poll("imap")
    assert report.clean and report.counts.delivered == 3, report.line()
    assert files(imap_dovecot) == [] and files(imap_dovecot, "Orders") == []
    with app.state.engine.connect() as connection:
        keys = {row[0] for row in connection.exec_driver_sql("select uidl from popflow_ledger")}
    assert {key.split(";")[0] for key in keys} == {"INBOX", "Orders"}
    assert all(";UIDVALIDITY=" in key and ";UID=" in key for key in keys)


def test_starttls_on_the_plain_port(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    app = make_app(write_imap_config(tmp_path, imap_dovecot, port=imap_dovecot.imap_port, tls="starttls",
                                     auth="login"))
    report = app.poll("imap")
    assert report.clean and report.counts.delivered == 1, report.line()


def test_wrong_password_is_reported_without_it(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    app = make_app(write_imap_config(tmp_path, imap_dovecot, password="not-the-Secret-9"))
    report = app.poll("imap")
    assert report.error and "refused" in report.error and "not-the-Secret-9" not in report.error
    with pytest.raises(AuthenticationError):
        app.source("imap").connect()


def test_xoauth2_against_dovecots_oauth2_passdb(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    token_file = tmp_path / "token"
    token_file.write_text(imap_dovecot.oauth2_token + "\n")
    app = make_app(write_imap_config(tmp_path, imap_dovecot, password=None, auth="xoauth2",
                                     oauth2_token_file=str(token_file)))
    session = app.source("imap").connect()
    try:
        assert session.auth_method == "xoauth2"
    finally:
        session.close()
    assert app.poll("imap").counts.delivered == 1
    token_file.write_text("tok-revoked\n")
    report = app.poll("imap")
    assert report.error and "XOAUTH2 refused" in report.error and "tok-revoked" not in report.error


def test_session_info_for_check_connect(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    app = make_app(write_imap_config(tmp_path, imap_dovecot))
    session = app.source("imap").connect()
    try:
        info = session.info
    finally:
        session.close()
    assert {"IDLE", "MOVE", "UIDPLUS"} <= set(info.capabilities)
    assert info.message_count == 1
    assert any(note.startswith("INBOX: 1 message(s), UIDVALIDITY ") for note in info.notes)
