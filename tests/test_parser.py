"""The built-in parser on ordinary mail: fields, encodings, bodies, attachments, laziness."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from popflow import Message
from popflow.parsing.parser import parse_message
from popflow.plugins import make_plugin_manager
from popflow.raw import RawMessage
from popflow.stages.parse import popflow_parse

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"0123456789" * 500


def parse(data: bytes, source: str = "test") -> Message:
    return parse_message(RawMessage.from_bytes(data), source)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


RICH = crlf(f"""Return-Path: <bounce@shop.example>
Received: from mx.shop.example by mail.example; Mon, 01 Jan 2024 10:00:00 +0000
From: =?utf-8?B?SsO2cmcgTcO8bGxlcg==?= <joerg@shop.example>
To: "Doe, Jane" <jane@example.org>, bob@example.org
Cc: =?iso-8859-1?q?Fran=E7oise?= <f@example.fr>
Reply-To: Support <support@shop.example>
Subject: =?utf-8?q?Order_=E2=84=96_42_=E2=80=94_caf=C3=A9?= confirmed
Date: Tue, 02 Jan 2024 15:04:05 +0100
Message-ID: <order-42@shop.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Thank you for your order =E2=84=96 42.
Caf=C3=A9 cr=C3=A8me.
--alt
Content-Type: multipart/related; boundary="rel"

--rel
Content-Type: text/html; charset=utf-8

<html><body><p>Thank you</p><img src="cid:logo@shop"></body></html>
--rel
Content-Type: image/png
Content-Transfer-Encoding: base64
Content-ID: <logo@shop>

{b64(PNG)}--rel--
--alt--
--outer
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

{b64(PDF)}--outer--
""")


@pytest.fixture()
def rich() -> Message:
    return parse(RICH)


def test_header_fields(rich: Message) -> None:
    assert rich.source == "test"
    assert rich.size == len(RICH)
    assert rich.sha256 == hashlib.sha256(RICH).hexdigest()
    assert rich.message_id == "<order-42@shop.example>"
    assert rich.subject == "Order № 42 — café confirmed"
    assert rich.from_ is not None
    assert (rich.from_.name, rich.from_.address) == ("Jörg Müller", "joerg@shop.example")
    assert [(a.name, a.address) for a in rich.to] == [("Doe, Jane", "jane@example.org"), ("", "bob@example.org")]
    assert [(a.name, a.address) for a in rich.cc] == [("Françoise", "f@example.fr")]
    assert [(a.name, a.address) for a in rich.reply_to] == [("Support", "support@shop.example")]
    assert rich.date == datetime(2024, 1, 2, 14, 4, 5, tzinfo=UTC)
    assert rich.date.utcoffset() == timedelta(hours=1)
    assert rich.defects == []


def test_headers_list_is_complete_ordered_and_decoded(rich: Message) -> None:
    names = [name for name, _ in rich.headers]
    assert names == ["Return-Path", "Received", "From", "To", "Cc", "Reply-To", "Subject", "Date",
                     "Message-ID", "MIME-Version", "Content-Type"]
    assert rich.header("subject") == "Order № 42 — café confirmed"
    assert rich.header("FROM") == "Jörg Müller <joerg@shop.example>"
    assert rich.header("content-type") == 'multipart/mixed; boundary="outer"'


def test_body_is_lazy(rich: Message) -> None:
    assert rich.body_loaded is False
    assert rich.subject  # header fields never load the body
    assert rich.body_loaded is False
    assert rich.text is not None
    assert rich.body_loaded is True


def test_alternative_text_and_html(rich: Message) -> None:
    assert rich.text == "Thank you for your order № 42.\r\nCafé crème."
    assert rich.html == '<html><body><p>Thank you</p><img src="cid:logo@shop"></body></html>'


def test_attachments_with_size_hash_and_content(rich: Message) -> None:
    logo, invoice = rich.attachments
    assert invoice.filename == "invoice.pdf"
    assert invoice.original_filename == "invoice.pdf"
    assert invoice.content_type == "application/pdf"
    assert invoice.inline is False
    assert invoice.size == len(PDF)
    assert invoice.sha256 == hashlib.sha256(PDF).hexdigest()
    assert invoice.content() == PDF
    assert logo.content_type == "image/png"
    assert logo.content_id == "logo@shop"
    assert logo.inline is True
    assert logo.original_filename is None
    assert logo.filename.endswith(".png")
    assert logo.content() == PNG
    assert logo.sha256 == hashlib.sha256(PNG).hexdigest()
    assert rich.defects == []


def test_single_part_plain_message() -> None:
    message = parse(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
    assert message.text == "hello\r\n"
    assert message.html is None
    assert message.attachments == []
    assert message.to == []
    assert message.date is None
    assert message.defects == []


def test_html_only_message_with_meta_charset() -> None:
    body = '<html><head><meta charset="windows-1252"></head><body>caf\xe9</body></html>'
    message = parse(b"Content-Type: text/html\r\n\r\n" + body.encode("cp1252"))
    assert message.text is None
    assert message.html is not None and "café" in message.html


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"=?UTF-8?B?w6nDqMOg?=", "éèà"),
        (b"=?utf-8?q?=C3=A9t=C3=A9_chaud?=", "été chaud"),
        (b"=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
        (b"=?iso-8859-1?b?QW5kcuk=?=", "André"),
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # whitespace between encoded words is dropped
        (b"=?utf-8?q?a?= and =?utf-8?q?b?=", "a and b"),
        (b"=?utf-8?b?4oKs?==?utf-8?b?IGV1cm8=?=", "€ euro"),
        (b"=?utf-8?b?4oI=?= =?utf-8?b?rA==?=", "€"),  # a character split across two words
        (b"=?utf-8*en?q?hello?=", "hello"),  # RFC 2231 language tag
        (b"plain \xc3\xa9t\xc3\xa9", "plain été"),  # raw UTF-8 header
        (b"folded\r\n line", "folded line"),
    ],
)
def test_subject_decoding(header: bytes, expected: str) -> None:
    message = parse(b"Subject: " + header + b"\r\n\r\nx")
    assert message.subject == expected
    assert message.defects == []


def test_eight_bit_headers_use_the_declared_charset() -> None:
    data = (b"Subject: Gr\xfc\xdfe\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe")
    message = parse(data)
    assert message.subject == "Grüße"
    assert message.text == "Grüße"
    assert any(defect.startswith("header Subject: 8-bit bytes") for defect in message.defects)


def test_dates() -> None:
    assert parse(b"Date: Thu, 13 Feb 1969 23:32:54 -0330\r\n\r\n").date == datetime(
        1969, 2, 13, 23, 32, 54, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    no_zone = parse(b"Date: Mon, 01 Jan 2024 10:00:00 -0000\r\n\r\n").date
    assert no_zone == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert no_zone.tzinfo is not None
    two_digit = parse(b"Date: 1 Jan 99 10:00:00 GMT\r\n\r\n").date
    assert two_digit == datetime(1999, 1, 1, 10, tzinfo=UTC)
    broken = parse(b"Date: next tuesday\r\n\r\n")
    assert broken.date is None
    assert "header Date: unparseable date" in broken.defects


def test_reply_to_and_multiple_from() -> None:
    message = parse(b"From: a@example.com, b@example.com\r\nReply-To: <r@example.com>\r\n\r\n")
    assert message.from_ is not None and message.from_.address == "a@example.com"
    assert [a.address for a in message.reply_to] == ["r@example.com"]


def test_rfc2231_and_rfc2047_file_names() -> None:
    data = crlf("""Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/pdf
Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf

