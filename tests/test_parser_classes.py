"""Seven classes of real mail the parser once got wrong, found by a differential run (issue 12).

Each test is built from a message written here in the shape the real ones had; each failed before
the fix it names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import zipfile
from pathlib import Path

from popflow import Message
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage


def parse(data: bytes) -> Message:
    return parse_message(RawMessage.from_bytes(data), "test")


def parse_spooled(data: bytes, spool_dir: Path) -> Message:
    raw = RawMessage.from_chunks(iter([data]), spool_dir, threshold=1024)
    assert raw.spooled
    return parse_message(raw, "test")


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# 1. Bare-CR line endings ---------------------------------------------------------------------------

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


def _bare_cr_message() -> bytes:
    encoded = base64.encodebytes(PDF).decode("ascii").replace("\n", "\r")
    return (
        "From: Old Mac <mac@example.org>\rTo: desk@example.com\rSubject: invoice\r"
        "MIME-Version: 1.0\rContent-Type: multipart/mixed; boundary=\"=mac=\"\r\r"
        "--=mac=\rContent-Type: text/plain; charset=us-ascii\r\rPlease find the invoice.\rThanks\r"
        "--=mac=\rContent-Type: application/pdf; name=\"invoice.pdf\"\r"
        "Content-Disposition: attachment; filename=\"invoice.pdf\"\rContent-Transfer-Encoding: base64\r\r"
        f"{encoded}\r--=mac=--\r"
    ).encode("ascii")


def test_bare_cr_message_keeps_its_parts() -> None:
    message = parse(_bare_cr_message())
    assert message.subject == "invoice"
    assert message.text == "Please find the invoice.\nThanks"
    assert [attachment.filename for attachment in message.attachments] == ["invoice.pdf"]
    assert message.attachments[0].content() == PDF
    assert message.attachments[0].sha256 == hashlib.sha256(PDF).hexdigest()
    assert "body: lines end in a bare CR, read as line breaks" in message.defects
    assert not any("no blank line" in defect for defect in message.defects)


def test_bare_cr_message_from_the_spool_keeps_its_parts(tmp_path: Path) -> None:
    message = parse_spooled(_bare_cr_message(), tmp_path)
    assert message.text == "Please find the invoice.\nThanks"
    assert message.attachments[0].content() == PDF


def test_a_stray_cr_in_an_ordinary_message_changes_nothing() -> None:
    message = parse(crlf("Subject: s\nContent-Type: text/plain\n\nline one\rstill one\nline two\n"))
    assert message.text == "line one\rstill one\r\nline two\r\n"
    assert not any("bare CR" in defect for defect in message.defects)


# 2. 8-bit bytes inside an encoded word ---------------------------------------------------------------

def test_eight_bit_byte_inside_an_encoded_word_is_decoded_in_the_words_charset() -> None:
    message = parse(b"Subject: =?iso-8859-1?Q?Fr\xf6sche_und_Kr=F6ten?=\r\nFrom: a@example.org\r\n\r\nx\r\n")
    assert message.subject == "Frösche und Kröten"
    assert "header Subject: 8-bit characters inside an encoded word" in message.defects


def test_utf8_inside_an_encoded_word_of_another_charset() -> None:
    # The raw bytes are UTF-8 although the word says Latin-1: the character is still kept.
    message = parse("Subject: =?iso-8859-1?Q?Fr\u00f6sche?=\r\n\r\nx\r\n".encode())
    assert message.subject == "Frösche"


# 3. One bad byte in a declared charset ---------------------------------------------------------------

RUSSIAN = "Здравствуйте! Это письмо написано по-русски, в кодировке UTF-8."
CHINESE = "這是一封用繁體中文寫的測試郵件\uff0c內容很普通。"


def _text_part(charset: str, payload: bytes) -> bytes:
    head = f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    return head.encode("ascii") + payload


def test_one_bad_byte_in_utf8_costs_one_character() -> None:
    good = RUSSIAN.encode("utf-8")
    message = parse(_text_part("utf-8", good[:20] + b"\xff" + good[20:]))
    assert message.text is not None
    assert message.text.replace("\ufffd", "") == RUSSIAN
    assert message.text.count("\ufffd") == 1
    assert "body: invalid utf-8 bytes replaced" in message.defects


def test_one_bad_byte_in_big5_costs_one_character() -> None:
    good = CHINESE.encode("big5")
    message = parse(_text_part("big5", good[:10] + b"\xff" + good[10:]))
    assert message.text is not None
    assert message.text.count("\ufffd") == 1
    assert message.text.replace("\ufffd", "") == CHINESE


def test_latin1_text_labelled_utf8_is_still_re_guessed() -> None:
    latin = "Bonjour, voilà le café crème et la tarte à la crème brûlée.".encode("latin-1")
    message = parse(_text_part("utf-8", latin))
    assert message.text == latin.decode("latin-1")


def test_one_bad_byte_in_a_utf8_header_costs_one_character() -> None:
    good = RUSSIAN.encode("utf-8")
    message = parse(b"Subject: " + good[:20] + b"\xff" + good[20:] + b"\r\n\r\nx")
    assert message.subject is not None
    assert message.subject.replace("\ufffd", "") == RUSSIAN


# Minor: a lone high byte in unlabelled ASCII text is Windows-1252, as mail clients read it.

def test_lone_high_bytes_without_a_label_are_windows_1252() -> None:
    french = "Bonjour Monsieur, votre commande a été expédiée. Merci de votre confiance et à bientôt."
    message = parse(b"Content-Type: text/plain\r\n\r\n" + french.encode("cp1252"))
    assert message.text == french
    assert "body: 8-bit text labelled no charset, decoded as cp1252" in message.defects


def test_a_windows_quote_without_a_label_is_windows_1252() -> None:
    text = "The price is 5\u00a0EUR.\r\nIt\u2019s ready.\r\n" * 3
    message = parse(b"Subject: s\r\n\r\n" + text.encode("cp1252"))
    assert message.text == text


# 4. An empty or unsplittable nested multipart -------------------------------------------------------

def test_empty_nested_multipart_does_not_take_the_text_slot() -> None:
    message = parse(crlf(
        "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
        "--outer\nContent-Type: text/plain\n\nThe real body.\n"
        "--outer--\n"))
    assert message.text == "The real body."
    assert message.attachments == []
    assert "part 1: empty multipart, ignored" in message.defects


def test_unsplittable_nested_multipart_yields_to_the_real_body() -> None:
    message = parse(crlf(
        "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: multipart/related; boundary=missing\n\nsome stray text\n"
        "--outer\nContent-Type: text/plain\n\nThe real body.\n"
        "--outer--\n"))
    assert message.text == "The real body."
    assert [attachment.content() for attachment in message.attachments] == [b"some stray text"]


def test_an_unsplittable_multipart_alone_is_still_the_text() -> None:
    message = parse(crlf("Content-Type: multipart/mixed; boundary=nowhere\n\nJust text.\n"))
    assert message.text == "Just text.\r\n"


# 5. A named text part that is inline or has no disposition ------------------------------------------

def test_named_text_part_without_disposition_is_the_body() -> None:
    message = parse(crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; charset=utf-8; name=\"message.txt\"\n\nHello from the body.\n"
        "--b\nContent-Type: text/plain; name=\"notes.txt\"\nContent-Disposition: inline; filename=notes.txt\n\n"
        "A second text part.\n"
        "--b--\n"))
    assert message.text == "Hello from the body."
    assert [attachment.filename for attachment in message.attachments] == ["notes.txt"]


def test_named_inline_html_part_is_the_html() -> None:
    message = parse(crlf(
        "Content-Type: text/html; charset=utf-8\nContent-Disposition: inline; filename=\"page.html\"\n\n"
        "<p>Hi</p>\n"))
    assert message.html == "<p>Hi</p>\r\n"
    assert message.attachments == []


def test_named_text_part_marked_attachment_stays_an_attachment() -> None:
    message = parse(crlf(
        "Content-Type: text/plain; name=\"log.txt\"\nContent-Disposition: attachment; filename=\"log.txt\"\n\n"
        "log line\n"))
    assert message.text is None
    assert [attachment.filename for attachment in message.attachments] == ["log.txt"]


# 6. uuencode lines with trailing junk ----------------------------------------------------------------

def _zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("orders.csv", "id,amount\n" + "".join(f"{n},{n * 3}\n" for n in range(300)))
    return buffer.getvalue()


def test_uuencode_lines_with_trailing_junk_are_cut_not_dropped() -> None:
    payload = _zip_file()
    lines = [binascii.b2a_uu(payload[i:i + 45]).rstrip(b"\n") + b"  XX" for i in range(0, len(payload), 45)]
    body = b"begin 644 orders.zip\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n"
    message = parse(b"Content-Type: application/zip; name=orders.zip\r\n"
                    b"Content-Transfer-Encoding: x-uuencode\r\n\r\n" + body)
    content = message.attachments[0].content()
    assert content == payload
    assert zipfile.ZipFile(io.BytesIO(content)).read("orders.csv").startswith(b"id,amount\n0,0\n")
    assert "body: uuencode lines with trailing characters, cut" in message.defects


# 7. Address fragments ------------------------------------------------------------------------------

def _to(value: str) -> list[tuple[str, str]]:
    message = parse(f"To: {value}\r\n\r\nx".encode())
    return [(item.name, item.address) for item in message.to]


def test_domain_without_local_part_is_no_address() -> None:
    assert _to("@example.com") == []
    assert _to("real@example.org, @example.com") == [("", "real@example.org")]


def test_obsolete_source_route_leaves_the_final_address() -> None:
    assert _to("<@a.example,@b.example:user@c.example>") == [("", "user@c.example")]
    assert _to("Mary Smith <@machine.tld:mary@example.net>, Bob <bob@example.org>") == [
        ("Mary Smith", "mary@example.net"), ("Bob", "bob@example.org")]


def test_missing_comma_between_two_addresses_gives_both() -> None:
    assert _to("a@b.example c@d.example") == [("", "a@b.example"), ("", "c@d.example")]
    assert _to("\"Doe, Jane\" <jane@example.org>, a@b.example c@d.example") == [
        ("Doe, Jane", "jane@example.org"), ("", "a@b.example"), ("", "c@d.example")]


def test_address_reader_keeps_what_the_full_syntax_allows() -> None:
    assert _to("Team: a@b.example, \"Doe, J\" <j@c.example>;, e@f.example") == [
        ("", "a@b.example"), ("Doe, J", "j@c.example"), ("", "e@f.example")]
    assert _to("Undisclosed recipients:;") == []
    assert _to("j@x.example (Joe), Pete(A wonderful \\) chap) <pete(his account)@silly.test(his host)>") == [
        ("Joe", "j@x.example"), ("Pete", "pete@silly.test")]
    assert _to("\"john doe\"@example.com, jdoe@test   . example") == [
        ("", "\"john doe\"@example.com"), ("", "jdoe@test.example")]
    assert _to("root, \"Ops\" <ops>") == [("", "root"), ("Ops", "ops")]
    assert _to("Mikel@Lindsaar <raasdnil@gmail.com>") == [("Mikel@Lindsaar", "raasdnil@gmail.com")]
    assert _to("Big Bug bb@bug.com") == [("Big Bug", "bb@bug.com")]
    assert _to("Mary Smith") == []


def test_the_null_sender_keeps_its_name() -> None:
    message = parse(b"From: MAILER DAEMON <>\r\n\r\nbounce")
    assert message.from_ is not None
    assert (message.from_.name, message.from_.address) == ("MAILER DAEMON", "")
