"""The HTTP side of ``popflow run --http ADDR``: ``/metrics``, ``/healthz``, ``/readyz`` and the status page ``/``.

Small on purpose: the standard library's threading HTTP server in a daemon thread, read-only
(GET and HEAD only), no external assets. Bound to loopback, it also refuses requests whose
``Host`` header names another host, so a web page the operator visits cannot read it through a
DNS-rebinding trick.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from popflow.ops.listen import ListenAddress
from popflow.ops.metrics import DeliveryEvents, PollMetrics, StateGauges
from popflow.ops.probe import StateProbe, StateUnavailable
from popflow.ops.snapshot import source_status

if TYPE_CHECKING:
    from popflow.app import App
    from popflow.scheduler import PollScheduler

log = logging.getLogger(__name__)

PAGE_HEADERS = {
    # No script, no outside resource, no framing: the page is inert text with inline styles.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class OpsServer:
    """Metrics and health of one popflow process, served over HTTP.

    ``popflow run`` passes its scheduler (health follows it; the page shows schedules and next
    polls). A process that polls without one (a Celery worker) passes ``scheduler=None`` and the
    ``sources`` it may poll: it is healthy until it stops.
    """

    def __init__(self, app: App, scheduler: PollScheduler | None, address: ListenAddress,
                 sources: list[str] | None = None) -> None:
        self.app = app
        self.scheduler = scheduler
        self.sources = list(sources if sources is not None else scheduler.sources if scheduler else [])
        self.address = address
        self.started_at = time.time()
        self.probe = StateProbe(app.state)
        self.metrics = PollMetrics(self.sources, app.sink_configs)
        self.metrics.registry.register(StateGauges(self.probe))
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        """Start counting: seed from the state store, observe every poll and delivery. Call before polling."""
        for name in self.sources:
            try:
                known = source_status(self.app.state, name)
            except Exception as exc:  # metrics start empty; polling is what matters
                log.warning("metrics: cannot read the last status of %s: %s", name, exc)
                continue
            if known.status != "never":
                self.metrics.seed(name, known.up, known.last_success.timestamp() if known.last_success else None)
        self.app.poll_observers.append(self.metrics.observe)
        self.app.pm.register(DeliveryEvents(self.metrics), name="popflow-metrics")

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        self._httpd = server_class((self.address.host, self.address.port), _Handler)
        self._httpd.ops = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="popflow-http", daemon=True)
        self._thread.start()
        log.info("serving metrics, health and status on %s", self.url)
        if not self.address.is_loopback:
            log.warning("the status server listens on %s, not loopback: anyone who reaches it can read source "
                        "names, errors and counts (never secrets); firewall it", self.address)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for port 0)."""
        return int(self._httpd.server_address[1]) if self._httpd else self.address.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT/``."""
        return f"http://{ListenAddress(self.address.host, self.port)}/"

    def close(self) -> None:
        """Stop serving."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- answers ------------------------------------------------------------------------------
    def health(self) -> tuple[int, str]:
        """``/healthz``: 200 while the scheduler (if any) runs and the process is not stopping."""
        if self.app.context.stop.is_set():
            return 503, "stopping\n"
        if self.scheduler is not None and not self.scheduler.scheduler.running:
            return 503, "the scheduler is not running\n"
        return 200, "ok\n"

    def readiness(self) -> tuple[int, str]:
        """``/readyz``: 200 when the state store answers, else 503 with the reason."""
        try:
            self.probe.ping()
        except StateUnavailable as exc:
            return 503, f"not ready: {exc}\n"
        return 200, "ready\n"

    def page(self) -> str:
        """``/``: the status page."""
        from popflow.ops.page import status_page

        return status_page(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ops: OpsServer


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "popflow"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        ops = self.server.ops
        if not self._host_allowed(ops.address):
            self._send(HTTPStatus.FORBIDDEN, b"this server answers only to its own address\n", head=head)
            return
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, ops.metrics.text(), CONTENT_TYPE_LATEST, head=head)
            elif path == "/healthz":
                status, body = ops.health()
                self._send(status, body.encode(), head=head)
            elif path == "/readyz":
                status, body = ops.readiness()
                self._send(status, body.encode(), head=head)
            elif path in ("/", "/index.html"):
                self._send(200, ops.page().encode("utf-8"), "text/html; charset=utf-8", head=head,
                           headers=PAGE_HEADERS)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found: try /, /metrics, /healthz or /readyz\n", head=head)
        except Exception:
            log.exception("the status server failed to answer %s", path[:100])
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error (see popflow's log)\n", head=head)

    def _host_allowed(self, address: ListenAddress) -> bool:
        host = self.headers.get("Host")
        if host is None or not address.is_loopback:
            return True
        name = host.strip().lower()
        name = name[: name.find("]") + 1] if name.startswith("[") else name.rsplit(":", 1)[0]
        return name in LOOPBACK_NAMES or name == str(address.host).lower()

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *, head: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_POST(self) -> None:  # read-only: every other method is refused
        self._refuse()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: %s", self.address_string(), format % args)
