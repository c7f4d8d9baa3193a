"""A loopback TCP proxy in front of Dovecot's plain IMAP port that records and can cut the stream.

It sees the protocol in clear (use the source's ``tls: none`` + ``allow_insecure``), so a test can

* count the commands a client sent (``proxy.commands(b"IDLE")``: how often an IDLE was issued),
* cut a connection part-way through a response: ``cut_after(b"BODY.PEEK[]", 5000)`` closes the first
  connection that sends a command containing ``BODY.PEEK[]`` once 5,000 bytes of the server's answer
  to it have been forwarded (a network failure mid-FETCH, at an exact place), or
* ``drop_all()``: cut every open connection (the watcher must reconnect).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.support.tcp_proxy import TcpProxy


@dataclass
class _Cut:
    marker: bytes
    after: int
    skip: int = 0
    armed: bool = True
    done: threading.Event = field(default_factory=threading.Event)


class ImapProxy(TcpProxy):
    """Forwards connections on a free loopback port to ``(host, port)``, recording client bytes."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.sent = bytearray()
        """Everything every client sent, in order."""
        self.connections = 0
        self._cut: _Cut | None = None

    def __enter__(self) -> ImapProxy:
        return self.start()  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def commands(self, word: bytes) -> int:
        """How many client lines were the command ``word`` (after the tag), e.g. ``b"IDLE"``."""
        with self._lock:
            lines = bytes(self.sent).split(b"\r\n")
        return sum(1 for line in lines if line.split(b" ", 1)[-1].upper() == word.upper())

    def cut_after(self, marker: bytes, after: int, skip: int = 0) -> threading.Event:
        """Cut the connection whose client sends ``marker`` (the first time, or after ``skip`` more
        times) once ``after`` bytes of the answer have been forwarded; the event is set at the cut."""
        self._cut = _Cut(marker, after, skip)
        return self._cut.done

    def drop_all(self) -> None:
        """Close every open connection (both sides); new ones are still accepted."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        _close(*sockets)

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        state = {"watching": False, "forwarded": 0}
        threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
        threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    self.sent += data
                cut = self._cut
                if cut is not None and cut.armed and cut.marker in data:
                    if cut.skip:
                        cut.skip -= 1
                    else:
                        cut.armed = False
                        state["watching"] = True
                upstream.sendall(data)
        _close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(4096):
                cut = self._cut
                if state["watching"] and cut is not None:
                    forwarded = int(state["forwarded"])  # type: ignore[call-overload]
                    room = cut.after - forwarded
                    if len(data) >= room:
                        client.sendall(data[:room])
                        _close(client, upstream)
                        cut.done.set()
                        return
                    state["forwarded"] = forwarded + len(data)
                client.sendall(data)
        _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
