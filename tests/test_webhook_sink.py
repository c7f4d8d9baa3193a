"""The webhook sink against a real threaded HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from popflow import __version__
from popflow.context import RuntimeContext
from popflow.errors import DeadLetterError, RetryableError
from popflow.message import Address, Attachment, Body, Message
from popflow.plugins import make_plugin_manager
from popflow.sinks.webhook import WebhookConfig, WebhookSink, parse_retry_after
from popflow.sinks.webhook_payload import (
    build_payload,
    delivery_id,
    encode_payload,
    sign,
    verify_request,
    verify_signature,
)
from tests.support.http_receiver import HttpReceiver, RecordedRequest, Reply

SECRET = "s3cret-hook-key-0123456789"
API_KEY = "api-key-value-ABCDEF-987654"
DOCS = Path(__file__).resolve().parent.parent / "docs"


# -- helpers ---------------------------------------------------------------------------------
def _independent_signature(secret: str, body: bytes) -> str:
    """The contract's signature, computed without popflow's code."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _verify_like_a_receiver(request: RecordedRequest) -> None:
    """What a receiver does with every signed request (see docs/webhooks.md)."""
    signature = request.headers.get("x-popflow-signature")
    if signature is None:
        return
    assert hmac.compare_digest(signature, _independent_signature(SECRET, request.body))
    payload = verify_request(SECRET, request.body, signature)
    assert request.headers["idempotency-key"] == payload["delivery_id"]


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver(on_request=_verify_like_a_receiver) as server:
        yield server
        assert server.errors == []


def _attachment(name: str, data: bytes, *, content_type: str = "application/octet-stream",
                content_id: str | None = None, inline: bool = False) -> Attachment:
    item = Attachment(filename=name, content_type=content_type, size=len(data),
                      sha256=hashlib.sha256(data).hexdigest(), content_id=content_id, inline=inline)
    item._content_loader = lambda: data
    return item


def make_message(uidl: str = "UID-1", attachments: list[Attachment] | None = None, **fields: Any) -> Message:
    """A parsed-looking message without needing the parser."""
    values: dict[str, Any] = {
        "source": "support", "uidl": uidl, "size": 1234, "sha256": "ab" * 32,
        "message_id": "<m1@example.com>", "subject": "Order #42 — confirmed",
        "from_": Address(name="Zoë Shop", address="shop@example.com"),
        "to": [Address(address="support@example.com")],
        "cc": [Address(name="Ops", address="ops@example.com")],
        "date": datetime(2024, 3, 1, 10, 15, tzinfo=timezone(timedelta(hours=1))),
        "headers": [("Subject", "Order #42 — confirmed"), ("X-Weird", "a\tb")],
        "tags": {"shop", "order"}, "meta": {"order_number": "42"},
    }
    values.update(fields)
    message = Message(**values)
    body = Body(text="Grüße\n", html="<p>Grüße</p>", attachments=attachments or [])
    message.set_body_loader(lambda: body)
    return message


@pytest.fixture
def make_sink(tmp_path: Path) -> Iterator[Any]:
    sinks: list[WebhookSink] = []

    def factory(url: str, name: str = "helpdesk", **options: Any) -> WebhookSink:
        config = WebhookConfig.model_validate({"type": "webhook", "url": url, **options})
        sink = WebhookSink(name, config, RuntimeContext(data_dir=tmp_path, base_dir=tmp_path))
        sink.open()
        sinks.append(sink)
        return sink

    yield factory
    for sink in sinks:
        sink.close()


def deliver_like_the_poller(sink: WebhookSink, message: Message, retries: int = 3) -> list[RetryableError]:
    """A minimal stand-in for the poller's loop: retry on RetryableError, up to ``retries`` times."""
    errors: list[RetryableError] = []
    for _ in range(retries + 1):
        try:
            sink.write(message)
            return errors
        except RetryableError as exc:
            errors.append(exc)
            time.sleep(min(exc.retry_after if exc.retry_after is not None else 0.01, 0.05))
    raise DeadLetterError(f"retries exhausted: {errors[-1]}")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- success ---------------------------------------------------------------------------------
