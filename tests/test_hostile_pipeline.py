"""Hostile mail through the whole pipeline: POP3 → parse → route → Maildir + database + eml folder.

Every message in :data:`HOSTILE` is built to break a mail parser (empty, a 10,000-line header, random
bytes, NUL bytes, no header/body separator, multipart nested thousands of levels deep, a subject of
20,000 encoded-words, an unknown charset, broken base64, address headers that make the standard
library raise). Each one must be delivered, byte for byte, to every sink, with its defects recorded
in the database; the poll must complete cleanly and quickly.

The real-world corpus (``../shared/corpus``, 288 messages collected because they broke other
parsers) goes the same way through the real Dovecot.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sqlite3
import time
from pathlib import Path

import pytest

from popflow.sinks.folder import delivery_key
from popflow.testing import POP3TestServer
from popflow.testing.mailbox import to_wire
from tests.support.dovecot import DovecotServer
from tests.support.killing import pop3_source, write_yaml_config
from tests.support.pipeline import maildir_files, make_app, write_config

pytestmark = pytest.mark.timeout(180)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEPTH = 3000
"""Levels of nested multipart: far past Python's default recursion limit (1000)."""


def _nested_multipart(depth: int) -> bytes:
    head = b"From: nest@example.org\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nthe innermost text\r\n" + closing


def _encoded_word_subject(words: int) -> bytes:
    folded = b"\r\n ".join(b"=?utf-8?q?w=C3=B6rd%d?=" % i for i in range(words))
    return b"From: words@example.org\r\nSubject: " + folded + b"\r\n\r\nbody\r\n"


HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "huge_header": b"".join(b"X-Line-%d: value %d\r\n" % (i, i) for i in range(10_000))
    + b"Subject: ten thousand header lines\r\n\r\nbody\r\n",
    "random_bytes": random.Random(4).randbytes(200 * 1024),
    "nul_bytes": b"From: nul\x00sender@example.org\r\nSubject: NUL\x00inside\r\n\r\nbody\x00with\x00NULs\r\n",
    "no_separator": b"From: sep@example.org\r\nSubject: no blank line\r\nthis line is no header at all\r\nmore\r\n",
    "nested_multipart": _nested_multipart(DEPTH),
    "encoded_words": _encoded_word_subject(20_000),
    "unknown_charset": b"From: cs@example.org\r\nSubject: =?x-klingon?q?qapla=E9?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=x-klingon\r\n\r\nnuq\xe9 \xff\xfe bytes\r\n",
    "broken_base64": b"From: b64@example.org\r\nSubject: broken base64\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64@@@\r\nQUJD=\r\n===\r\n--x\r\n"
    b"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBER\r\n--x--\r\n",
    "from_dot": b"From: John Doe.<j@x.example>\r\nSubject: from\r\n\r\nbody\r\n",
    "message_id_brackets": b"From: m@example.org\r\nMessage-ID: <[id@d]>\r\nSubject: mid\r\n\r\nbody\r\n",
    "undisclosed": b"From: u@example.org\r\nTo: unlisted-recipients:; (none)\r\nSubject: to\r\n\r\nbody\r\n",
}

MUST_HAVE_DEFECTS = {"random_bytes", "nul_bytes", "no_separator", "nested_multipart", "unknown_charset",
                     "broken_base64"}
"""Messages whose database row must list at least one defect (the others may be fine as they are)."""


