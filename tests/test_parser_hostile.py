"""Hostile and broken mail: the parser never raises, says what it repaired, and stays linear."""

from __future__ import annotations

import random
import time

import pytest

from popflow import Message
from popflow.parsing.fields import MAX_HEADERS
from popflow.parsing.mime import MAX_DEPTH
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage


def parse_all(data: bytes) -> Message:
    """Parse and touch everything a sink would touch; returns the message."""
    message = parse_message(RawMessage.from_bytes(data), "hostile")
    _ = message.text, message.html
    for attachment in message.attachments:
        attachment.content()
    message.model_dump(mode="json")
    assert message.raw.read() == data
    return message


def nested_multipart(levels: int) -> bytes:
    parts = [b'Subject: deep\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n']
    parts += [b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i)
              for i in range(1, levels)]
    parts.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ninnermost\r\n" % (levels - 1))
    parts += [b"--b%d--\r\n" % i for i in reversed(range(levels))]
    return b"".join(parts)


def test_empty_message() -> None:
    message = parse_all(b"")
    assert message.size == 0
    assert message.headers == []
    assert message.subject is None and message.from_ is None
    assert not message.text
    assert message.attachments == []


def test_ten_thousand_header_lines() -> None:
    data = b"".join(b"X-Filler-%d: value %d\r\n" % (i, i) for i in range(10_000))
    message = parse_all(data + b"Subject: after the flood\r\n\r\nbody")
    assert len(message.headers) == MAX_HEADERS
    assert f"headers: more than {MAX_HEADERS} headers, only the first {MAX_HEADERS} kept" in message.defects
    assert message.subject == "after the flood"  # named fields still come from the whole block
    assert message.text == "body"


def test_one_header_folded_over_ten_thousand_lines() -> None:
    started = time.perf_counter()
    message = parse_all(b"Subject: start\r\n" + b" more\r\n" * 10_000 + b"\r\nbody")
    assert time.perf_counter() - started < 2  # linear: quadratic joining would take minutes
    assert message.subject is not None
    assert message.subject.startswith("start more more") and message.subject.count("more") == 10_000
    assert message.text == "body"


def test_random_bytes() -> None:
    data = random.Random(2024).randbytes(200_000)
    message = parse_all(data)
    assert message.size == 200_000
    assert message.defects  # random bytes are never a clean message


def test_nul_bytes_do_not_reach_decoded_text() -> None:
    message = parse_all(b"Subject: a\x00b\r\nFrom: x\x00y@example.com\r\n\r\nbo\x00dy")
    assert message.subject == "a\ufffdb"
    assert message.text == "bo\ufffddy"
    assert "body: NUL characters replaced" in message.defects
    assert all("\x00" not in value for _, value in message.headers)


def test_header_injection_through_encoded_words_is_neutralised() -> None:
    message = parse_all(b"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.com?=\r\n\r\n")
    assert message.subject == "hi  Bcc: victim@example.com"
    assert message.header("bcc") is None


def test_no_separator_between_headers_and_body() -> None:
    message = parse_all(b"Subject: hi\r\nFrom: a@example.com\r\nthis line is the body\r\nmore\r\n")
    assert message.subject == "hi"
    assert message.text == "this line is the body\r\nmore\r\n"
    assert "headers: no blank line between headers and body" in message.defects


def test_headers_without_any_body() -> None:
    message = parse_all(b"Subject: hi\nFrom: a@example.com")
    assert message.subject == "hi"
    assert message.from_ is not None and message.from_.address == "a@example.com"
    assert "headers: no blank line after the headers (no body)" in message.defects


