"""Helpers for end-to-end tests: a config around popflow's own POP3 server, sample mail, counts."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

from popflow.app import App
from popflow.config import load_config
from popflow.testing import POP3TestServer


def sample_message(index: int, *, subject: str | None = None, to: str = "support@example.com",
                   sender: str = "customer@example.org", attachment: bytes | None = None) -> bytes:
    """A small, valid message with a unique Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject or f"Question number {index}"
    msg["Message-ID"] = f"<msg-{index}@example.org>"
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg.set_content(f"Hello, this is message {index}.\n.\n..leading dots survive\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=f"file-{index}.bin")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def write_config(tmp_path: Path, server: POP3TestServer, *, source: dict[str, Any] | None = None,
                 sinks: dict[str, Any] | None = None, routes: list[Any] | None = None,
                 filters: list[Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a popflow.yaml polling ``server`` into a Maildir folder sink (unless told otherwise)."""
    source_options = {"type": "pop3", "host": server.host, "port": server.port, "tls": "none",
                      "allow_insecure": True, "username": server.username, "password": server.password,
                      "timeout": "10s"}
    source_options.update(source or {})
    data: dict[str, Any] = {
        "state": "sqlite:///state.db",
        "data_dir": "./data",
        "sources": {"test": source_options},
        "sinks": sinks or {"archive": {"type": "folder", "path": "./mail", "layout": "maildir",
                                       "backoff": "10ms"}},
        "routes": routes or [{"sinks": ["archive"]}],
    }
    if filters:
        data["filters"] = filters
    data.update(extra or {})
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_app(config_path: Path, **kwargs: Any) -> App:
    """An App for a config file, with data_dir prepared."""
    app = App(load_config(config_path), **kwargs)
    app.prepare_data_dir()
    return app


def maildir_files(path: Path) -> list[Path]:
    """Every delivered message file in a Maildir."""
    return sorted([*(path / "new").glob("*"), *(path / "cur").glob("*")]) if path.exists() else []
