"""The messages every server is filled with: a few real ones and some generated oddities.

The real ones are read from the shared corpus at run time (``$INTEROP_CORPUS``, by default
``../shared/corpus`` beside the checkout); they are never copied into the project. The generated
ones are what servers disagree about: raw UTF-8 headers (RFC 6532), CR CR LF line ends, no final
newline, dot-stuffing and ``From`` lines, a 300 KB body.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(os.environ.get("INTEROP_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
CORPUS_FILES = [
    "mikel_mail/spec/fixtures/emails/rfc6532/utf8_headers.eml",
    "mikel_mail/spec/fixtures/emails/attachment_emails/attachment_pdf.eml",
    "mikel_mail/spec/fixtures/emails/multi_charset/japanese_shift_jis.eml",
    "mailgun_flanker/tests/fixtures/messages/outlook-express.eml",
    "mikel_mail/spec/fixtures/emails/plain_emails/raw_email10.eml",
]
"""Corpus files used (relative to CORPUS): 8-bit headers, an attachment, a legacy charset."""


@dataclass(frozen=True)
class Message:
    """One message: a name for the matrix and its bytes as stored (LF line ends, but for the odd ones)."""

    name: str
    data: bytes


def _generated() -> list[Message]:
    def msg(index: int, subject: bytes, body: bytes, extra: bytes = b"") -> bytes:
        return (b"From: Interop Sender <sender@example.com>\n"
                b"To: popflow <popflow@example.com>\n"
                b"Subject: " + subject + b"\n"
                b"Date: Thu, 03 Dec 2026 12:00:%02d +0000\n" % index
                + b"Message-ID: <interop-%d@popflow.example>\n" % index + extra + b"\n" + body)

    return [
        Message("ascii", msg(1, b"plain ascii", b"Hello.\nSecond line.\n")),
        Message("utf8-headers", msg(2, "Grüße aus Köln — 東京".encode(), "Body ünïcödé.\n".encode(),
                                    "X-Note: naïve café\n".encode())),
        Message("utf8-from", "From: Jürgen Müller <jürgen@bücher.example>\nTo: popflow@example.com\n"
                             "Subject: =?utf-8?q?encoded?= and raw ß\nMessage-ID: <interop-3@popflow.example>\n"
                             "\nok\n".encode()),
        Message("cr-cr-lf", msg(4, b"CR CR LF lines", b"line one\r\r\nline two\r\r\nlast\n")),
        Message("stored-crlf", msg(8, b"stored with CRLF line ends", b"one\ntwo\n").replace(b"\n", b"\r\n")),
        Message("lone-cr", msg(9, b"lone CR", b"before\rafter\nend\n")),
        Message("no-final-newline", msg(5, b"no final newline", b"the body ends here")),
        Message("dots-and-from", msg(6, b"dot stuffing", b".\n..two dots\n.leading dot\nFrom the start\n>From x\n")),
        Message("large", msg(7, b"300 KB body", b"".join(b"%06d " % i + b"x" * 70 + b"\n" for i in range(4000)))),
    ]


def corpus_messages() -> list[Message]:
    """The corpus files that exist (a missing corpus gives none, and the matrix says so)."""
    found = []
    for relative in CORPUS_FILES:
        path = CORPUS / relative
        if path.is_file():
            data = path.read_bytes().replace(b"\r\n", b"\n")
            found.append(Message("corpus:" + Path(relative).name, data))
    return found


def all_messages() -> list[Message]:
    """Every message of a run, in the order servers are filled."""
    return corpus_messages() + _generated()


def from_quoted(data: bytes) -> bytes:
    """mboxrd quoting of ``From`` lines (``From `` -> ``>From ``, ``>From `` -> ``>>From ``)."""
    lines = data.split(b"\n")
    return b"\n".join(b">" + line if line.lstrip(b">").startswith(b"From ") else line for line in lines)


def mbox(messages: list[Message], envelope: bytes = b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970") -> bytes:
    """``messages`` as one mbox: a From_ line each, quoted From lines, a blank line between them."""
    out = bytearray()
    for message in messages:
        text = from_quoted(message.data)
        if not text.endswith(b"\n"):
            text += b"\n"
        out += envelope + b"\n" + text + b"\n"
    return bytes(out)
