"""A raw-socket POP3 server for tests that need a server to misbehave in ways a real one might.

Unlike :class:`popflow.testing.POP3TestServer` (a careful RFC 1939 model), this one serves whatever
it is told: UIDLs as arbitrary bytes (duplicates, non-ASCII, NUL, too long), sizes that are lies,
and any command answered by a scripted function (an endless body, a trickle, a reply that never
ends). Deletions apply at QUIT, like a real maildrop, and the mailbox survives between sessions.

::

    server = ScriptedPop3([Entry(b"1", raw1), Entry(b"1", raw2)])   # one UIDL listed twice
    with server:
        ...  # config: host 127.0.0.1, port server.port, tls none, allow_insecure, user "u", pass "p"
    server.remaining()  # the entries left after the sessions' QUITs
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from popflow.testing.mailbox import to_wire
from popflow.testing.pop3_server_session import stuff


@dataclass
class Entry:
    """One message on the scripted server; ``listed_size`` overrides the size LIST announces."""

    uidl: bytes
    raw: bytes
    listed_size: bytes | None = None

    @property
    def wire(self) -> bytes:
        return to_wire(self.raw)

    def list_size(self) -> bytes:
        return self.listed_size if self.listed_size is not None else str(len(self.wire)).encode()


Handler = Callable[["ScriptedSession", list[bytes]], "bytes | Iterable[bytes] | None"]
"""A scripted command: returns the reply bytes (or chunks, sent one by one), or None for the default."""


@dataclass
class ScriptedSession:
    """One client connection: the entries it sees and the numbers it marked deleted."""

    server: ScriptedPop3
    entries: list[Entry]
    out: BinaryIO
    deleted: set[int] = field(default_factory=set)

    def body(self, data: bytes) -> bytes:
        """``+OK`` + dot-stuffed ``data`` + terminator."""
        return b"+OK\r\n" + stuff(data)


class ScriptedPop3:
    """A threaded POP3 server on 127.0.0.1 serving :class:`Entry` objects; see the module docstring."""

    def __init__(self, entries: Iterable[Entry] = (), *, capabilities: Iterable[bytes] = (b"UIDL", b"TOP", b"USER"),
                 handlers: dict[bytes, Handler] | None = None) -> None:
        self.entries = list(entries)
        self.capabilities = list(capabilities)
        self.handlers = dict(handlers or {})
        self.commands: list[bytes] = []
        self.sessions = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self.username, self.password = "u", "p"  # any login is accepted
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- control -------------------------------------------------------------------------------
    def __enter__(self) -> ScriptedPop3:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def add(self, entry: Entry) -> None:
        with self._lock:
            self.entries.append(entry)

    def remaining(self) -> list[Entry]:
        with self._lock:
            return list(self.entries)

    def config(self, **extra: object) -> dict[str, object]:
        """A ``sources:`` entry for popflow pointing at this server."""
        return {"type": "pop3", "host": self.host, "port": self.port, "tls": "none", "allow_insecure": True,
                "username": "u", "password": "p", "auth": "user", "timeout": 5, **extra}

    # -- serving -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader, conn.makefile("wb", buffering=0) as out:
            with self._lock:
                self.sessions += 1
                session = ScriptedSession(self, list(self.entries), out)
            try:
                out.write(b"+OK scripted POP3 ready\r\n")
                for line in reader:
                    words = line.strip().split(b" ")
                    command, args = words[0].upper(), words[1:]
                    with self._lock:
                        self.commands.append(line.strip())
                    if self._answer(session, command, args):
                        return
            except OSError:
                return

    def _answer(self, session: ScriptedSession, command: bytes, args: list[bytes]) -> bool:
        """Send the reply to one command; True when the session ends."""
        handler = self.handlers.get(command)
        reply = handler(session, args) if handler else None
        if reply is None:
            reply = self._default(session, command, args)
        for chunk in [reply] if isinstance(reply, bytes) else reply:
            session.out.write(chunk)
        if command == b"QUIT":
            with self._lock:
                doomed = {id(session.entries[n - 1]) for n in session.deleted}
                self.entries = [e for e in self.entries if id(e) not in doomed]
            return True
        return False

    def _default(self, session: ScriptedSession, command: bytes, args: list[bytes]) -> bytes:
        live = [(n, e) for n, e in enumerate(session.entries, 1) if n not in session.deleted]
        if command in (b"USER", b"PASS", b"NOOP", b"RSET", b"QUIT"):
            if command == b"RSET":
                session.deleted.clear()
            return b"+OK\r\n"
        if command == b"CAPA":
            return b"+OK\r\n" + b"".join(c + b"\r\n" for c in self.capabilities) + b".\r\n"
        if command == b"STAT":
            return b"+OK %d %d\r\n" % (len(live), sum(len(e.wire) for _, e in live))
        if command == b"LIST" and not args:
            return b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n, e.list_size()) for n, e in live) + b".\r\n"
        if command == b"UIDL" and not args:
            return b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n, e.uidl) for n, e in live) + b".\r\n"
        found = self._message(session, args)
        if found is None:
            return b"-ERR no such message\r\n"
        number, entry = found
        if command == b"RETR":
            return session.body(entry.wire)
        if command == b"TOP":
            head, _, _ = entry.wire.partition(b"\r\n\r\n")
            return session.body(head + b"\r\n\r\n")
        if command == b"DELE":
            session.deleted.add(number)
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"

    @staticmethod
    def _message(session: ScriptedSession, args: list[bytes]) -> tuple[int, Entry] | None:
        try:
            number = int(args[0])
        except (IndexError, ValueError):
            return None
        if 1 <= number <= len(session.entries) and number not in session.deleted:
            return number, session.entries[number - 1]
        return None

