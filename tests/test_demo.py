"""``popflow demo`` end to end in a temporary folder, so the first thing a new user runs cannot rot."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from popflow.cli import main
from popflow.demo.mailbox import demo_messages
from popflow.demo.runner import MARKER

pytestmark = pytest.mark.timeout(60)


def run_demo(directory: Path) -> str:
    """``popflow demo --dir DIRECTORY``; its output (the exit status must be 0)."""
    result = CliRunner().invoke(main, ["demo", "--dir", str(directory)])
    assert result.exit_code == 0, result.output
    return result.output


def order_rows(directory: Path) -> list[tuple[str, dict[str, object], str]]:
    """(subject, meta, tags) of every row the database sink wrote."""
    with sqlite3.connect(directory / "orders.db") as db:
        rows = db.execute("select subject, meta, tags from popflow_messages order by subject").fetchall()
    return [(subject, json.loads(meta), tags) for subject, meta, tags in rows]


def folder_json(directory: Path) -> list[dict[str, object]]:
    """The parsed fields the folder sink wrote beside each .eml file."""
    return [json.loads(p.read_text()) for p in (directory / "mail").rglob("*.json")]


def test_demo_end_to_end(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    output = run_demo(directory)
    served = len(demo_messages())
    assert 30 <= served <= 60

    # Orders went to SQLite only (stop: true), with the plugin's order number in meta.
    rows = order_rows(directory)
    assert len(rows) == 14
    for subject, meta, _tags in rows:
        assert subject.startswith("Order #") and meta["order_number"] == subject.split("#")[1].split()[0]

    # Everything else (support and broken mail) went to the folder, with attachments beside it.
    fields = folder_json(directory)
    assert len(fields) == len(list((directory / "mail").rglob("*.eml"))) == served - 14 - 4
    subjects = {f["subject"] for f in fields}
    assert "Ошибка при оплате заказа" in subjects  # RFC 2047 UTF-8 decoded
    assert not any("news" in str(s) for s in subjects)  # the newsletter was dropped
    assert not any(str(s).startswith("Order #") for s in subjects)
    priorities = {f["subject"]: f["meta"].get("priority") for f in fields}  # type: ignore[attr-defined]
    assert priorities["URGENT: invoice shows the wrong amount"] == "high"
    assert priorities["Cannot log in since the update"] == "normal"
    attachments = [p.name for p in (directory / "mail").rglob("*") if p.is_file() and p.suffix in (".txt", ".csv")]
    assert "error-log.txt" in attachments and "état des tickets.csv" in attachments

    # The malformed messages were repaired and counted, not lost.
    repaired = {str(f["subject"]): f["defects"] for f in fields if f["defects"]}
    assert set(repaired) == {"Broken attachment", "Grüße", "Header only, no body", "Multipart without a boundary"}
    assert "base64" in str(repaired["Broken attachment"]) and "charset" in str(repaired["Grüße"])
    assert "│ parsed with defects (repaired)     │     4 │" in output

    # The summary says what happened and where to look; nothing is left on the server.
    assert f"│ served by the POP3 server          │ {served:5d} │" in output
    assert "│ dropped by the filter (newsletter) │     4 │" in output
    assert "│ left on the server                 │     0 │" in output
    assert "│ dead letters                       │     0 │" in output
    assert "sqlite3" in output and "dead-letters list" in output and "popflow run" in output


def test_demo_runs_again_in_the_same_folder(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    run_demo(directory)
    first = sorted(p.name for p in (directory / "mail").rglob("*.eml"))
    run_demo(directory)  # starts over: same messages delivered once, not twice
    assert sorted(p.name for p in (directory / "mail").rglob("*.eml")) == first
    assert len(order_rows(directory)) == 14
    assert (directory / MARKER).exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not made by `popflow demo`" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_demo_config_passes_check(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    run_demo(directory)
    result = CliRunner().invoke(main, ["check", "-c", str(directory / "popflow.yaml")])
    assert result.exit_code == 0, result.output
    assert "demo_transform" in result.output and "orders_db" in result.output


def test_the_mailbox_is_deterministic() -> None:
    assert demo_messages() == demo_messages()