def test_delivers_signed_payload_with_every_field(receiver: HttpReceiver, make_sink: Any) -> None:
    sink = make_sink(receiver.url, secret=SECRET, headers={"X-Api-Key": API_KEY})
    message = make_message(attachments=[_attachment("a.pdf", b"%PDF", content_type="application/pdf")])

    sink.write(message)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"popflow/{__version__}"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["x-popflow-signature"] == _independent_signature(SECRET, request.body)
    request.body.decode("utf-8")  # valid UTF-8, non-ASCII kept as is
    assert "Grüße".encode() in request.body

    payload = request.json()
    assert payload["event"] == "message.received" and payload["version"] == 1
    assert payload["delivery_id"] == delivery_id("support", "UID-1", "helpdesk")
    assert request.headers["idempotency-key"] == payload["delivery_id"]
    assert abs(payload["timestamp"] - time.time()) < 60
    got = payload["message"]
    assert got["source"] == "support" and got["uidl"] == "UID-1"
    assert got["subject"] == "Order #42 — confirmed"
    assert got["from"] == {"name": "Zoë Shop", "address": "shop@example.com"}
    assert got["to"] == [{"name": "", "address": "support@example.com"}]
    assert got["cc"] == [{"name": "Ops", "address": "ops@example.com"}]
    assert got["reply_to"] == []
    assert got["date"] == "2024-03-01T10:15:00+01:00"
    assert got["size"] == 1234 and got["sha256"] == "ab" * 32
    assert got["headers"] == [["Subject", "Order #42 — confirmed"], ["X-Weird", "a\tb"]]
    assert got["text"] == "Grüße\n" and got["html"] == "<p>Grüße</p>"
    assert got["tags"] == ["order", "shop"]
    assert got["meta"] == {"order_number": "42"}
    assert got["attachments"] == [{
        "filename": "a.pdf", "content_type": "application/pdf", "size": 4,
        "sha256": hashlib.sha256(b"%PDF").hexdigest(), "content_id": None, "inline": False,
    }]


def test_pooled_client_reuses_the_connection(receiver: HttpReceiver, make_sink: Any) -> None:
    sink = make_sink(receiver.url, secret=SECRET)
    for index in range(3):
        sink.write(make_message(uidl=f"UID-{index}"))
    ids = [request.headers["idempotency-key"] for request in receiver.requests]
    assert len(set(ids)) == 3
    client = sink._client
    assert client is not None
    sink.close()
    assert sink._client is None and client.is_closed


def test_delivery_id_is_stable_and_per_sink() -> None:
    first = delivery_id("support", "UID-1", "helpdesk")
    assert first == delivery_id("support", "UID-1", "helpdesk")
    assert first != delivery_id("support", "UID-1", "other-hook")
    assert first != delivery_id("support", "UID-2", "helpdesk")
    # No separator trick makes two different triples collide.
    assert delivery_id("a", "b:c", "d") != delivery_id("a:b", "c", "d")


def test_no_secret_means_no_signature_header(receiver: HttpReceiver, make_sink: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="popflow.sinks.webhook"):
        sink = make_sink(receiver.url)
    assert any("not signed" in record.getMessage() for record in caplog.records)
    sink.write(make_message())
    assert "x-popflow-signature" not in receiver.requests[0].headers
    assert receiver.requests[0].headers["idempotency-key"]
    assert "UNSIGNED" in sink.describe()


# -- retries ---------------------------------------------------------------------------------
def test_503_twice_then_200_is_delivered_once_with_one_idempotency_key(
    receiver: HttpReceiver, make_sink: Any
) -> None:
    receiver.script(Reply(503, {"Retry-After": "0"}), Reply(503, {"Retry-After": "0"}), Reply(200))
    sink = make_sink(receiver.url, secret=SECRET, backoff="10ms")

    errors = deliver_like_the_poller(sink, make_message())

    assert len(receiver.requests) == 3  # attempts
    assert [r.reply.status for r in receiver.requests].count(200) == 1  # deliveries
    assert len({r.headers["idempotency-key"] for r in receiver.requests}) == 1
    assert len(errors) == 2
    assert all(exc.retry_after == 0 for exc in errors)
    assert "503" in str(errors[0])


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses(receiver: HttpReceiver, make_sink: Any, status: int) -> None:
    receiver.script(Reply(status))
    sink = make_sink(receiver.url, secret=SECRET)
    with pytest.raises(RetryableError) as caught:
        sink.write(make_message())
    assert caught.value.retry_after is None  # no Retry-After: the poller's own backoff applies
    assert str(status) in str(caught.value)


