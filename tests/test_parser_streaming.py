"""Attachments are measured and read in bounded pieces: the same bytes as a whole decode, less memory."""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import tracemalloc
from pathlib import Path

import pytest

from popflow.parsing.parser import parse_message
from popflow.parsing.transfer import NotStreamable, iter_transfer_decoded, transfer_decode
from popflow.raw import RawMessage


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, position = [], 0
    while position < len(data):
        step = rng.randint(1, 97)
        pieces.append(data[position:position + step])
        position += step
    return pieces


@pytest.mark.parametrize("seed", range(20))
def test_streamed_decoding_equals_whole_decoding(seed: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(rng.randint(0, 3000))
    encoded = {
        "base64": base64.encodebytes(payload).replace(b"\n", b"\r\n"),
        "quoted-printable": binascii.b2a_qp(payload, istext=False).replace(b"\n", b"\r\n") + b"=\r\nend=3D",
        "8bit": payload,
    }
    for encoding, data in encoded.items():
        streamed = b"".join(iter_transfer_decoded(_split(data, rng), encoding))
        assert streamed == transfer_decode(data, encoding, "part", []), encoding


def test_broken_base64_is_not_streamed() -> None:
    with pytest.raises(NotStreamable):
        b"".join(iter_transfer_decoded([b"QUJD", b"RA=", b"=RUZH"], "base64"))


def _big_message(payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--b--\r\n")


def test_a_large_attachment_is_measured_and_read_in_bounded_memory(tmp_path: Path) -> None:
    payload = random.Random(1).randbytes(16 * 1024 * 1024)
    raw = RawMessage.from_chunks(iter([_big_message(payload)]), tmp_path)
    assert raw.spooled
    tracemalloc.start()
    try:
        message = parse_message(raw, "test")
        attachment = message.attachments[0]
        digest, size, largest = hashlib.sha256(), 0, 0
        for chunk in attachment.chunks():
            digest.update(chunk)
            size += len(chunk)
            largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.text == "see attached"
    assert (attachment.size, attachment.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert (size, digest.hexdigest()) == (attachment.size, attachment.sha256)
    assert largest <= 1024 * 1024
    # A whole decode would hold the 22 MB encoded part and the 16 MB payload at once.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while measuring and reading 16 MB"
    assert attachment.content() == payload


def test_chunks_of_an_unstreamable_part_are_its_whole_decode() -> None:
    message = parse_message(RawMessage.from_bytes(
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD=RA\r\n"), "t")
    attachment = message.attachments[0]
    assert b"".join(attachment.chunks()) == attachment.content() == b"ABC" + base64.b64decode(b"RA==")
    assert "body: broken base64" in message.defects


def test_a_part_of_a_message_in_memory_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A database sink storing attachments reads each one after the parse measured it: for a message
    # held in memory that must not decode the base64 a second time.
    payload = random.Random(2).randbytes(300 * 1024)
    raw = RawMessage.from_bytes(_big_message(payload))
    assert not raw.spooled
    decodes: list[int] = []
    real = binascii.a2b_base64

    def counting(data: bytes, **options: bool) -> bytes:
        decodes.append(len(data))
        return real(data, **options)

    monkeypatch.setattr("popflow.parsing.transfer.binascii.a2b_base64", counting)
    attachment = parse_message(raw, "test").attachments[0]
    measured = sum(decodes)
    assert measured >= len(base64.b64encode(payload))
    assert attachment.content() == payload
    assert b"".join(attachment.chunks()) == payload
    assert sum(decodes) == measured  # neither read decoded anything again


def test_a_part_of_a_spooled_message_is_decoded_again_not_kept(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    payload = random.Random(3).randbytes(2 * 1024 * 1024)
    raw = RawMessage.from_chunks(iter([_big_message(payload)]), tmp_path)
    assert raw.spooled
    decodes: list[int] = []
    real = binascii.a2b_base64

    def counting(data: bytes, **options: bool) -> bytes:
        decodes.append(len(data))
        return real(data, **options)

    monkeypatch.setattr("popflow.parsing.transfer.binascii.a2b_base64", counting)
    attachment = parse_message(raw, "test").attachments[0]
    measured = sum(decodes)
    assert attachment.content() == payload
    assert sum(decodes) >= 2 * measured  # streamed from the spool again: nothing of it held in memory
