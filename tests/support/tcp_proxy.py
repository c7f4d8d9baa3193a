"""A TCP forwarder on loopback that a test can stop: a database "becoming unreachable" on a real socket.

    proxy = TcpProxy("127.0.0.1", 5432).start()   # listens on proxy.port, forwards to 127.0.0.1:5432
    proxy.stop()                                 # closes the listener and every forwarded connection

After ``stop()`` a new connection to ``proxy.port`` is refused, and connections open through it are cut.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards every connection on a free loopback port to ``(host, port)``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> TcpProxy:
        """Accept connections in a daemon thread."""
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._stopped.is_set():  # accepted just before stop(): cut it like the others
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            self._serve(client, upstream)

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward both ways (subclasses watch or cut the stream here)."""
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()
