"""The operator kit's parts in process: listen addresses, metrics from poll reports, the HTTP server's
rules (escaping, Host check, read-only), ``popflow status`` exit codes, JSON log lines."""

from __future__ import annotations

import http.client
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from popflow.app import App
from popflow.cli import main
from popflow.config import parse_config
from popflow.logs import JsonFormatter, log_fields
from popflow.ops.listen import ListenAddress, parse_listen
from popflow.ops.metrics import PollMetrics, sample
from popflow.ops.server import OpsServer
from popflow.ops.snapshot import RECENT, source_status
from popflow.outcome import Outcome
from popflow.poller import PollReport
from popflow.redact import register_secret
from popflow.scheduler import PollScheduler
from popflow.testing import POP3TestServer
from popflow.testing.samples import make_message

HOSTILE = '<script>alert(1)</script>"onmouseover="x'


@pytest.mark.parametrize(("given", "host", "port"), [
    ("9464", "127.0.0.1", 9464), (":9464", "127.0.0.1", 9464), ("localhost:80", "localhost", 80),
    ("0.0.0.0:9464", "0.0.0.0", 9464), ("[::1]:9000", "::1", 9000), (9464, "127.0.0.1", 9464)])
def test_listen_addresses_default_to_loopback(given: str | int, host: str, port: int) -> None:
    assert parse_listen(given) == ListenAddress(host, port)


@pytest.mark.parametrize("given", ["", "host", "1.2.3.4:99999", "::1:80", "[::1]", "a b:1", "x/y:1"])
def test_bad_listen_addresses_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(given)


def test_http_config_key_is_loopback_by_default() -> None:
    assert parse_config({"http": {}}).http.listen == "127.0.0.1:9464"  # type: ignore[union-attr]
    assert parse_config({"http": {"listen": 9000}}).http.listen == "127.0.0.1:9000"  # type: ignore[union-attr]
    assert parse_config({}).http is None
    assert not ListenAddress("0.0.0.0", 1).is_loopback and ListenAddress("::1", 1).is_loopback


def test_metrics_count_outcomes_statuses_and_up() -> None:
    metrics = PollMetrics(["a"], ["mail"])
    report = PollReport("a")
    for kind in ("delivered", "delivered", "no_route", "dropped", "dead_letter", "deferred"):
        report.counts.add(Outcome(kind))  # type: ignore[arg-type]
    report.counts.skipped, report.counts.newly_skipped = 5, 1
    metrics.observe(report)
    values = metrics.values()
    expected = {"delivered": 2, "no_route": 1, "dropped": 1, "dead_letter": 1, "deferred": 1, "skipped": 1,
                "quarantined": 0}
    assert {outcome: sample(values, "popflow_messages_total", source="a", outcome=outcome)
            for outcome in expected} == expected
    assert sample(values, "popflow_polls_total", source="a", status="partial") == 1
    assert sample(values, "popflow_source_up", source="a") == 1
    failed = PollReport("a", error="login refused")
    metrics.observe(failed)
    values = metrics.values()
    assert sample(values, "popflow_source_up", source="a") == 0
    assert sample(values, "popflow_polls_total", source="a", status="failed") == 1
    assert sample(values, "popflow_poll_duration_seconds_count", source="a") == 2
    assert b'popflow_deliveries_total{result="failed",sink="mail"} 0.0' in metrics.text()


# -- the HTTP server, in process ----------------------------------------------------------------
@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OpsServer]:
    """An OpsServer on a free loopback port for an app whose one source is named hostilely; not polling."""
    config = parse_config({"state": f"sqlite:///{tmp_path / 'state.db'}", "data_dir": str(tmp_path / "data"),
                           "sources": {HOSTILE: {"host": "127.0.0.1", "port": 1, "tls": "none",
                                                 "allow_insecure": True, "username": "u",
                                                 "password": "hunter2-secret"}},
                           "routes": [{"sinks": ["mail"]}],
                           "sinks": {"mail": {"type": "folder", "path": str(tmp_path / "mail")}}})
    app = App(config)
    scheduler = PollScheduler(app)
    server = OpsServer(app, scheduler, ListenAddress("127.0.0.1", 0))
    server.attach()
    server.start()
    yield server
    server.close()
    app.close()


