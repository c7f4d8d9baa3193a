"""Attachment names from hostile mail end up inside the sink's folder under safe, unique names."""

from __future__ import annotations

import os
from pathlib import Path

from popflow.testing import POP3TestServer
from tests.support.pipeline import make_app, write_config

HOSTILE_NAMES = [
    'filename="../../etc/passwd"',
    'filename="/etc/shadow"',
    'filename="..\\\\..\\\\windows\\\\system32\\\\evil.dll"',
    'filename="CON"',
    'filename="con.txt"',
    'filename="nul\\x00byte.txt"',
    'filename="tab\\there\\x07bell.txt"',
    f'filename="{"A" * 5000}.pdf"',
    "filename=\"=?utf-8?q?=2E=2E=2F=2E=2E=2Fencoded.txt?=\"",
    "filename*=utf-8''..%2F..%2F..%2Frfc2231.txt",
    'filename=""',
    'filename="same.txt"',
    'filename="SAME.txt"',
]


def hostile_message() -> bytes:
    parts = [b"From: a@example.org\r\nTo: b@example.org\r\nSubject: names\r\nMessage-ID: <names@x>\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
             b"Content-Type: text/plain\r\n\r\nsee attachments\r\n"]
    for index, disposition in enumerate(HOSTILE_NAMES):
        parts.append(f"--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                     f"{disposition}\r\n\r\npayload {index}\r\n".encode())
    parts.append(b"--XX--\r\n")
    return b"".join(parts)


def test_hostile_attachment_names_stay_inside_the_folder(tmp_path: Path) -> None:
    with POP3TestServer([hostile_message()]) as server:
        sinks = {"files": {"type": "folder", "path": "./out", "layout": "eml", "attachments": True}}
        app = make_app(write_config(tmp_path, server, sinks=sinks, routes=[{"sinks": ["files"]}]))
        report = app.poll("test")
        app.close()
        assert report.clean, report.line()
    out = (tmp_path / "out").resolve()
    saved = [path for path in out.rglob("*") if path.is_file() and path.suffix not in (".eml", ".json")]
    assert len(saved) == len(HOSTILE_NAMES)  # every attachment saved, none overwritten another
    contents = sorted(path.read_bytes() for path in saved)
    assert contents == sorted(f"payload {i}".encode() for i in range(len(HOSTILE_NAMES)))
    for path in saved:
        assert path.resolve().is_relative_to(out)
        assert len(path.name.encode()) <= 255
        assert path.name.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}
        assert not any(ord(ch) < 32 for ch in path.name)
    # nothing escaped: no file appeared outside the sink folder
    assert not (tmp_path / "etc").exists() and not Path("/etc/rfc2231.txt").exists()
    names_lower = [path.name.lower() for path in saved]
    assert len(set(names_lower)) == len(names_lower)
    assert os.path.commonpath([str(p.resolve()) for p in saved] + [str(out)]) == str(out)
