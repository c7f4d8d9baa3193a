"""One rule for ``meta`` in every sink: bytes in meta give the same lossless JSON everywhere."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from popflow.context import RuntimeContext
from popflow.errors import DeadLetterError
from popflow.message import Body, Message
from popflow.raw import RawMessage
from popflow.record import json_value
from popflow.sinks.db_rows import message_row
from popflow.sinks.folder import FolderConfig, FolderSink
from popflow.sinks.webhook_payload import build_payload, encode_payload

BLOB = b"\xff\x00\xfe binary"
META = {"blob": BLOB, "when": datetime(2024, 1, 1, tzinfo=UTC), "ids": {3, 1}, "nan": float("nan")}
EXPECTED = {"blob": base64.b64encode(BLOB).decode("ascii"), "when": "2024-01-01T00:00:00+00:00",
            "ids": [1, 3], "nan": "nan"}


def make_message() -> Message:
    message = Message(source="support", uidl="UID1", subject="hi", meta=dict(META))
    message.attach_raw(RawMessage.from_bytes(b"Subject: hi\r\n\r\nbody\r\n"))
    message.set_body_loader(lambda: Body(text="body"))
    return message


def test_database_row_keeps_bytes_losslessly() -> None:
    row = message_row(make_message(), store_raw=False, received_at=datetime.now(UTC))
    assert row["meta"] == EXPECTED
    assert base64.b64decode(row["meta"]["blob"]) == BLOB


def test_webhook_payload_uses_the_same_rule() -> None:
    body = encode_payload(build_payload(make_message(), delivery="d1", timestamp=1))
    assert json.loads(body)["message"]["meta"] == EXPECTED


def test_eml_sidecar_uses_the_same_rule_instead_of_failing(tmp_path: Path) -> None:
    config = FolderConfig.model_validate({"type": "folder", "path": "mail", "layout": "eml"})
    sink = FolderSink("archive", config, RuntimeContext(data_dir=tmp_path / "data", base_dir=tmp_path))
    sink.write(make_message())
    sink.commit()
    (sidecar,) = (tmp_path / "mail").rglob("*.json")
    assert json.loads(sidecar.read_text(encoding="utf-8"))["meta"] == EXPECTED


def test_an_unknown_object_is_a_dead_letter_naming_the_key() -> None:
    with pytest.raises(DeadLetterError, match=r"meta\.score cannot be JSON: a object value"):
        json_value({"score": object()})