def test_hostile_mail_is_stored_everywhere(tmp_path: Path) -> None:
    names = list(HOSTILE)
    with POP3TestServer(HOSTILE.values()) as server:
        uidl_of = dict(zip(names, server.uidls(), strict=True))
        config = write_config(
            tmp_path, server,
            sinks={"archive": {"type": "folder", "path": "./mail", "layout": "maildir"},
                   "db": {"type": "database", "url": "sqlite:///mail.db"},
                   "eml": {"type": "folder", "path": "./eml", "layout": "eml", "attachments": True}},
            routes=[{"sinks": ["archive", "db", "eml"]}])
        app = make_app(config)
        started = time.monotonic()
        report = app.poll("test")
        elapsed = time.monotonic() - started
        app.close()
        assert report.clean, report.line()
        assert report.counts.delivered == len(HOSTILE)
        assert server.messages() == []
    assert elapsed < 60, f"hostile mail took {elapsed:.1f}s"

    # Maildir: byte-identical to what the server sent, one file per message.
    assert len(maildir_files(tmp_path / "mail")) == len(HOSTILE)
    for name, raw in HOSTILE.items():
        path = tmp_path / "mail" / "new" / f"{delivery_key('test', uidl_of[name])}.popflow"
        assert path.read_bytes() == to_wire(raw), name

    # Database: one row per message, defects recorded.
    with sqlite3.connect(tmp_path / "mail.db") as db:
        rows = {uidl: (json.loads(defects or "[]"), sha) for uidl, defects, sha in
                db.execute("select uidl, defects, sha256 from popflow_messages")}
    assert set(rows) == set(uidl_of.values())
    for name in names:
        defects, sha = rows[uidl_of[name]]
        assert sha == hashlib.sha256(to_wire(HOSTILE[name])).hexdigest(), name
        if name in MUST_HAVE_DEFECTS:
            assert defects, f"{name}: no defect recorded"

    # eml folder: every message as .eml (same bytes) with its .json beside it.
    emls = sorted(path.read_bytes() for path in (tmp_path / "eml").rglob("*.eml"))
    assert emls == sorted(to_wire(raw) for raw in HOSTILE.values())
    assert len(list((tmp_path / "eml").rglob("*.json"))) == len(HOSTILE)
    print(f"\n{len(HOSTILE)} hostile messages through 3 sinks in {elapsed:.2f}s; "
          f"with defects: {sum(1 for d, _ in rows.values() if d)}")


def _crlf(data: bytes) -> bytes:
    """Line endings aside: every line ending CRLF, and a final one."""
    data = re.sub(rb"\r?\n", b"\r\n", data)
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


def _corpus_files() -> list[Path]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the mail corpus is missing: {CORPUS}")
        pytest.skip(f"the mail corpus is not beside the checkout: {CORPUS}")
    with manifest.open(newline="", encoding="utf-8") as handle:
        return [CORPUS / row["dest_file"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]


def test_corpus_through_dovecot(dovecot: DovecotServer, tmp_path: Path) -> None:
    files = _corpus_files()
    originals = [path.read_bytes() for path in files]
    for raw in originals:
        dovecot.deliver(raw)
    config = write_yaml_config(tmp_path, {
        "state": "sqlite:///state.db", "data_dir": "./data",
        "sources": {"dove": pop3_source(dovecot.host, dovecot.port, dovecot.username, dovecot.password)},
        "sinks": {"archive": {"type": "folder", "path": "./mail"},
                  "db": {"type": "database", "url": "sqlite:///mail.db"}},
        "routes": [{"sinks": ["archive", "db"]}],
    })
    app = make_app(config)
    started = time.monotonic()
    report = app.poll("dove")
    elapsed = time.monotonic() - started
    app.close()
    assert report.clean, report.line()
    assert report.counts.delivered == len(files)
    assert dovecot.count() == 0
    delivered = [path.read_bytes() for path in maildir_files(tmp_path / "mail")]
    assert sorted(_crlf(raw) for raw in delivered) == sorted(_crlf(raw) for raw in originals)
    with sqlite3.connect(tmp_path / "mail.db") as db:
        rows = db.execute("select uidl, sha256 from popflow_messages").fetchall()
    assert len(rows) == len({uidl for uidl, _ in rows}) == len(files)
    assert {sha for _, sha in rows} == {hashlib.sha256(raw).hexdigest() for raw in delivered}
    print(f"\ncorpus: {len(files)} messages through Dovecot → Maildir + SQLite in {elapsed:.2f}s; "
          f"defects in {report.counts.defects}")