def test_lf_only_line_endings() -> None:
    message = parse_all(b"Subject: unix\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                        b"Content-Type: text/plain\n\nhello\n--b--\n")
    assert message.subject == "unix"
    assert message.text == "hello"
    assert message.defects == []


def test_multipart_nested_five_thousand_levels() -> None:
    started = time.perf_counter()
    message = parse_all(nested_multipart(5_000))
    assert time.perf_counter() - started < 2
    assert message.subject == "deep"
    assert message.text is None  # the text lies below the depth limit: not descended
    assert f"body: multipart nested deeper than {MAX_DEPTH} levels, not descended" in message.defects


def test_multipart_nested_within_the_limit_is_read() -> None:
    message = parse_all(nested_multipart(MAX_DEPTH))
    assert message.text == "innermost"
    assert message.defects == []


def test_subject_of_twenty_thousand_encoded_words() -> None:
    words = b" ".join(b"=?utf-8?q?w%d?= =?iso-8859-1?b?QW5kcuk=?=" % i for i in range(10_000))
    started = time.perf_counter()
    message = parse_all(b"Subject: " + words + b"\r\n\r\nx")
    assert time.perf_counter() - started < 2
    assert message.subject is not None
    assert message.subject.startswith("w0Andréw1Andréw2")
    assert message.subject.count("André") == 10_000


@pytest.mark.parametrize("where", ["body", "subject", "filename"])
def test_unknown_charset(where: str) -> None:
    if where == "body":
        message = parse_all(b"Content-Type: text/plain; charset=x-foo\r\n\r\ncaf\xe9")
        assert message.text == "café"
    elif where == "subject":
        message = parse_all(b"Subject: =?x-foo?q?caf=E9?=\r\n\r\n")
        assert message.subject == "café"
    else:
        message = parse_all(b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
                            b"filename*=x-foo''caf%E9.pdf\r\n\r\nx")
        assert message.attachments[0].filename == "café.pdf"
    assert any("unknown charset x-foo" in defect for defect in message.defects)


def test_bytes_to_bytes_codec_is_not_a_charset() -> None:
    message = parse_all(b"Content-Type: text/plain; charset=base64\r\n\r\nhello")
    assert message.text == "hello"
    assert any("unknown charset base64" in defect for defect in message.defects)


def test_invalid_bytes_for_declared_charset() -> None:
    message = parse_all(b"Content-Type: text/plain; charset=utf-8\r\n\r\nGr\xfc\xdfe aus K\xf6ln")
    assert message.text == "Grüße aus Köln"
    assert any(defect.startswith("body: invalid utf-8 text") for defect in message.defects)


def test_broken_base64_decodes_what_it_can() -> None:
    message = parse_all(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                        b"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                        b"JVBERi0x!!!LjQK\r\nJVBER\r\n--b\r\n"
                        b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8\r\n--b--\r\n")
    (pdf,) = message.attachments
    assert pdf.content() == b"%PDF-1.4\n%PD"
    assert pdf.size == len(pdf.content())
    assert message.text == "hello"  # missing padding is repaired too
    assert "part 1: broken base64" in message.defects
    assert "part 2: broken base64" in message.defects


def test_concatenated_base64_blobs_all_decode() -> None:
    message = parse_all(b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\nIHdvcmxk\r\n")
    assert message.text == "hello world"


def test_odd_address_and_id_syntax() -> None:
    message = parse_all(b"From: John Doe.<j@x.example>\r\nMessage-ID: <[id@d]>\r\n"
                        b"To: unlisted-recipients:; (none)\r\nCc: undisclosed-recipients:;\r\n\r\nx")
    assert message.from_ is not None
    assert (message.from_.name, message.from_.address) == ("John Doe.", "j@x.example")
    assert message.message_id == "<[id@d]>"
    assert message.to == [] and message.cc == []
    assert message.defects == []


@pytest.mark.parametrize(
    "value",
    [b"@@@", b"<<<>>>", b'"unterminated <a@example.com>', b"((((((((((((((((((((", b"a@" * 20_000,
     b"(" * 5_000 + b"a@example.com"],
)
def test_unparseable_address_headers(value: bytes) -> None:
    message = parse_all(b"From: " + value + b"\r\nTo: " + value + b"\r\n\r\n")
    assert all(address.address.count("<") == 0 for address in message.to)


def test_garbage_from_keeps_its_text_and_a_defect() -> None:
    message = parse_all(b"From: @@@\r\n\r\n")
    assert message.from_ is not None and message.from_.address == ""
    assert "header From: unparseable address" in message.defects


@pytest.mark.parametrize(
    ("disposition", "original"),
    [
        (b'attachment; filename="../../etc/passwd"', "../../etc/passwd"),
        (b'attachment; filename="=?utf-8?q?..=2F..=2Fx?="', "../../x"),
        (b"attachment; filename*=utf-8''..%2F..%2Fevil", "../../evil"),
        (b'attachment; filename="..\\\\..\\\\windows\\\\system32"', "..\\..\\windows\\system32"),
        (b'attachment; filename="/absolute/path.sh"', "/absolute/path.sh"),
        (b'attachment; filename=".."', ".."),
    ],
)
def test_path_traversal_names_come_out_safe(disposition: bytes, original: str) -> None:
    message = parse_all(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Disposition: " + disposition
                        + b"\r\n\r\ndata\r\n--b--\r\n")
    (attachment,) = message.attachments
    assert attachment.original_filename == original
    assert "/" not in attachment.filename and "\\" not in attachment.filename
    assert attachment.filename not in ("", ".", "..")
    assert not attachment.filename.startswith(".")
    assert attachment.content() == b"data"


def test_missing_and_unclosed_boundaries() -> None:
    no_boundary = parse_all(b"Content-Type: multipart/mixed\r\n\r\njust text")
    assert no_boundary.text == "just text"
    assert "body: multipart without a boundary, read as text/plain" in no_boundary.defects
    not_found = parse_all(b"Content-Type: multipart/mixed; boundary=nope\r\n\r\njust text")
    assert not_found.text == "just text"
    assert "body: multipart boundary not found, read as text/plain" in not_found.defects
    unclosed = parse_all(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nfirst\r\n--b\r\n"
                         b"Content-Type: image/gif\r\n\r\nGIF89a")
    assert unclosed.text == "first"
    assert unclosed.attachments[0].content() == b"GIF89a"
    assert "body: multipart closing boundary missing" in unclosed.defects


def test_many_parts_are_bounded() -> None:
    parts = b"".join(b"--b\r\nContent-Type: application/x-part\r\n\r\n%d\r\n" % i for i in range(12_000))
    started = time.perf_counter()
    message = parse_all(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n")
    assert time.perf_counter() - started < 10
    assert len(message.attachments) < 10_000
    assert any("more than 10000 MIME parts" in defect for defect in message.defects)


def test_defect_list_is_bounded() -> None:
    charsets = b" ".join(b"=?x-bad-%d?q?a?=" % i for i in range(1_000))
    message = parse_all(b"Subject: " + charsets + b"\r\n\r\n")
    assert len(message.defects) <= 101
    assert message.defects[-1].startswith("... and ")


def test_huge_header_block_is_cut_not_loaded_whole() -> None:
    line = b"X-Big: " + b"a" * 1000 + b"\r\n"
    data = b"Subject: first\r\n" + line * 3000 + b"\r\nbody"  # about 3 MB of headers
    message = parse_all(data)
    assert message.subject == "first"
    assert any("header block larger than" in defect for defect in message.defects)
