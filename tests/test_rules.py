"""Filters and routes from config: the contract's match keys, first-match filters, every-match routes."""

from __future__ import annotations

import pytest

from popflow.config import parse_config
from popflow.message import Address, Attachment, Body, Message
from popflow.stages.rules import ConfigRules


def message(**fields: object) -> Message:
    body = fields.pop("body", None)
    attachments = fields.pop("attachments", [])
    msg = Message(source="s", uidl="1", **fields)  # type: ignore[arg-type]
    msg.set_body_loader(lambda: Body(text=body, attachments=attachments))  # type: ignore[arg-type]
    return msg


def rules(text: dict) -> ConfigRules:
    plugin = ConfigRules()
    base = {"sinks": {name: {"type": "folder", "path": name} for name in ("a", "b", "c")}}
    plugin.popflow_startup(parse_config({**base, **text}))
    return plugin


def test_filter_first_match_decides() -> None:
    plugin = rules({"filters": [
        {"keep": {"from": "boss@example.com"}},
        {"drop": {"from": "*@example.com"}},
    ]})
    kept = plugin.popflow_filter(message(from_=Address(address="boss@example.com")))
    assert kept is not None and kept.keep
    dropped = plugin.popflow_filter(message(from_=Address(address="Spam@EXAMPLE.com")))
    assert dropped is not None and not dropped.keep and "filters[1]" in dropped.reason
    assert plugin.popflow_filter(message(from_=Address(address="x@other.org"))) is None


def test_header_regex_and_sizes() -> None:
    plugin = rules({"filters": [{"drop": {"header": {"X-Spam-Flag": "YES"}}},
                                {"drop": {"larger_than": "1KB"}}]})
    spam = message(headers=[("x-spam-flag", "YES")])
    assert plugin.popflow_filter(spam).keep is False  # type: ignore[union-attr]
    big = message(size=5000)
    assert plugin.popflow_filter(big).keep is False  # type: ignore[union-attr]
    assert plugin.popflow_filter(message(size=10)) is None


def test_routes_every_match_and_stop() -> None:
    plugin = rules({"routes": [
        {"match": {"to": "orders@*", "subject": "(?i)order #\\d+"}, "sinks": ["a"], "stop": True},
        {"match": {"has_attachment": True}, "sinks": ["b"]},
        {"sinks": ["c"]},
    ]})
    order = message(to=[Address(address="orders@shop.example")], subject="Your ORDER #123")
    assert plugin.popflow_route(order) == ["a"]
    pdf = Attachment(filename="invoice.pdf")
    with_attachment = message(subject="hello", attachments=[pdf])
    assert plugin.popflow_route(with_attachment) == ["b", "c"]
    assert plugin.popflow_route(message(subject="hi")) == ["c"]


@pytest.mark.parametrize(("rule", "expected"), [
    ({"attachment": "*.pdf"}, True),
    ({"attachment": "*.exe"}, False),
    ({"body": "(?i)refund"}, True),
    ({"cc": "*@partner.example"}, True),
    ({"smaller_than": "1KB"}, True),
])
def test_match_keys(rule: dict, expected: bool) -> None:
    plugin = rules({"routes": [{"match": rule, "sinks": ["a"]}]})
    msg = message(cc=[Address(name="P", address="p@partner.example")], size=100,
                  body="Please REFUND me", attachments=[Attachment(filename="Invoice.PDF")])
    assert (plugin.popflow_route(msg) == ["a"]) is expected


def test_header_only_rules_do_not_parse_body() -> None:
    plugin = rules({"routes": [{"match": {"subject": "x"}, "sinks": ["a"]}]})
    msg = message(subject="x")
    plugin.popflow_route(msg)
    assert not msg.body_loaded
