"""The corpus parsed by popflow and by the standard library, field by field (issue 12).

Every field on which the two disagree after normalisation must be listed, with the reason popflow
is right, in ``tests/data/parser_differential.tsv``; a regression shows up as a new disagreement,
and an entry that no longer disagrees must be removed, so the list stays reviewed.

Normalisation (what is not a disagreement):
- text is compared with runs of white space collapsed and U+FFFD removed; the standard library's
  surrogate escapes for undecodable header bytes are read as UTF-8 first (RFC 6532);
- addresses are compared lower-cased; the standard library's empty ``<>`` addresses are dropped;
- an empty body and no body are the same;
- attachments: every part the standard library would save (a filename or ``attachment``) must be
  among popflow's attachments by SHA-256 of its decoded bytes, or be popflow's text or HTML (a
  named inline text part is the body, RFC 2183); forwarded ``message/*`` parts are compared as
  one attachment, not descended;
- a field the standard library raises on is not compared (popflow answers; it cannot).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from popflow.message import Message
from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage
from tests.test_parser_corpus import CORPUS, _manifest

ALLOW_LIST = Path(__file__).parent / "data" / "parser_differential.tsv"
FIELDS = ("subject", "from", "to", "cc", "date", "message_id", "text", "html", "attachments")


def _text(value: str | None) -> str | None:
    if not value:
        return None
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(value.replace("\ufffd", "").split()) or None


def _address(value: str) -> str | None:
    return None if value in ("", "<>") else _text(value.lower())


def _stdlib_fields(data: bytes) -> dict[str, Any]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    getters: dict[str, Callable[[], Any]] = {
        "subject": lambda: _text(str(message["subject"])) if message["subject"] is not None else None,
        "from": lambda: next((_address(item.addr_spec) for item in message["from"].addresses), None)
        if message["from"] is not None else None,
        "to": lambda: _stdlib_addresses(message, "to"),
        "cc": lambda: _stdlib_addresses(message, "cc"),
        "date": lambda: message["date"].datetime.timestamp()
        if message["date"] is not None and message["date"].datetime else None,
        "message_id": lambda: str(message["message-id"]).strip() if message["message-id"] is not None else None,
        "text": lambda: _stdlib_body(message, "plain"),
        "html": lambda: _stdlib_body(message, "html"),
        "attachments": lambda: _stdlib_saved_parts(message),
    }
    fields: dict[str, Any] = {}
    for name, getter in getters.items():
        try:
            fields[name] = getter()
        except Exception:  # the standard library cannot answer: nothing to compare with
            continue
    return fields


def _stdlib_addresses(message: email.message.EmailMessage, name: str) -> list[str]:
    if message[name] is None:
        return []
    return [address for item in message[name].addresses if (address := _address(item.addr_spec))]


def _stdlib_body(message: email.message.EmailMessage, kind: str) -> str | None:
    part = message.get_body(preferencelist=(kind,))
    return None if part is None else _text(part.get_content())


def _stdlib_saved_parts(message: email.message.EmailMessage) -> list[frozenset[str]]:
    """Each part the standard library would save, as the set of keys that would count as kept."""
    saved: list[frozenset[str]] = []
    stack: list[email.message.Message] = [message]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            stack.extend(part.get_payload())  # type: ignore[arg-type]
        elif part.get_content_maintype() == "message":
            saved.append(frozenset({"message/*"}))
        elif part.get_filename() or part.get_content_disposition() == "attachment":
            keys = {hashlib.sha256(part.get_payload(decode=True) or b"").hexdigest()}  # type: ignore[arg-type]
            if part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
                keys.add(f"text:{_text(part.get_content())}")  # type: ignore[attr-defined]
            saved.append(frozenset(keys))
    return saved


def _popflow_fields(message: Message) -> dict[str, Any]:
    kept = {"message/*" if item.content_type.startswith("message/") else item.sha256 for item in message.attachments}
    kept |= {f"text:{_text(body)}" for body in (message.text, message.html) if body is not None}
    return {
        "subject": _text(message.subject),
        "from": _address(message.from_.address) if message.from_ else None,
        "to": [address for item in message.to if (address := _address(item.address))],
        "cc": [address for item in message.cc if (address := _address(item.address))],
        "date": message.date.timestamp() if message.date else None,
        "message_id": message.message_id,
        "text": _text(message.text),
        "html": _text(message.html),
        "attachments": kept,
    }


def _agrees(field: str, ours: Any, theirs: Any) -> bool:
    if field == "attachments":  # every part the standard library would save, popflow kept
        return all(keys & ours for keys in theirs)
    return bool(ours == theirs)


def _disagreements() -> set[tuple[str, str]]:
    found = set()
    for row in _manifest():
        data = (CORPUS / row["dest_file"]).read_bytes()
        theirs = _stdlib_fields(data)
        ours = _popflow_fields(parse_message(RawMessage.from_bytes(data), "corpus"))
        for field in FIELDS:
            if field in theirs and not _agrees(field, ours[field], theirs[field]):
                found.add((row["dest_file"], field))
    return found


def _allowed() -> dict[tuple[str, str], str]:
    allowed = {}
    for line in ALLOW_LIST.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, field, reason = line.split("\t")
        assert field in FIELDS, line
        assert reason.strip(), f"an allowed disagreement needs its reason: {line}"
        allowed[(path, field)] = reason
    return allowed


def test_every_disagreement_with_the_standard_library_is_reviewed() -> None:
    found = _disagreements()
    allowed = _allowed()
    new = sorted(found - allowed.keys())
    stale = sorted(allowed.keys() - found)
    assert not new, f"popflow and the standard library now disagree on (review, then list): {new}"
    assert not stale, f"listed but no longer a disagreement (remove from {ALLOW_LIST.name}): {stale}"


def test_the_comparison_sees_a_difference() -> None:
    # The harness itself: an address list the standard library reads differently is caught.
    data = b"To: a@b.example c@d.example\r\nSubject: s\r\n\r\nbody\r\n"
    theirs = _stdlib_fields(data)
    ours = _popflow_fields(parse_message(RawMessage.from_bytes(data), "test"))
    assert ours["to"] == ["a@b.example", "c@d.example"]
    assert not _agrees("to", ours["to"], theirs["to"])
    assert _agrees("subject", ours["subject"], theirs["subject"])
    assert _agrees("text", ours["text"], theirs["text"])
