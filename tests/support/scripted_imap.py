"""A raw-socket IMAP server for tests that need a server to misbehave in ways a real one might.

It speaks just enough IMAP4rev1 for popflow's IMAP source (CAPABILITY, LOGIN, SELECT, UID FETCH
of the listing, of ``BODY.PEEK[]`` and of ``BODY.PEEK[HEADER]``, UID STORE, UID COPY, UID EXPUNGE,
IDLE, LOGOUT; no MOVE) over one folder, and lets a test replace the answer to any command with
whatever bytes it likes: an endless line, a literal of a terabyte, a response that never ends,
absurd UIDs, EXISTS storms.
What was expunged survives between sessions, so "no message lost" can be checked on the server.

::

    server = ScriptedImap({1: raw1, 2: raw2})
    server.script["SELECT"] = lambda session, tag: [b"* 4294967295 EXISTS\\r\\n", ...]
    with server:
        ...  # config: host 127.0.0.1, port server.port, tls none, allow_insecure, user "u", pass "p"
    server.messages  # what is left on the server
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

Answer = Callable[["ImapConn", bytes, bytes], "bytes | Iterable[bytes] | None"]
"""``(connection, tag, arguments) -> bytes or chunks to send`` (None: the normal answer)."""

_UIDS = re.compile(rb"UID (FETCH|STORE|EXPUNGE|COPY) ([0-9:,*]+)", re.IGNORECASE)


@dataclass
class ImapConn:
    """One client connection."""

    server: ScriptedImap
    out: BinaryIO
    flagged: set[int] = field(default_factory=set)

    def send(self, data: bytes | Iterable[bytes]) -> None:
        for chunk in [data] if isinstance(data, bytes) else data:
            self.out.write(chunk)
            self.out.flush()


def uids_in(spec: bytes, known: Iterable[int]) -> list[int]:
    """The UIDs a sequence set such as ``1:3,7`` or ``1:*`` names among ``known``."""
    found: set[int] = set()
    present = sorted(known)
    for part in spec.split(b","):
        low, _, high = part.partition(b":")
        top = max(present, default=0)
        first = top if low == b"*" else int(low)
        last = first if not high else (top if high == b"*" else int(high))
        found |= {uid for uid in present if min(first, last) <= uid <= max(first, last)}
    return sorted(found)


class ScriptedImap:
    """The server; ``script`` maps a command name (``SELECT``, ``FETCH-LIST``, ``FETCH-BODY``,
    ``IDLE``, ``GREETING``, …) to an :data:`Answer` that replaces its normal answer."""

    def __init__(self, messages: dict[int, bytes], uidvalidity: int = 7) -> None:
        self.messages = dict(messages)
        self.uidvalidity = uidvalidity
        self.script: dict[str, Answer] = {}
        self.commands: list[bytes] = []
        self.copied: list[tuple[bytes, bytes]] = []
        """(target folder argument, message) of every ``UID COPY``."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []

    def __enter__(self) -> ScriptedImap:
        threading.Thread(target=self._accept, daemon=True, name="scripted-imap").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for sock in self._conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError), sock, sock.makefile("rb") as rfile, \
                sock.makefile("wb") as wfile:
            conn = ImapConn(self, wfile)
            self._answer(conn, "GREETING", b"*", b"", [b"* OK scripted IMAP ready\r\n"])
            while line := rfile.readline(1 << 20):
                self.commands.append(line)
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                verb, _, args = rest.partition(b" ")
                if not self._command(conn, rfile, tag, verb.upper(), args):
                    return

    def _answer(self, conn: ImapConn, name: str, tag: bytes, args: bytes, normal: Iterable[bytes]) -> None:
        scripted = self.script.get(name)
        answer = scripted(conn, tag, args) if scripted else None
        conn.send(list(normal) if answer is None else answer)

    def _command(self, conn: ImapConn, rfile: BinaryIO, tag: bytes, verb: bytes, args: bytes) -> bool:
        ok = tag + b" OK done\r\n"
        if verb == b"CAPABILITY":
            self._answer(conn, "CAPABILITY", tag, args, [b"* CAPABILITY IMAP4rev1 IDLE UIDPLUS\r\n", ok])
        elif verb in (b"LOGIN", b"NOOP"):
            self._answer(conn, verb.decode(), tag, args, [ok])
        elif verb == b"SELECT":
            self._answer(conn, "SELECT", tag, args, [
                b"* %d EXISTS\r\n" % len(self.messages),
                b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % self.uidvalidity, tag + b" OK [READ-WRITE] done\r\n"])
        elif verb == b"UID":
            self._uid_command(conn, tag, verb + b" " + args)
        elif verb == b"IDLE":
            self._answer(conn, "IDLE", tag, args, [b"+ idling\r\n"])
            rfile.readline(1 << 20)  # DONE
            conn.send(ok)
        elif verb == b"LOGOUT":
            conn.send([b"* BYE bye\r\n", ok])
            return False
        else:
            conn.send(tag + b" BAD unknown command\r\n")
        return True

    def _uid_command(self, conn: ImapConn, tag: bytes, line: bytes) -> None:
        found = _UIDS.search(line)
        assert found, line
        word, uids = found.group(1).upper(), uids_in(found.group(2), self.messages)
        ok = tag + b" OK done\r\n"
        if word == b"FETCH" and b"RFC822.SIZE" in line:
            normal = [b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS (%s))\r\n"
                      % (n, uid, len(self.messages[uid]), b"\\Deleted" if uid in conn.flagged else b"")
                      for n, uid in enumerate(uids, 1)]
            self._answer(conn, "FETCH-LIST", tag, line, [*normal, ok])
        elif word == b"FETCH":
            part = b"HEADER" if b"[HEADER]" in line else b""
            normal = []
            for n, uid in enumerate(uids, 1):
                data = self.messages[uid].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if part else self.messages[uid]
                normal.append(b"* %d FETCH (UID %d BODY[%s] {%d}\r\n%s)\r\n" % (n, uid, part, len(data), data))
            self._answer(conn, "FETCH-HEADER" if part else "FETCH-BODY", tag, line, [*normal, ok])
        elif word == b"COPY":
            target = line.rsplit(b" ", 1)[1]
            self.copied += [(target, self.messages[uid]) for uid in uids]
            self._answer(conn, "COPY", tag, line, [ok])
        elif word == b"STORE":
            conn.flagged |= set(uids)
            self._answer(conn, "STORE", tag, line, [ok])
        else:  # EXPUNGE: only what this session flagged, by UID
            gone = [uid for uid in uids if uid in conn.flagged]
            for uid in gone:
                self.messages.pop(uid, None)
            self._answer(conn, "EXPUNGE", tag, line, [*(b"* 1 EXPUNGE\r\n" for _ in gone), ok])
