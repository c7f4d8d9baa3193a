"""Property tests: whatever the bytes, parsing and reading the body never raise, bytes survive."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popflow.parsing.encoded_words import decode_base64, decode_words
from popflow.parsing.params import parse_params
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments real (and broken) mail is made of, so random messages hit the interesting paths.
FRAGMENTS = [
    b"\r\n", b"\n", b"\r\n\r\n", b": ", b" ", b"\t", b"=?", b"?=", b"?q?", b"?B?", b"utf-8", b"x-foo",
    b"Subject", b"From", b"To", b"Cc", b"Date", b"Message-ID", b"Content-Type", b"multipart/mixed",
    b"multipart/alternative", b"text/plain", b"text/html", b"message/rfc822", b"boundary=", b"b",
    b'"', b"--b", b"--b--", b"charset=", b"name=", b"filename*=", b"filename*0*=", b"''", b"%2F", b"..",
    b"Content-Transfer-Encoding", b"base64", b"quoted-printable", b"=3D", b"=\r\n", b"<", b">", b"@",
    b",", b";", b"(", b")", b"\x00", b"\xff", b"\xc3\xa9", b"Content-Disposition", b"attachment",
]

mail_like = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=80).map(b"".join)


def check(data: bytes) -> None:
    message = parse_message(RawMessage.from_bytes(data), "prop")
    assert message.size == len(data)
    assert message.sha256 == hashlib.sha256(data).hexdigest()
    assert message.text is None or isinstance(message.text, str)
    assert message.html is None or isinstance(message.html, str)
    for attachment in message.attachments:
        content = attachment.content()
        assert len(content) == attachment.size
        assert "/" not in attachment.filename and attachment.filename not in ("", ".", "..")
    for _, value in message.headers:
        assert "\n" not in value and "\r" not in value and "\x00" not in value
    message.model_dump(mode="json")
    assert message.raw.read() == data
    # The catch-all guards are a last resort: no input may actually need them.
    assert not [d for d in message.defects if "parser error" in d or "unreadable" in d]


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check(data)


@SETTINGS
@given(mail_like)
def test_mail_like_bytes_never_raise(data: bytes) -> None:
    check(data)


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_header_text_never_raises(value: str) -> None:
    raw = value.encode("utf-8", errors="surrogatepass")
    for name in (b"Subject", b"From", b"To", b"Date", b"Message-ID", b"Content-Type"):
        check(name + b": " + raw + b"\r\n\r\nbody")


@SETTINGS
@given(st.text(max_size=200))
def test_helpers_never_raise(value: str) -> None:
    defects: list[str] = []
    assert isinstance(decode_words(value, "x", defects), str)
    main, params = parse_params(value, "x", defects)
    assert isinstance(main, str) and all(isinstance(v, str) for v in params.values())


@SETTINGS
@given(st.binary(max_size=300))
def test_base64_round_trip_and_repair(data: bytes) -> None:
    import base64

    decoded, broken = decode_base64(base64.encodebytes(data))
    assert (decoded, broken) == (data, False)
    assert isinstance(decode_base64(data)[0], bytes)
