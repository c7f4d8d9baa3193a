"""A scriptable HTTP receiver on 127.0.0.1 for testing webhook deliveries.

A threaded :mod:`http.server` (HTTP/1.1, keep-alive) on an ephemeral port. Each request takes the
next scripted :class:`Reply` (then the default one) and is recorded with its headers and body::

    with HttpReceiver() as receiver:
        receiver.script(Reply(503, {"Retry-After": "0"}), Reply(200))
        ...post to receiver.url...
        assert receiver.requests[0].headers["idempotency-key"]

``Reply(hang=True)`` never answers (until the receiver stops); ``Reply(delay=...)`` answers late;
``Reply(drop=True)`` closes the connection without an answer. Pass an ``ssl.SSLContext`` to serve
HTTPS (e.g. from ``trustme``).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """How to answer one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering."""
    hang: bool = False
    """Never answer: hold the request until the receiver stops."""
    drop: bool = False
    """Close the connection without sending anything."""


@dataclass
class RecordedRequest:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case (the last value wins for repeated headers)."""
    body: bytes
    received_at: float
    """``time.monotonic()`` when the request was read."""
    reply: Reply

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class HttpReceiver:
    """A scriptable, recording HTTP(S) server on ``127.0.0.1:<ephemeral port>``."""

    def __init__(self, default: Reply | None = None, ssl_context: ssl.SSLContext | None = None,
                 on_request: Callable[[RecordedRequest], None] | None = None) -> None:
        self.default = default or Reply()
        self.requests: list[RecordedRequest] = []
        self.on_request = on_request
        """Called with each request before it is answered (e.g. to verify its signature)."""
        self.errors: list[BaseException] = []
        """Exceptions raised by ``on_request``; tests should assert this stays empty."""
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if ssl_context is not None else "http"
        # A short poll interval keeps stop() (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="http-receiver", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL plus ``/hook``."""
        host = "localhost" if self._scheme == "https" else "127.0.0.1"
        return f"{self._scheme}://{host}:{self.port}/hook"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def bodies(self) -> list[Any]:
        """Every request body parsed as JSON."""
        return [request.json() for request in self.requests]

    def start(self) -> HttpReceiver:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging requests and stop the server."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = receiver._next_reply()
                request = RecordedRequest(
                    method=self.command, path=self.path,
                    headers={key.lower(): value for key, value in self.headers.items()},
                    body=body, received_at=time.monotonic(), reply=reply,
                )
                with receiver._lock:
                    receiver.requests.append(request)
                if receiver.on_request is not None:
                    try:
                        receiver.on_request(request)
                    except BaseException as exc:  # recorded for the test to assert on
                        receiver.errors.append(exc)
                if reply.hang:
                    receiver._stopping.wait()
                    self.close_connection = True
                    return
                if reply.delay:
                    receiver._stopping.wait(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_POST = do_GET = do_PUT = do_HEAD = _handle

        return Handler
