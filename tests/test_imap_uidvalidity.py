"""A folder whose UIDVALIDITY changes (a rebuilt index, a restored backup) loses and doubles nothing.

Every message then has a new key. The old ones are gone from the listing; a new message of the
same size as one of them is fetched and compared by content (SHA-256) before anything is
delivered: the same bytes are the message already handled, now remembered under its new key.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.dovecot import DovecotServer
from tests.support.imap import files, reset_uidvalidity, write_imap_config
from tests.support.killing import maildir_ids
from tests.support.pipeline import make_app, sample_message

pytestmark = pytest.mark.timeout(120)


def uidvalidity(app_source: object) -> int:
    session = app_source.connect()  # type: ignore[attr-defined]
    try:
        return int(session.folders["INBOX"].uidvalidity)
    finally:
        session.close()


def test_reset_with_after_seen_redelivers_nothing(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    for index in range(3):
        imap_dovecot.deliver(sample_message(index))
    app = make_app(write_imap_config(tmp_path, imap_dovecot, after="seen"))
    assert app.poll("imap").counts.delivered == 3
    before = uidvalidity(app.source("imap"))
    reset_uidvalidity(imap_dovecot)
    imap_dovecot.deliver(sample_message(10))
    assert uidvalidity(app.source("imap")) != before
    report = app.poll("imap")
    assert report.clean, report.line()
    assert report.counts.fetched == 4 and report.counts.delivered == 1  # three compared, one new
    assert maildir_ids(tmp_path / "mail") == Counter({f"<msg-{i}@example.org>": 1 for i in (0, 1, 2, 10)})
    again = app.poll("imap")
    assert again.counts.fetched == 0, again.line()  # remembered under the new keys
    assert len(files(imap_dovecot)) == 4


def test_reset_with_after_delete_delivers_what_arrived(tmp_path: Path, imap_dovecot: DovecotServer) -> None:
    imap_dovecot.deliver(sample_message(1))
    app = make_app(write_imap_config(tmp_path, imap_dovecot))
    assert app.poll("imap").counts.delivered == 1
    imap_dovecot.deliver(sample_message(2))
    reset_uidvalidity(imap_dovecot)
    imap_dovecot.deliver(sample_message(3))
    report = app.poll("imap")
    assert report.clean and report.counts.delivered == 2, report.line()
    assert files(imap_dovecot) == []
    assert maildir_ids(tmp_path / "mail") == Counter({f"<msg-{i}@example.org>": 1 for i in (1, 2, 3)})