def test_retry_after_as_http_date_is_parsed_and_capped(receiver: HttpReceiver, make_sink: Any) -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    later = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    receiver.script(Reply(429, {"Retry-After": soon}), Reply(503, {"Retry-After": later}),
                    Reply(503, {"Retry-After": "86400"}))
    sink = make_sink(receiver.url, secret=SECRET, retry_after_max="60s")

    delays = []
    for _ in range(3):
        with pytest.raises(RetryableError) as caught:
            sink.write(make_message())
        delays.append(caught.value.retry_after)
    assert delays[0] is not None and 25 <= delays[0] <= 30
    assert delays[1:] == [60, 60]


def test_parse_retry_after_edge_cases() -> None:
    now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", cap=300, now=now) == 120
    assert parse_retry_after(" 0 ", cap=300, now=now) == 0
    assert parse_retry_after("Fri, 01 Mar 2024 12:01:00 GMT", cap=300, now=now) == 60
    assert parse_retry_after("Fri, 01 Mar 2024 11:00:00 GMT", cap=300, now=now) == 0  # past
    assert parse_retry_after("99999999999999999999", cap=300, now=now) == 300
    for junk in (None, "", "soon", "-5", "1.5", "٣"):
        assert parse_retry_after(junk, cap=300, now=now) is None


def test_connection_refused_is_retryable(make_sink: Any) -> None:
    sink = make_sink(f"http://127.0.0.1:{closed_port()}/hook", secret=SECRET)
    with pytest.raises(RetryableError) as caught:
        sink.write(make_message())
    assert "unreachable" in str(caught.value)
    assert caught.value.retry_after is None


def test_server_that_never_answers_times_out_as_retryable(receiver: HttpReceiver, make_sink: Any) -> None:
    receiver.script(Reply(hang=True))
    sink = make_sink(receiver.url, secret=SECRET, timeout="500ms")
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        sink.write(make_message())
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3
    assert "within 0.5s" in str(caught.value)


def test_dropped_connection_is_retryable_and_next_attempt_succeeds(
    receiver: HttpReceiver, make_sink: Any
) -> None:
    receiver.script(Reply(drop=True), Reply(200))
    sink = make_sink(receiver.url, secret=SECRET)
    errors = deliver_like_the_poller(sink, make_message())
    assert len(errors) == 1 and len(receiver.requests) == 2


# -- final failures --------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_is_a_dead_letter(receiver: HttpReceiver, make_sink: Any, status: int) -> None:
    receiver.script(Reply(status, body=b"nope"))
    sink = make_sink(receiver.url, secret=SECRET)
    with pytest.raises(DeadLetterError) as caught:
        sink.write(make_message())
    assert f"answered {status}" in str(caught.value)
    assert len(receiver.requests) == 1


def test_410_gone_message_is_readable(receiver: HttpReceiver, make_sink: Any) -> None:
    receiver.script(Reply(410, body=b"hook   deleted\n"))
    sink = make_sink(receiver.url, secret=SECRET)
    with pytest.raises(DeadLetterError, match=r"answered 410 Gone for http://127\.0\.0\.1:\d+/hook: hook deleted"):
        sink.write(make_message())


def test_redirect_is_not_followed_and_is_final(receiver: HttpReceiver, make_sink: Any) -> None:
    receiver.script(Reply(307, {"Location": "http://127.0.0.1:1/elsewhere"}))
    sink = make_sink(receiver.url, secret=SECRET)
    with pytest.raises(DeadLetterError, match="307"):
        sink.write(make_message())
    assert len(receiver.requests) == 1


def test_unserialisable_meta_is_a_dead_letter(receiver: HttpReceiver, make_sink: Any) -> None:
    sink = make_sink(receiver.url, secret=SECRET)
    with pytest.raises(DeadLetterError, match="JSON"):
        sink.write(make_message(meta={"score": object()}))
    assert receiver.requests == []