x
--b
Content-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="

y
--b
Content-Type: text/plain
Content-Disposition: attachment;
 filename*0*=iso-8859-1''caf%E9;
 filename*1=".txt"

z
--b--
""")
    names = [(a.filename, a.original_filename) for a in parse(data).attachments]
    assert names == [("Rechnung März.pdf", "Rechnung März.pdf"), ("résumé.pdf", "résumé.pdf"),
                     ("café.txt", "café.txt")]


def test_forwarded_message_is_an_attachment() -> None:
    inner = b"From: x@example.com\r\nSubject: inner\r\n\r\ninner body\r\n"
    data = (b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\nsee below\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            + inner + b"\r\n--b--\r\n")
    message = parse(data)
    assert message.text == "see below"
    (forwarded,) = message.attachments
    assert forwarded.filename == "forwarded-message.eml"
    assert forwarded.content_type == "message/rfc822"
    assert forwarded.content() == inner
    assert parse(forwarded.content()).subject == "inner"


def test_text_attachment_is_not_the_body() -> None:
    data = crlf("""Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; name=notes.txt
Content-Disposition: attachment; filename=notes.txt

notes
--b
Content-Type: text/plain

the body
--b--
""")
    message = parse(data)
    assert message.text == "the body"
    assert [a.filename for a in message.attachments] == ["notes.txt"]


def test_mislabelled_utf8_is_decoded_as_utf8() -> None:
    message = parse("Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncafé".encode())
    assert message.text == "café"
    assert any("is UTF-8" in defect for defect in message.defects)


def test_spooled_message_parses_without_changing_bytes(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 6000
    data = (b"Subject: big\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n--zz\r\nContent-Type: application/octet-stream; "
            b"name=blob.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(payload) + b"--zz--\r\n")
    raw = RawMessage.from_chunks(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]),
                                 spool_dir=tmp_path, threshold=1024 * 1024)
    assert raw.spooled
    message = parse_message(raw, "spool")
    assert message.subject == "big"
    assert message.text == "hello"
    (blob,) = message.attachments
    assert blob.size == len(payload)
    assert blob.content() == payload
    assert raw.read() == data


def test_a_lazy_spool_folder_is_asked_for_only_when_a_message_needs_spooling(tmp_path: Path) -> None:
    asked: list[Path] = []

    def spool_dir() -> Path:
        asked.append(tmp_path / "spool")
        return tmp_path / "spool"

    small = RawMessage.from_chunks(iter([b"Subject: s\r\n\r\nhi\r\n"]), spool_dir=spool_dir, threshold=1024)
    assert not small.spooled and asked == []  # the per-message lookup is skipped
    data = b"Subject: b\r\n\r\n" + b"x" * 4000
    big = RawMessage.from_chunks(iter([data[:1000], data[1000:]]), spool_dir=spool_dir, threshold=1024)
    assert big.spooled and asked == [tmp_path / "spool"]
    assert big.path is not None and big.path.parent == tmp_path / "spool"
    assert big.read() == data
    big.discard()


def test_hook_is_registered_as_fallback_parser() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    raw = RawMessage.from_bytes(b"Subject: via hook\r\n\r\nx")
    message = pm.hook.popflow_parse(raw=raw, source="s")
    assert isinstance(message, Message)
    assert (message.subject, message.source) == ("via hook", "s")
    assert popflow_parse(raw, "s").subject == "via hook"


def test_raw_bytes_are_attached_unchanged(rich: Message) -> None:
    assert rich.raw.read() == RICH
