"""Every message of the real-world corpus parses, body and attachments included, bytes intact."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import pytest

from popflow import Message
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _manifest() -> list[dict[str, str]]:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the mail corpus is missing: {CORPUS}")
        pytest.skip(f"the mail corpus is not beside the checkout: {CORPUS}")
    with (CORPUS / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, str]]:
    return _manifest()


def test_every_corpus_message_parses(manifest: list[dict[str, str]]) -> None:
    with_defects = []
    for row in manifest:
        data = (CORPUS / row["dest_file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"], row["dest_file"]
        message = parse_message(RawMessage.from_bytes(data), "corpus")
        assert message.size == len(data) == int(row["bytes"])
        assert message.sha256 == row["sha256"]
        # The whole body, every attachment's bytes: none of it may raise.
        assert message.text is None or isinstance(message.text, str)
        assert message.html is None or isinstance(message.html, str)
        for attachment in message.attachments:
            content = attachment.content()
            assert len(content) == attachment.size, (row["dest_file"], attachment.filename)
            assert hashlib.sha256(content).hexdigest() == attachment.sha256
            assert "/" not in attachment.filename and "\\" not in attachment.filename
            assert attachment.filename not in ("", ".", "..")
        for name, value in message.headers:
            assert name and "\r" not in value and "\n" not in value and "\x00" not in value
        assert message.raw.read() == data
        message.model_dump(mode="json")  # what sinks do with it
        assert not [d for d in message.defects if "parser error" in d or "unreadable" in d], row["dest_file"]
        if message.defects:
            with_defects.append(row["dest_file"])
    assert len(manifest) == 288
    # Most real mail is fine; the corpus was collected for its broken messages, a quarter of it.
    assert 20 <= len(with_defects) <= 120, len(with_defects)
    print(f"\n{len(with_defects)} of {len(manifest)} corpus messages had defects")


def test_known_broken_messages_report_their_defects(manifest: list[dict[str, str]]) -> None:
    def defects_of(suffix: str) -> list[str]:
        (row,) = [row for row in manifest if row["dest_file"].endswith(suffix)]
        message = parse_message(RawMessage.from_bytes((CORPUS / row["dest_file"]).read_bytes()))
        message.load_body()
        return message.defects

    assert "header Date: unparseable date" in defects_of("error_emails/bad_date_header.eml")
    assert "body: multipart closing boundary missing" in defects_of("messages/missing-final-boundary.eml")
    assert any("unknown charset" in d for d in defects_of("plain_emails/raw_email10.eml"))
    assert any("read as quoted-printable" in d
               for d in defects_of("error_emails/content_transfer_encoding_with_semi_colon.eml"))


def test_corpus_samples_decode_sensibly(manifest: list[dict[str, str]]) -> None:
    by_name = {row["dest_file"].rsplit("/", 1)[-1]: row["dest_file"] for row in manifest}

    def parse(name: str) -> Message:
        return parse_message(RawMessage.from_bytes((CORPUS / by_name[name]).read_bytes()))

    subject = parse("invalid_subject_characters.eml").subject
    assert subject is not None and subject.startswith("Formação FrenetikPolis")
    from_ = parse("from-encoding.eml").from_
    assert from_ is not None and from_.name == "Ingo Lütkebohle"
    russian = parse("russian-attachment-yahoo.eml")
    assert any(a.original_filename and a.original_filename.startswith("Картинка") for a in russian.attachments)