# -- secrets ---------------------------------------------------------------------------------
def test_secrets_never_appear_in_errors_or_describe(receiver: HttpReceiver, make_sink: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    url_token = "tok-QWERTY-112233"
    # A receiver that echoes what it got, secrets included, in its error bodies.
    echo = f"{SECRET} {API_KEY} {url_token}".encode()
    receiver.script(Reply(401, body=echo), Reply(503, body=echo))
    url = receiver.url.replace("http://", f"http://user:{url_token}pw@") + f"?token={url_token}"
    with caplog.at_level(logging.DEBUG):
        sink = make_sink(url, secret=SECRET, headers={"X-Api-Key": API_KEY})
        texts = [sink.describe(), repr(sink), repr(sink.config), str(sink.config)]
        for expected in (DeadLetterError, RetryableError):
            with pytest.raises(expected) as caught:
                sink.write(make_message())
            texts.append(str(caught.value))
    refused = make_sink(f"http://127.0.0.1:{closed_port()}/hook?token={url_token}", secret=SECRET)
    with pytest.raises(RetryableError) as caught_refused:
        refused.write(make_message())
    texts.append(str(caught_refused.value))
    texts.extend(record.getMessage() for record in caplog.records)

    assert receiver.requests[0].headers["x-api-key"] == API_KEY  # it was sent, though
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")  # from the URL
    for text in texts:
        for secret in (SECRET, API_KEY, url_token):
            assert secret not in text, text
    assert "X-Api-Key=***" in sink.describe()
    assert "***" in texts[-len(caplog.records) - 2]  # the echoed secret was scrubbed, not dropped


def test_config_validation() -> None:
    ok = WebhookConfig.model_validate({"type": "webhook", "url": "https://hooks.example.com/x"})
    assert ok.retries == 3 and ok.timeout == 10 and ok.attachments == "metadata"
    assert ok.tls_verify is True and ok.max_inline == 1024 * 1024 and ok.retry_after_max == 300
    bad_options: list[dict[str, Any]] = [
        {"url": "ftp://hooks.example.com/x"},
        {"url": "not a url"},
        {"url": "https://h.example.com", "headers": {"Idempotency-Key": "x"}},
        {"url": "https://h.example.com", "headers": {"X-Popflow-Signature": "x"}},
        {"url": "https://h.example.com", "headers": {"Bad Name": "x"}},
        {"url": "https://h.example.com", "headers": {"X-Ok": "a\r\nX-Injected: 1"}},
        {"url": "https://h.example.com", "attachments": "all"},
        {"url": "https://h.example.com", "timeout": "0s"},
        {"url": "https://h.example.com", "unknown": 1},
        {"url": "https://u:p@h.example.com", "headers": {"authorization": "Bearer x"}},
    ]
    for options in bad_options:
        with pytest.raises(ValidationError) as caught:
            WebhookConfig.model_validate({"type": "webhook", **options})
        assert "a\r\nX-Injected" not in str(caught.value.errors()[0]["msg"])


def test_registered_as_a_plugin() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.registry.sink_type("webhook") is WebhookSink


# -- attachments -----------------------------------------------------------------------------
def _two_attachments() -> list[Attachment]:
    return [
        _attachment("small.png", b"\x89PNG" + bytes(range(256)) * 3, content_type="image/png",
                    content_id="<img1>", inline=True),
        _attachment("big.bin", b"\xff" * 5000),
    ]


def test_inline_attachments_up_to_max_inline(receiver: HttpReceiver, make_sink: Any) -> None:
    attachments = _two_attachments()
    sink = make_sink(receiver.url, secret=SECRET, attachments="inline", max_inline=4096)
    sink.write(make_message(attachments=attachments))
    small, big = receiver.requests[0].json()["message"]["attachments"]
    assert base64.b64decode(small["content_base64"]) == attachments[0].content()
    assert small["content_id"] == "<img1>" and small["inline"] is True
    assert "content_omitted" not in small
    assert big["content_omitted"] is True and "content_base64" not in big
    assert big["size"] == 5000 and big["sha256"] == hashlib.sha256(b"\xff" * 5000).hexdigest()


def test_metadata_and_none_attachment_modes(receiver: HttpReceiver, make_sink: Any) -> None:
    make_sink(receiver.url, secret=SECRET).write(make_message(attachments=_two_attachments()))
    make_sink(receiver.url, name="bare", secret=SECRET, attachments="none").write(
        make_message(attachments=_two_attachments()))
    with_metadata, without = (body["message"]["attachments"] for body in receiver.bodies())
    assert [item["filename"] for item in with_metadata] == ["small.png", "big.bin"]
    assert all("content_base64" not in item and "content_omitted" not in item for item in with_metadata)
    assert without == []


def test_large_inline_attachment_is_delivered(receiver: HttpReceiver, make_sink: Any) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    sink = make_sink(receiver.url, secret=SECRET, attachments="inline", max_inline="4MB")
    sink.write(make_message(attachments=[_attachment("data.bin", data)]))
    (item,) = receiver.requests[0].json()["message"]["attachments"]
    assert base64.b64decode(item["content_base64"]) == data


# -- messy mail ------------------------------------------------------------------------------
def test_messy_mail_still_gives_valid_signed_json(receiver: HttpReceiver, make_sink: Any) -> None:
    message = make_message(
        subject="broken \udce9 subject", from_=None, to=[], cc=[], date=None, message_id=None,
        headers=[("Subject", "=?bogus?= \x00")], defects=["bad charset"],
        meta={"when": datetime(2024, 1, 2, tzinfo=UTC), "ids": {3, 1, 2}, "blob": b"\x00\x01",
              "nested": {"list": [1, "x", None]}},
    )
    sink = make_sink(receiver.url, secret=SECRET)
    sink.write(message)
    got = receiver.requests[0].json()["message"]
    assert got["subject"] == "broken \ufffd\ufffd\ufffd subject"
    assert got["from"] is None and got["date"] is None and got["message_id"] is None
    assert got["defects"] == ["bad charset"]
    assert got["meta"] == {"when": "2024-01-02T00:00:00+00:00", "ids": [1, 2, 3], "blob": "AAE=",
                           "nested": {"list": [1, "x", None]}}


# -- signing helpers -------------------------------------------------------------------------
def test_verify_request_rejects_tampering_and_replays() -> None:
    message = make_message()
    body = encode_payload(build_payload(message, delivery="d", timestamp=1_000_000))
    signature = sign(SECRET, body)
    assert verify_signature(SECRET, body, signature)
    assert verify_request(SECRET, body, signature, now=1_000_100)["delivery_id"] == "d"
    for bad_signature in (None, "", "sha256=00", signature.upper(), sign("other", body)):
        assert not verify_signature(SECRET, body, bad_signature)
    with pytest.raises(ValueError, match="signature"):
        verify_request(SECRET, body.replace(b"UID-1", b"UID-2"), signature, now=1_000_000)
    with pytest.raises(ValueError, match="timestamp"):
        verify_request(SECRET, body, signature, now=1_000_000 + 301)


# -- HTTPS -----------------------------------------------------------------------------------
def test_https_with_ca_file_and_verification(tmp_path: Path, make_sink: Any) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with HttpReceiver(ssl_context=server_context, on_request=_verify_like_a_receiver) as server:
        make_sink(server.url, secret=SECRET, ca_file="ca.pem").write(make_message())
        assert len(server.requests) == 1
        with pytest.raises(RetryableError, match="unreachable"):  # not trusted without the CA
            make_sink(server.url, name="untrusted", secret=SECRET).write(make_message())
        assert len(server.requests) == 1
        assert server.errors == []


# -- the documented schema and example ---------------------------------------------------------
def _check(schema: dict[str, Any], value: Any, root: dict[str, Any], where: str = "$") -> None:
    """A small subset of JSON Schema 2020-12, enough for the payload schema (no dependency)."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        _check(target, value, root, where)
        return
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                _check(option, value, root, where)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{where}: matches {matches} of oneOf"
        return
    if "const" in schema:
        assert value == schema["const"] and type(value) is type(schema["const"]), where
    types = schema.get("type")
    if types is not None:
        python = {"string": str, "integer": int, "object": dict, "array": list, "boolean": bool,
                  "null": type(None)}
        allowed = [types] if isinstance(types, str) else types
        assert any(type(value) is python[name] for name in allowed), f"{where}: {value!r} is not {types}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(sub, value[key], root, f"{where}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), where
        assert len(value) <= schema.get("maxItems", len(value)), where
        for index, item in enumerate(value):
            prefix = schema.get("prefixItems", [])
            sub = prefix[index] if index < len(prefix) else schema.get("items")
            if sub is not None:
                _check(sub, item, root, f"{where}[{index}]")


def test_example_and_real_payloads_match_the_schema(receiver: HttpReceiver, make_sink: Any) -> None:
    schema = json.loads((DOCS / "webhook-payload.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    example = json.loads((DOCS / "webhook-payload.example.json").read_text(encoding="utf-8"))
    _check(schema, example, schema)
    assert set(example["message"]) == set(schema["$defs"]["message"]["properties"])

    make_sink(receiver.url, secret=SECRET, attachments="inline", max_inline=1024).write(
        make_message(attachments=_two_attachments()))
    make_sink(receiver.url, name="x", secret=SECRET).write(make_message(from_=None, date=None))
    for body in receiver.bodies():
        _check(schema, body, schema)
        assert set(body["message"]) == set(schema["$defs"]["message"]["properties"])

    try:  # the real validator too, when someone has it installed
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator(schema).validate(example)


# -- the receiver in docs/webhooks.md ------------------------------------------------------------
def _docs_receiver(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    text = (DOCS / "webhooks.md").read_text(encoding="utf-8")
    block = text.split("<!-- receiver-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "docs_receiver"}
    exec(compile(block, "docs/webhooks.md", "exec"), namespace)
    return namespace


def test_documented_receiver_accepts_popflow_and_rejects_forgeries(
    monkeypatch: pytest.MonkeyPatch, make_sink: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading
    from http.server import HTTPServer

    docs = _docs_receiver(monkeypatch)
    server = HTTPServer(("127.0.0.1", 0), docs["Hook"])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        sink = make_sink(url, secret=SECRET)
        sink.write(make_message())
        sink.write(make_message())  # a retry after a lost answer: accepted, handled once
        assert docs["seen"] == {delivery_id("support", "UID-1", "helpdesk")}
        assert capsys.readouterr().out == "Order #42 — confirmed\n"

        forger = make_sink(url, name="forger", secret="not-the-secret")
        with pytest.raises(DeadLetterError, match="401"):
            forger.write(make_message())
        with pytest.raises(DeadLetterError, match="401"):
            make_sink(url, name="unsigned").write(make_message())
    finally:
        server.shutdown()
        server.server_close()

    verify = docs["verify"]
    stale = encode_payload(build_payload(make_message(), delivery="d", timestamp=int(time.time()) - 301))
    with pytest.raises(ValueError, match="stale"):
        verify(stale, sign(SECRET, stale))


# -- end to end: POP3 server → poller → webhook → dead letter → replay -------------------------------
def test_end_to_end_poll_retry_dead_letter_and_replay(tmp_path: Path, receiver: HttpReceiver) -> None:
    from popflow.app import App
    from popflow.config import parse_config
    from popflow.replay import replay_dead_letters
    from popflow.testing.pop3server import POP3TestServer
    from popflow.testing.samples import make_message as sample

    with POP3TestServer([sample("first")]) as pop:
        host, port = pop.address
        app = App(parse_config({
            "state": f"sqlite:///{tmp_path}/state.db", "data_dir": str(tmp_path / "data"),
            "sources": {"support": {"host": host, "port": port, "tls": "none", "allow_insecure": True,
                                    "username": "user", "password": "pass"}},
            "sinks": {"hook": {"type": "webhook", "url": receiver.url, "secret": SECRET,
                               "backoff": "10ms", "retries": 2}},
            "routes": [{"sinks": ["hook"]}],
        }))
        try:
            receiver.script(Reply(503, {"Retry-After": "0"}), Reply(200))
            first = app.poll("support")
            assert first.clean and first.counts.delivered == 1 and first.counts.deleted == 1
            assert [r.reply.status for r in receiver.requests] == [503, 200]
            assert len({r.headers["idempotency-key"] for r in receiver.requests}) == 1

            pop.add(sample("second"))
            receiver.default = Reply(410, body=b"hook removed")
            second = app.poll("support")
            receiver.default = Reply(200)
            assert second.counts.dead_letters == 1 and second.counts.deleted == 1
            assert pop.uidls() == []  # handled, so deleted from the server
            gone_key = receiver.requests[-1].headers["idempotency-key"]
            (row,) = app.state.dead_letters()
            assert "410 Gone" in row["error"] and SECRET not in row["error"]

            (result,) = replay_dead_letters(app)
            assert result.ok, result.detail
            replayed = receiver.requests[-1]
            assert replayed.reply.status == 200 and replayed.headers["idempotency-key"] == gone_key
            assert replayed.json()["message"]["subject"] == "second"
        finally:
            app.close()


# -- property: any text a parser may produce gives valid, verifiable JSON -------------------------------
@settings(max_examples=60, deadline=None)
@given(subject=st.text(), text=st.text(), header=st.tuples(st.text(), st.text()),
       meta=st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.none(), st.booleans())))
def test_any_text_encodes_to_valid_signed_utf8_json(subject: str, text: str, header: tuple[str, str],
                                                    meta: dict[str, Any]) -> None:
    message = make_message(subject=subject, headers=[header], meta=meta)
    message.text = text
    body = encode_payload(build_payload(message, delivery="d"))
    payload = verify_request(SECRET, body, sign(SECRET, body))
    assert body.decode("utf-8")  # strict: always valid UTF-8
    if not any("\ud800" <= char <= "\udfff" for char in subject):
        assert payload["message"]["subject"] == subject
