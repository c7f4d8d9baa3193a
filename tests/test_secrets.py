"""Secrets never leak: a full poll at debug level, failures included, searched in every output and file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from popflow.testing import POP3TestServer
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.pipeline import sample_message

PASSWORD = "Pw-7c1f0e-DISTINCTIVE"
HOOK_SECRET = "Hs-93ab55-DISTINCTIVE"
BEARER = "Bt-51d2c8-DISTINCTIVE"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popflow", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(path)
    return hits


def test_no_secret_in_any_output_or_file(tmp_path: Path) -> None:
    env = {"POP3_PASSWORD": PASSWORD, "HOOK_SECRET": HOOK_SECRET, "HOOK_TOKEN": BEARER}
    with POP3TestServer([sample_message(i) for i in range(3)], password=PASSWORD) as server, \
            HttpReceiver() as receiver:
        receiver.script(Reply(503, headers={"Retry-After": "0"}), Reply(410))
        config = {
            "state": "sqlite:///state.db",
            "data_dir": "./data",
            "log_level": "DEBUG",
            "sources": {
                "good": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                         "username": server.username, "password": "${POP3_PASSWORD}", "timeout": "5s"},
                "wrong": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                          "username": server.username, "password": PASSWORD + "-wrong", "timeout": "5s"},
            },
            "sinks": {
                "hook": {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}", "retries": 1,
                         "backoff": "10ms", "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"}},
                "db": {"type": "database", "url": f"sqlite:///{tmp_path}/mail.db", "store_raw": True},
            },
            "routes": [{"sinks": ["hook", "db"]}],
        }
        path = tmp_path / "popflow.yaml"
        path.write_text(yaml.safe_dump(config))
        os.chmod(path, 0o600)
        results = [
            run("-vv", "poll", "-c", str(path), env=env),
            run("-vv", "check", "-c", str(path), env=env),
            run("-vv", "check", "--connect", "-c", str(path), env=env),
            run("-vv", "dead-letters", "list", "-c", str(path), env=env),
            run("-vv", "dead-letters", "replay", "-c", str(path), env=env),
        ]
        assert len(receiver.requests) >= 3  # the webhook really was called, with the bearer header
        posts = [r for r in receiver.requests if r.method == "POST"]
        assert posts and all(r.headers.get("authorization") == f"Bearer {BEARER}" for r in posts)
    poll = results[0]
    assert "DEBUG" in poll.stderr  # debug logging really was on
    assert "wrong" in poll.stdout + poll.stderr  # the failed login is reported...
    for secret in (PASSWORD, HOOK_SECRET, BEARER):
        for result in results:
            assert secret not in result.stdout, (secret, result.args)
            assert secret not in result.stderr, (secret, result.args)
        # ...and nothing on disk holds a secret: state DB, data_dir (dead letters), sink database
        hits = [p for p in files_containing(tmp_path, secret.encode()) if p.name != "popflow.yaml"]
        assert hits == [], (secret, hits)