def request(ops: OpsServer, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", ops.port, timeout=10)
    connection.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_status_page_escapes_outside_text_and_shows_no_secret(ops: OpsServer) -> None:
    register_secret("hunter2-secret")
    run = ops.app.state.start_run(HOSTILE)
    ops.app.state.finish_run(run, "failed", {"errors": 1},
                             '<img src=x onerror="alert(2)"> server said hunter2-secret\x1b[2J')
    status, headers, body = request(ops, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script" not in body and "<img" not in body and "\x1b" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover=&quot;x" in body
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt; server said ***\\x1b[2J" in body
    assert "hunter2-secret" not in body
    assert 'http-equiv="refresh"' in body and "http://" not in body.split("</head>")[0]


def test_server_is_read_only_and_answers_only_to_its_own_name(ops: OpsServer) -> None:
    assert request(ops, "/metrics", method="POST")[0] == 405
    assert request(ops, "/", host="evil.example:80")[0] == 403  # DNS rebinding
    assert request(ops, "/readyz", host=f"localhost:{ops.port}")[0] == 200
    assert request(ops, "/nope")[0] == 404
    # Not started: the scheduler is not running, so not healthy; the state store answers: ready.
    assert request(ops, "/healthz")[0] == 503
    assert request(ops, "/readyz")[:3:2] == (200, "ready\n")


# -- popflow status ------------------------------------------------------------------------------
def status_config(tmp_path: Path) -> Path:
    path = tmp_path / "popflow.yaml"
    source = {"host": "127.0.0.1", "port": 1, "tls": "none", "allow_insecure": True, "username": "u",
              "password": "p"}
    path.write_text(yaml.safe_dump({"state": "sqlite:///state.db", "sources": {"good": source, "bad": source,
                                                                               "new": source}}))
    return path


def record(config: Path, source: str, statuses: list[str]) -> None:
    app = App(parse_config(yaml.safe_load(config.read_text()), str(config)).model_copy(
        update={"source_file": config}))
    try:
        for status in statuses:
            run = app.state.start_run(source)
            app.state.finish_run(run, status, {"fetched": 1}, "refused" if status == "failed" else None)
    finally:
        app.close()


def run_status(config: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["status", "-c", str(config), "--json"])
    return result.exit_code, json.loads(result.output) if result.output.startswith("{") else {}


def test_status_exit_codes_and_consecutive_failures(tmp_path: Path) -> None:
    config = status_config(tmp_path)
    assert run_status(config)[0] == 0  # nothing polled yet: nothing failing
    record(config, "good", ["failed", "ok", "partial"])
    record(config, "bad", ["ok", *["failed"] * (RECENT + 10)])
    code, report = run_status(config)
    assert code == 1 and report["failed"] == ["bad"]
    sources = {item["name"]: item for item in report["sources"]}
    assert (sources["good"]["status"], sources["good"]["consecutive_failures"]) == ("partial", 0)
    assert (sources["bad"]["status"], sources["bad"]["consecutive_failures"]) == ("failed", RECENT + 10)
    assert sources["bad"]["last_success"] is not None and sources["bad"]["error"] == "refused"
    assert sources["new"]["status"] == "never" and sources["new"]["last_poll"] is None
    record(config, "bad", ["ok"])
    assert run_status(config)[0] == 0
    text = CliRunner().invoke(main, ["status", "-c", str(config)])
    assert text.exit_code == 0 and "dead letters pending: 0" in text.output
    (tmp_path / "broken.yaml").write_text("sources: [oops\n")
    assert CliRunner().invoke(main, ["status", "-c", str(tmp_path / "broken.yaml")]).exit_code == 2


def test_status_reads_runs_of_a_source_failing_for_long(tmp_path: Path) -> None:
    config = status_config(tmp_path)
    record(config, "bad", ["failed"] * (RECENT + 1))
    app = App(parse_config(yaml.safe_load(config.read_text())).model_copy(update={"source_file": config}))
    try:
        known = source_status(app.state, "bad")
    finally:
        app.close()
    assert (known.consecutive_failures, known.last_success, known.up) == (RECENT + 1, None, False)


# -- JSON logs ------------------------------------------------------------------------------------
def test_json_log_line_has_fields_one_line_and_no_secret() -> None:
    register_secret("sesame-open-42")
    record_ = logging.LogRecord("popflow.test", logging.WARNING, __file__, 1, "bad\nline %s", ("sesame-open-42",),
                                None)
    record_.sink = "archive"
    with log_fields(source="support"):
        line = JsonFormatter().format(record_)
    assert "\n" not in line and "sesame" not in line
    entry = json.loads(line)
    assert entry["message"] == "bad\nline ***" and entry["level"] == "WARNING" and entry["logger"] == "popflow.test"
    assert (entry["source"], entry["sink"]) == ("support", "archive") and entry["time"].endswith("+00:00")


def test_poll_with_log_format_json_from_the_config(tmp_path: Path) -> None:
    with POP3TestServer(messages=[make_message()]) as server:
        config = tmp_path / "popflow.yaml"
        config.write_text(yaml.safe_dump({
            "state": "sqlite:///state.db", "data_dir": "./data", "log_format": "json",
            "sources": {"inbox": {"host": server.host, "port": server.port, "tls": "none", "allow_insecure": True,
                                  "username": server.username, "password": server.password}},
            "routes": [{"sinks": ["mail"]}], "sinks": {"mail": {"type": "folder", "path": "./mail"}}}))
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "noisy.py").write_text(
            "import logging\nfrom popflow import hookimpl\n\n@hookimpl\ndef popflow_transform(message):\n"
            "    logging.getLogger('noisy').warning('looked at %s', message.subject)\n")
        result = subprocess.run([sys.executable, "-m", "popflow", "-v", "--plugins-dir", str(plugins), "poll", "-c",
                                 str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    poll_lines = [entry for entry in entries if entry["message"].startswith("poll inbox:")]
    assert poll_lines and all(entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR"} for entry in entries)
    assert any(entry.get("source") == "inbox" for entry in entries), entries
    [noisy] = [entry for entry in entries if entry["logger"] == "noisy"]
    assert (noisy["source"], noisy["plugin"], noisy["level"]) == ("inbox", "noisy", "WARNING")
    assert noisy["uidl"] and noisy["message"].startswith("looked at ")
    assert server.password not in result.stderr


def test_prometheus_examples_use_metrics_popflow_exports(ops: OpsServer) -> None:
    examples = Path(__file__).resolve().parents[1] / "examples" / "prometheus"
    rules = yaml.safe_load((examples / "popflow-alerts.yml").read_text())["groups"][0]["rules"]
    scrape = yaml.safe_load((examples / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    exported = {line.split()[2] for line in request(ops, "/metrics")[2].splitlines() if line.startswith("# TYPE")}
    used = {name for rule in rules for name in re.findall(r"popflow_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported
    assert {rule["alert"]: rule["for"] for rule in rules}["PopflowSourceFailing"] == "15m"


def test_without_a_scheduler_health_follows_the_stop_flag(ops: OpsServer) -> None:
    worker = OpsServer(ops.app, None, ListenAddress("127.0.0.1", 0), sources=ops.sources)
    assert worker.health() == (200, "ok\n") and worker.metrics.values()
    ops.app.context.stop.set()
    assert worker.health()[0] == 503
