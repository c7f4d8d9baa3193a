"""Secrets never leak: a full poll at debug level, failures included, searched in every output and file."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

from popflow.testing import FaultScript, POP3TestServer
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


# -- every form of a secret: traces, echoing servers, failing token commands ----------------------
URL_PASSWORD = "Up:3f/9+DISTINCTIVE"  # percent-encoded in the URL's userinfo
URL_TOKEN = "Ut-0d2e44-DISTINCTIVE"
CLIENT_SECRET = "Cs-6b7a10-DISTINCTIVE"


def forms(secret: str) -> set[str]:
    """How a secret can show up: as is, URL-encoded, base64."""
    return {secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()}


def assert_nowhere(needles: set[str], results: list[subprocess.CompletedProcess[str]], root: Path) -> None:
    """No needle in any stdout/stderr, nor in any file under ``root`` but the config itself."""
    for needle in needles:
        for result in results:
            assert needle not in result.stdout, (needle, result.args)
            assert needle not in result.stderr, (needle, result.args)
        hits = [p for p in files_containing(root, needle.encode()) if p.name != "popflow.yaml"]
        assert hits == [], (needle, hits)


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "popflow.yaml"
    path.write_text(yaml.safe_dump({"state": "sqlite:///state.db", "data_dir": "./data", **config}))
    os.chmod(path, 0o600)
    return path


def run_errors(tmp_path: Path) -> list[str]:
    """``popflow_runs.error`` of every recorded poll."""
    with sqlite3.connect(tmp_path / "state.db") as db:
        return [row[0] for row in db.execute("select error from popflow_runs where error is not null")]


def test_plugin_trace_shows_no_secret(tmp_path: Path) -> None:
    # POPFLOW_TRACE_PLUGINS=1 logs the config handed to popflow_startup: its repr masks them.
    env = {"POP3_PASSWORD": PASSWORD, "HOOK_SECRET": HOOK_SECRET, "URL_TOKEN": URL_TOKEN,
           "POPFLOW_TRACE_PLUGINS": "1"}
    url = f"http://hookuser:{quote(URL_PASSWORD, safe='')}@127.0.0.1:9/hook?token=${{URL_TOKEN}}&v=1"
    path = write(tmp_path, {
        "sources": {"box": {"host": "127.0.0.1", "port": 9, "tls": "none", "allow_insecure": True,
                            "username": "user", "password": "${POP3_PASSWORD}"}},
        "sinks": {"hook": {"type": "webhook", "url": url, "secret": "${HOOK_SECRET}"}},
        "routes": [{"sinks": ["hook"]}],
    })
    results = [run("-vv", "check", "-c", str(path), env=env), run("-vv", "poll", "-c", str(path), env=env)]
    assert "hook trace" in results[0].stderr and "popflow_startup" in results[0].stderr  # tracing was on
    assert "127.0.0.1:9/hook" in results[0].stderr  # the URL is shown, without its credentials
    assert_nowhere(set().union(*(forms(s) for s in (PASSWORD, HOOK_SECRET, URL_PASSWORD, URL_TOKEN))),
                   results, tmp_path)


@pytest.mark.parametrize("mechanism", ["plain", "xoauth2"])
def test_server_echoing_the_sasl_response_leaks_nothing(tmp_path: Path, mechanism: str) -> None:
    # The server answers "-ERR bad <the base64 response we sent>": the refusal is reported (in the
    # log, the summary and popflow_runs.error) without the credential in any form.
    faults = FaultScript().on("AUTH", echo="bad")
    env = {"POP3_PASSWORD": PASSWORD, "POP3_TOKEN": BEARER}
    with POP3TestServer([sample_message(0)], password=PASSWORD, faults=faults) as server:
        secret = {"password": "${POP3_PASSWORD}"} if mechanism == "plain" else \
            {"oauth2_token_command": "printf %s ${POP3_TOKEN}"}
        path = write(tmp_path, {
            "sources": {"box": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                                "username": server.username, "auth": mechanism, "timeout": "5s", **secret}},
            "sinks": {"db": {"type": "database", "url": f"sqlite:///{tmp_path}/mail.db"}},
            "routes": [{"sinks": ["db"]}],
        })
        results = [run("-vv", "poll", "-c", str(path), env=env),
                   run("-vv", "check", "--connect", "-c", str(path), env=env)]
        assert faults.rules[0].fired == 2  # the server really did echo, in both runs
    assert results[0].returncode == 1 and "refused: bad ***" in results[0].stderr
    assert [error for error in run_errors(tmp_path) if "bad ***" in error]  # the row was written, scrubbed
    sent = (f"\0{server.username}\0{PASSWORD}" if mechanism == "plain"
            else f"user={server.username}\x01auth=Bearer {BEARER}\x01\x01")
    needles = forms(PASSWORD) | forms(BEARER) | {base64.b64encode(sent.encode()).decode()}
    assert_nowhere(needles, results, tmp_path)


def test_failing_token_command_shows_no_expanded_secret(tmp_path: Path) -> None:
    # One command fails and prints its argument back; the other cannot even start (its argv names
    # the secret). Neither error shows the command as expanded.
    env = {"CLIENT_SECRET": CLIENT_SECRET, "COLUMNS": "400"}  # wide: table cells are not wrapped
    with POP3TestServer([sample_message(0)]) as server:
        common = {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                  "username": server.username, "auth": "xoauth2", "timeout": "5s"}
        path = write(tmp_path, {
            "sources": {
                "shell": {**common, "oauth2_token_command":
                          'echo "invalid_client: client_secret=${CLIENT_SECRET}" >&2; exit 3'},
                "argv": {**common, "oauth2_token_command":
                         ["/nonexistent/get-token", "--client-secret", "${CLIENT_SECRET}"]},
            },
            "sinks": {"db": {"type": "database", "url": f"sqlite:///{tmp_path}/mail.db"}},
            "routes": [{"sinks": ["db"]}],
        })
        results = [run("-vv", "poll", "-c", str(path), env=env),
                   run("-vv", "check", "--connect", "-c", str(path), env=env)]
    for result in results:
        output = result.stdout + result.stderr
        assert "sources.shell.oauth2_token_command exited with status 3: invalid_client: client_secret=***" in output
        assert "cannot run sources.argv.oauth2_token_command" in output
    assert len(run_errors(tmp_path)) == 2
    assert_nowhere(forms(CLIENT_SECRET), results, tmp_path)


def test_error_text_is_scrubbed_where_it_is_described() -> None:
    """popflow_runs.error, dead-letter records and `check` get their text from describe_error."""
    from popflow.errors import SourceFatalError, describe_error
    from popflow.redact import _clear_for_tests, register_secret

    secret = "Er-4e1d77-DISTINCTIVE"
    register_secret(secret)
    try:
        encoded = base64.b64encode(secret.encode()).decode()
        text = describe_error(SourceFatalError(f"server said: -ERR bad {secret} / {encoded}"))
        assert secret not in text
        assert encoded not in text
        assert text == "server said: -ERR bad *** / ***"
    finally:
        _clear_for_tests()


def test_a_secret_too_short_to_mask_is_reported_without_its_value(caplog: pytest.LogCaptureFixture) -> None:
    from popflow.redact import _clear_for_tests, register_secret

    _clear_for_tests()
    with caplog.at_level("WARNING", logger="popflow.redact"):
        register_secret("q7z")
    warnings = [record.getMessage() for record in caplog.records]
    assert any("only 3 character(s) long" in message for message in warnings)
    assert not any("q7z" in message for message in warnings)
