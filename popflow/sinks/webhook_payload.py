"""The webhook payload (version 1): building it, serialising it, signing and verifying it.

Kept apart from the sink so that receivers — and their tests — can import the exact code popflow
uses::

    from popflow.sinks.webhook_payload import verify_request

The scheme (documented in ``docs/webhooks.md``):

* The body is UTF-8 JSON, serialised once per attempt; the signature covers exactly those bytes.
* ``X-Popflow-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` — as the public contract says.
* Replay protection comes from the body itself: its ``timestamp`` field (Unix seconds when the
  attempt was made) is covered by the signature, so receivers reject stale or future requests.
* ``Idempotency-Key`` is the ``delivery_id``: the same on every retry and every replay of one
  message to one sink, so receivers can deduplicate.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from datetime import time as dtime
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel

from popflow.message import Address, Attachment, Message
from popflow.record import json_value

EVENT = "message.received"
VERSION = 1

SIGNATURE_HEADER = "X-Popflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE = 300.0
"""Seconds a receiver should accept between the payload's ``timestamp`` and its own clock."""

# Fixed namespace so delivery ids are the same on every machine and every popflow version.
DELIVERY_NAMESPACE = uuid.UUID("5d0c4a4e-8f0b-5c55-9a55-70f0b1f10f01")

AttachmentMode = Literal["none", "metadata", "inline"]


def delivery_id(source: str, uidl: str, sink: str) -> str:
    """The stable id of delivering message ``(source, uidl)`` to ``sink``: a UUIDv5 string.

    The same on every retry and replay; different for another sink, so two webhooks never share
    one idempotency key.
    """
    # JSON-encode the triple so that no choice of names can make two triples collide.
    return str(uuid.uuid5(DELIVERY_NAMESPACE, json.dumps([source, uidl, sink], ensure_ascii=False)))


def _address(address: Address | None) -> dict[str, str] | None:
    if address is None:
        return None
    return {"name": address.name, "address": address.address}


def _attachment(attachment: Attachment, mode: AttachmentMode, max_inline: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "content_id": attachment.content_id,
        "inline": attachment.inline,
    }
    if mode != "inline":
        return item
    # Decide on the declared size first so an oversized attachment is never even loaded.
    content = attachment.content() if attachment.size <= max_inline else None
    if content is not None and len(content) <= max_inline:
        item["content_base64"] = base64.b64encode(content).decode("ascii")
    else:
        item["content_omitted"] = True
    return item


def build_payload(
    message: Message,
    *,
    delivery: str,
    attachments: AttachmentMode = "metadata",
    max_inline: int = 1024 * 1024,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """The version-1 payload for ``message`` as a JSON-ready dict.

    ``attachments``: ``none`` sends an empty list, ``metadata`` the attachments' fields, ``inline``
    also ``content_base64`` for each attachment of at most ``max_inline`` bytes (larger ones get
    ``"content_omitted": true``). ``timestamp`` defaults to now (Unix seconds).
    """
    message.load_body()
    attachment_items = (
        [] if attachments == "none"
        else [_attachment(item, attachments, max_inline) for item in message.attachments]
    )
    return {
        "event": EVENT,
        "version": VERSION,
        "delivery_id": delivery,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "message": {
            "source": message.source,
            "uidl": message.uidl,
            "message_id": message.message_id,
            "subject": message.subject,
            "from": _address(message.from_),
            "to": [_address(item) for item in message.to],
            "cc": [_address(item) for item in message.cc],
            "reply_to": [_address(item) for item in message.reply_to],
            "date": message.date.isoformat() if message.date is not None else None,
            "size": message.size,
            "sha256": message.sha256,
            "headers": [[name, value] for name, value in message.headers],
            "text": message.text,
            "html": message.html,
            "attachments": attachment_items,
            "tags": sorted(message.tags),
            "meta": json_value(message.meta),
            "defects": list(message.defects),
        },
    }


def _json_default(value: Any) -> Any:
    """JSON for what plugins put in ``meta``: dates, sets, bytes, models, paths."""
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath | uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Serialise a payload to the exact bytes that are sent and signed (compact UTF-8 JSON).

    Raises ``ValueError``/``TypeError`` for data JSON cannot carry (NaN, unknown objects in
    ``meta``). Lone surrogates from badly decoded mail become U+FFFD, so the body is always
    valid UTF-8.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False, default=_json_default)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Popflow-Signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return SIGNATURE_PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (the header's value) is the signature of ``body``, in constant time."""
    if not signature or not signature.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), signature.strip().encode("ascii", "replace"))


def verify_request(
    secret: str | bytes,
    body: bytes,
    signature: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its parsed payload; raise ``ValueError`` if it is not valid.

    Verifies the signature over the raw body first, then that the signed ``timestamp`` is within
    ``tolerance`` seconds of ``now`` (replay protection).
    """
    if not verify_signature(secret, body, signature):
        raise ValueError("bad or missing signature")
    payload = json.loads(body)
    stamp = payload.get("timestamp") if isinstance(payload, dict) else None
    if not isinstance(stamp, int):
        raise ValueError("payload has no timestamp")
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        raise ValueError("timestamp outside the tolerance: stale or replayed request")
    return payload
