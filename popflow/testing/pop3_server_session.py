"""One client connection of :class:`~popflow.testing.POP3TestServer`: the RFC 1939 state machine.

Commands are read from a buffered reader, so a client that pipelines (RFC 2449) gets its answers
in order. Responses are written through :meth:`ServerSession._send`, which is where an injected
``drop_after_bytes`` fault cuts the connection mid-response.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from popflow.testing.faults import FaultAction
from popflow.testing.mailbox import StoredMessage
from popflow.testing.pop3login import DropConnection, LoginCommands

if TYPE_CHECKING:
    from popflow.testing.pop3server import POP3TestServer

log = logging.getLogger("popflow.testing")

MAX_LINE = 64 * 1024
"""Longest command line accepted; SASL responses with OAuth tokens can be a few KB."""

_STUFF = re.compile(rb"^\.", re.MULTILINE)
_stamp_lock = threading.Lock()
_stamp_counter = 0

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"


def _timestamp() -> str:
    """A unique APOP timestamp in the RFC 1939 form ``<pid.clock@host>``."""
    global _stamp_counter
    with _stamp_lock:
        _stamp_counter += 1
        count = _stamp_counter
    return f"<{os.getpid()}.{time.time_ns()}.{count}@popflow-testing>"


def stuff(wire: bytes) -> bytes:
    """Dot-stuff a CRLF message and append the terminating ``.`` line (RFC 1939 section 3)."""
    return _STUFF.sub(b"..", wire) + b".\r\n"


def top_of(wire: bytes, lines: int) -> bytes:
    """The header block, the blank line and the first ``lines`` body lines of a CRLF message."""
    head, sep, body = wire.partition(b"\r\n\r\n")
    if not sep:
        return wire
    body_lines = body.split(b"\r\n")
    if body_lines[-1] == b"":  # the CRLF that ends the last line
        body_lines.pop()
    return head + sep + b"".join(line + b"\r\n" for line in body_lines[:lines])


class ServerSession(LoginCommands):
    """The server side of one POP3 connection; attributes are readable by fault callbacks."""

    def __init__(self, server: POP3TestServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        """1-based count of connections to this server."""
        self.state = AUTHORIZATION
        self.user: str | None = None
        self.deleted: set[int] = set()
        """Message numbers marked by DELE in this session."""
        self.messages: list[StoredMessage] = []
        self.timestamp = _timestamp() if server.apop else ""
        self._pending_user: str | None = None
        self.utf8 = False
        """True once the client sent ``UTF8`` (RFC 6856) and the server has it."""
        self.retrieved: set[int] = set()
        """Message numbers sent by RETR in this session (``expire="0"`` deletes them at QUIT)."""
        self._budget: int | None = None
        self._reader: BinaryIO | None = None

    @property
    def tls_active(self) -> bool:
        """True once the connection is encrypted (implicit TLS or after STLS)."""
        return isinstance(self.sock, ssl.SSLSocket)

    # -- connection ------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until QUIT, EOF, a dropped connection or server stop."""
        reset = False
        try:
            if self.server.implicit_tls:
                self._wrap_tls()
            self._reader = self.sock.makefile("rb")
            greeting = self.server.greeting or "popflow-testing POP3 server ready"
            if greeting.startswith("-ERR"):
                self._send(greeting.encode() + b"\r\n")
                return
            self._send(f"+OK {greeting} {self.timestamp}".rstrip().encode() + b"\r\n")
            while True:
                line = self._readline()
                if line is None or not self._handle(line):
                    break
        except DropConnection as drop:
            reset = drop.reset
        except (OSError, ValueError) as exc:  # peer went away, TLS failed, or stop() closed us
            log.debug("session %d ended: %s", self.number, exc)
        finally:
            # Release before closing, so a client that sees EOF can log in again at once.
            self.server.mailbox.release(self)
            self._close(reset)

    def _wrap_tls(self) -> None:
        assert self.server.tls is not None
        plain = self.sock
        self.sock = self.server.tls.wrap_socket(plain, server_side=True)

    def _close(self, reset: bool) -> None:
        if reset:
            # SO_LINGER with a zero timeout makes close() send RST: an abrupt abort.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self._reader is not None:
            self._reader.close()
        self.sock.close()

    def abort(self) -> None:
        """Unblock the session from another thread (server stop)."""
        # Shut down the plain socket underneath any TLS layer; SSLSocket.shutdown isn't thread-safe.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def _readline(self) -> str | None:
        assert self._reader is not None
        raw = self._reader.readline(MAX_LINE + 1)
        if not raw:
            return None
        if len(raw) > MAX_LINE:
            self._send(b"-ERR line too long\r\n")
            raise DropConnection()
        return raw.rstrip(b"\r\n").decode("utf-8", "replace")

    def _send(self, data: bytes) -> None:
        if self._budget is not None:
            if len(data) >= self._budget:
                self.sock.sendall(data[: self._budget])
                raise DropConnection()
            self._budget -= len(data)
        self.sock.sendall(data)

    def _ok(self, text: str = "") -> None:
        self._send(f"+OK {text}".rstrip().encode("utf-8") + b"\r\n")

    def _err(self, text: str) -> None:
        self._send(f"-ERR {text}".encode() + b"\r\n")

    # -- dispatch --------------------------------------------------------

    def _handle(self, line: str) -> bool:
        """Run one command line; False ends the session."""
        parts = line.split(" ") if line else [""]
        command, args = parts[0].upper(), [a for a in parts[1:] if a]
        log.debug("session %d: %s%s", self.number, command, " ..." if args else "")
        self.server.stats.bump("commands", command)
        faults = self.server.faults
        action = faults.decide(self, command, args) if faults is not None else None
        if action is not None:
            handled = self._apply_fault(action, command, args)
            if handled is not None:
                return handled
        handler = self._handlers().get(command)
        if handler is None:
            self._err("Unknown command" if command else "Empty command")
            keep_going = True
        else:
            keep_going = handler(args)
        if self._budget is not None:  # the response was shorter than the planned cut: drop after it
            raise DropConnection()
        return keep_going

    def _apply_fault(self, action: FaultAction, command: str, args: list[str]) -> bool | None:
        """Carry out a fault; ``None`` means: now run the command normally."""
        if action.kind == "echo":
            echoed = args[1:] if command == "AUTH" else args
            if command == "AUTH" and len(args) < 2:  # two-step SASL: the response follows "+"
                self._send(b"+ \r\n")
                answer = self._readline()
                if answer is None:
                    raise DropConnection()
                echoed = [answer.strip()]
            self._err(" ".join([action.text or "bad", *echoed]))
            return True
        if action.kind == "drop":
            if action.after_bytes is None:
                raise DropConnection(action.reset)
            self._budget = action.after_bytes
            return None
        if action.kind == "stall":
            if self.server.stopping.wait(action.seconds):
                raise DropConnection()
            return None
        self._send(action.reply())
        # QUIT ends the session either way, and a failed QUIT applies nothing (no UPDATE state).
        return command != "QUIT"

    def _handlers(self) -> dict[str, Callable[[list[str]], bool]]:
        common = {"CAPA": self.cmd_capa, "QUIT": self.cmd_quit, "UTF8": self.cmd_utf8}
        if self.state == AUTHORIZATION:
            return {**common, "USER": self.cmd_user, "PASS": self.cmd_pass, "APOP": self.cmd_apop,
                    "AUTH": self.cmd_auth, "STLS": self.cmd_stls}
        return {**common, "STAT": self.cmd_stat, "LIST": self.cmd_list, "UIDL": self.cmd_uidl,
                "RETR": self.cmd_retr, "TOP": self.cmd_top, "DELE": self.cmd_dele, "RSET": self.cmd_rset,
                "NOOP": self.cmd_noop}

    # -- AUTHORIZATION ---------------------------------------------------

    def cmd_capa(self, args: list[str]) -> bool:
        """CAPA (RFC 2449): what this server, as configured, supports in this state."""
        server = self.server
        caps = ["TOP", "USER"]
        if server.uidl:
            caps.append("UIDL")
        if server.pipelining:
            caps.append("PIPELINING")
        caps += ["RESP-CODES", "AUTH-RESP-CODE"]
        if server.sasl and self.state == AUTHORIZATION:
            caps.append("SASL " + " ".join(server.sasl))
        if server.starttls and self.state == AUTHORIZATION and not self.tls_active:
            caps.append("STLS")
        caps += server.policies.capa_lines(logged_in=self.state != AUTHORIZATION)
        caps.append("IMPLEMENTATION popflow-testing")
        self._send(b"+OK Capability list follows\r\n" + "".join(f"{c}\r\n" for c in caps).encode() + b".\r\n")
        return True

    def cmd_stls(self, args: list[str]) -> bool:
        """STLS (RFC 2595): upgrade the connection in place."""
        if not self.server.starttls or self.server.tls is None:
            self._err("STLS not supported")
            return True
        if self.tls_active:
            self._err("[IN-USE] TLS already active")
            return True
        self._ok("Begin TLS negotiation now.")
        assert self._reader is not None
        # Anything the client pipelined after STLS is discarded, as real servers do (CVE-2011-0411).
        self._reader.close()
        self._wrap_tls()
        self._reader = self.sock.makefile("rb")
        return True

    def cmd_utf8(self, args: list[str]) -> bool:
        """UTF8 (RFC 6856): serve messages with 8-bit headers as they are stored."""
        if not self.server.policies.utf8:
            self._err("Unknown command")
            return True
        self.utf8 = True
        self._ok("UTF8 enabled")
        return True

    def _served(self, message: StoredMessage) -> bytes:
        return self.server.policies.served(message, self.number, self.utf8)

    # -- TRANSACTION -----------------------------------------------------

    def _message(self, args: list[str], count: int = 1) -> tuple[int, StoredMessage] | None:
        """The message a command names; answers -ERR (and returns None) when there is none."""
        if len(args) < count:
            self._err("Missing message number")
            return None
        try:
            number = int(args[0])
        except ValueError:
            self._err("Invalid message number")
            return None
        if not 1 <= number <= len(self.messages):
            self._err(f"There's no message {number}.")
            return None
        if number in self.deleted:
            self._err("Message is deleted.")
            return None
        return number, self.messages[number - 1]

    def _live(self) -> list[tuple[int, StoredMessage]]:
        return [(n, m) for n, m in enumerate(self.messages, 1) if n not in self.deleted]

    def cmd_stat(self, args: list[str]) -> bool:
        """STAT: count and total size of the messages not marked deleted."""
        live = self._live()
        self._ok(f"{len(live)} {sum(m.size for _, m in live)}")
        return True

    def _listing(self, args: list[str], value: Callable[[StoredMessage], str]) -> None:
        if args:
            found = self._message(args)
            if found is not None:
                self._ok(f"{found[0]} {value(found[1])}")
            return
        body = "".join(f"{n} {value(m)}\r\n" for n, m in self._live())
        self._send(b"+OK\r\n" + body.encode() + b".\r\n")

    def cmd_list(self, args: list[str]) -> bool:
        """LIST [n]: sizes."""
        self._listing(args, lambda m: str(m.size))
        return True

    def cmd_uidl(self, args: list[str]) -> bool:
        """UIDL [n]: unique ids (``-ERR`` when the server was made without UIDL)."""
        if not self.server.uidl:
            self._err("Unknown command")
        else:
            self._listing(args, lambda m: m.uidl)
        return True

    def cmd_retr(self, args: list[str]) -> bool:
        """RETR n: the whole message, dot-stuffed, in CRLF form."""
        found = self._message(args)
        if found is not None:
            self.server.stats.bump("retr", found[1].uidl)
            self.retrieved.add(found[0])
            served = self._served(found[1])
            self._send(f"+OK {len(served)} octets\r\n".encode() + stuff(served))
        return True

    def cmd_top(self, args: list[str]) -> bool:
        """TOP n k: the header and the first k body lines."""
        found = self._message(args, count=2)
        if found is None:
            return True
        try:
            lines = int(args[1])
            if lines < 0:
                raise ValueError
        except ValueError:
            self._err("Invalid number of lines")
            return True
        self.server.stats.bump("top")
        self._send(b"+OK\r\n" + stuff(top_of(self._served(found[1]), lines)))
        return True

    def cmd_dele(self, args: list[str]) -> bool:
        """DELE n: mark for deletion; applied only at QUIT."""
        found = self._message(args)
        if found is not None:
            self.deleted.add(found[0])
            self.server.stats.bump("dele")
            self._ok("Marked to be deleted.")
        return True

    def cmd_rset(self, args: list[str]) -> bool:
        """RSET: unmark every message."""
        self.deleted.clear()
        self._ok()
        return True

    def cmd_noop(self, args: list[str]) -> bool:
        """NOOP."""
        self._ok()
        return True

    def cmd_quit(self, args: list[str]) -> bool:
        """QUIT: in TRANSACTION, enter UPDATE and expunge the marked messages before answering."""
        if self.state == TRANSACTION:
            self.state = UPDATE
            gone = self.deleted | (self.retrieved if self.server.policies.expunges_retrieved else set())
            removed = self.server.mailbox.expunge(self, [self.messages[n - 1].uidl for n in gone])
            self.server.stats.bump("expunged", count=removed)
            self.server.mailbox.release(self)
            self._ok(f"Logging out, {removed} messages deleted.")
        else:
            self._ok("Logging out.")
        return False
