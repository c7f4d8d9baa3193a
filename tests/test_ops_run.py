"""Issue 16's done-when test: a real ``popflow run --http`` process against Dovecot, state on PostgreSQL.

One healthy and one broken source (wrong password); the state database reached through a TCP
proxy the test stops. Checked: the Prometheus metrics, ``/healthz`` and ``/readyz``, the status
page rendered by headless Chromium (its screenshot goes to ``$POPFLOW_SCREENSHOT_DIR`` when set),
``popflow status --json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.support.browser import page_fields, rendered_dom, screenshot
from tests.support.databases import SERVER_URLS, drop_state_tables, require_server
from tests.support.dovecot import DovecotServer, free_port
from tests.support.tcp_proxy import TcpProxy
from tests.test_run import delivered, dovecot_source, mail, wait_until, write_config

pytestmark = pytest.mark.timeout(240)
WRONG_PASSWORD = "not-the-password-4711"


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser."""
    status, body = get(base + "metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def state_proxy() -> object:
    require_server("postgresql")
    url = SERVER_URLS["postgresql"]
    drop_state_tables(url)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.stop()
    drop_state_tables(url)


def test_run_http_metrics_status_page_and_readiness(dovecot: DovecotServer, tmp_path: Path,
                                                    state_proxy: tuple[TcpProxy, str]) -> None:
    proxy, state_url = state_proxy
    for n in range(3):
        dovecot.deliver(mail(n))
    config = write_config(tmp_path, {"healthy": dovecot_source(dovecot),
                                     "broken": dovecot_source(dovecot, password=WRONG_PASSWORD)}, state=state_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "popflow", "run", "-c", str(config), "--http",
                                 f"127.0.0.1:{port}"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        def counted() -> bool:
            try:
                samples = metrics(base)
            except OSError:
                return False
            return (value(samples, "popflow_messages_total", source="healthy", outcome="delivered") == 3
                    and (value(samples, "popflow_polls_total", source="broken", status="failed") or 0) >= 2)
        wait_until(counted, timeout=60, what="3 deliveries and 2 failed polls in /metrics")
        samples = metrics(base)
        assert delivered(tmp_path) == 3
        assert value(samples, "popflow_source_up", source="healthy") == 1
        assert value(samples, "popflow_source_up", source="broken") == 0
        assert value(samples, "popflow_polls_total", source="healthy", status="failed") == 0
        assert (value(samples, "popflow_polls_total", source="healthy", status="ok") or 0) >= 1
        assert value(samples, "popflow_deliveries_total", sink="mail", result="delivered") == 3
        assert value(samples, "popflow_messages_total", source="broken", outcome="delivered") == 0
        assert (value(samples, "popflow_poll_duration_seconds_count", source="healthy") or 0) >= 1
        assert (value(samples, "popflow_last_success_timestamp_seconds", source="healthy") or 0) > time.time() - 120
        assert value(samples, "popflow_last_success_timestamp_seconds", source="broken") is None  # never succeeded
        assert value(samples, "popflow_dead_letters_pending") == 0
        assert value(samples, "popflow_quarantine_held") == 0
        assert value(samples, "popflow_state_up") == 1
        assert get(base + "healthz")[0] == 200
        assert get(base + "readyz") == (200, "ready\n")

        # popflow status, from the same state store, as another process (cron, Nagios).
        status = subprocess.run([sys.executable, "-m", "popflow", "status", "-c", str(config), "--json"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert status.returncode == 1, status.stderr
        report = {item["name"]: item for item in json.loads(status.stdout)["sources"]}
        assert report["healthy"]["status"] == "ok" and report["healthy"]["consecutive_failures"] == 0
        assert report["broken"]["status"] == "failed" and report["broken"]["consecutive_failures"] >= 2
        assert report["broken"]["last_success"] is None and report["broken"]["error"]
        assert WRONG_PASSWORD not in status.stdout + status.stderr

        # The status page, in a real browser: both sources, values matching the metrics.
        shot = screenshot(base, Path(os.environ.get("POPFLOW_SCREENSHOT_DIR") or tmp_path) / "status-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        dom = rendered_dom(base)
        page = page_fields(dom)
        samples = metrics(base)
        assert set(page.rows) == {"healthy", "broken"}
        healthy, broken = page.rows["healthy"], page.rows["broken"]
        assert (healthy["status"], healthy["up"]) == ("ok", "up")
        assert (broken["status"], broken["up"]) == ("failed", "down")
        assert healthy["delivered_total"] == "3"
        failed_polls = int(broken["polls"].split(" failed")[0].rsplit("/ ", 1)[1])
        assert failed_polls <= value(samples, "popflow_polls_total", source="broken", status="failed")  # type: ignore[operator]
        assert failed_polls >= 2 and int(broken["consecutive_failures"]) >= 2
        assert broken["error"] and healthy["error"] == ""
        assert healthy["schedule"] == "every 1s"
        assert page.fields["dead_letters_pending"] == "0" and page.fields["quarantine_held"] == "0"
        assert WRONG_PASSWORD not in dom and dovecot.password not in dom

        # The state database becomes unreachable: not ready (with the reason), still alive.
        proxy.stop()
        wait_until(lambda: get(base + "readyz")[0] == 503, timeout=30, what="/readyz to report 503")
        code, reason = get(base + "readyz")
        assert code == 503 and "state store" in reason and str(proxy.port) in reason
        assert get(base + "healthz")[0] == 200
        down = metrics(base)
        assert value(down, "popflow_state_up") == 0
        assert value(down, "popflow_dead_letters_pending") is None
        assert "state store" in page_fields(get(base)[1]).fields["state"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log_text = log_path.read_text(errors="replace")
    assert f"serving metrics, health and status on {base}" in log_text
    assert WRONG_PASSWORD not in log_text
