"""A one-service inetd: accept on a loopback port, start a program per connection on the socket.

For real POP3 servers that only run from inetd (popa3d, solid-pop3d): each accepted connection gets
its own process, with the socket as its stdin and stdout and ``log_path`` as its stderr, in its own
session (so :meth:`InetdListener.stop` can kill what it started, and nothing else). Used by
``tests/support/popa3d.py`` and by the interop suite (``interop/servers.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class InetdListener:
    """Starts ``command`` (with ``env``) for every connection to ``127.0.0.1:port``; see the module docstring."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = 0
    _listener: socket.socket | None = field(default=None, repr=False)
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> InetdListener:
        """Bind a free loopback port (``self.port``) and accept in a thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="inetd-accept", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._listener is not None
        with open(self.log_path, "ab") as log:
            while not self._stopping.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn, self._guard:
                    conn.setblocking(True)
                    self._children = [c for c in self._children if c.poll() is None]
                    self._children.append(subprocess.Popen(
                        self.command, stdin=conn.fileno(), stdout=conn.fileno(), stderr=log, cwd="/",
                        env=self.env, close_fds=True, start_new_session=True))

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until no session runs (servers rewrite their store as a session ends); TimeoutError if one lingers."""
        deadline = time.monotonic() + timeout
        while True:
            with self._guard:
                running = [c for c in self._children if c.poll() is None]
            if not running:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions still running after {timeout} s: {[c.pid for c in running]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop accepting; give running sessions 5 s to end, then kill their process groups."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.wait_idle(timeout=5)
        except TimeoutError:
            with self._guard:
                for child in self._children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait(timeout=5)
